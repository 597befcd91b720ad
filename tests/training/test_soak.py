"""Soak test of "never lose work" (issue 12): one --deterministic training run killed with SIGKILL
20 times at seeded random moments (during start-up, restore and tracing, during steps, and during
checkpoint writes), with its newest good checkpoint corrupted twice in between, then run to its end.
It must end complete and finite, with the per-step losses and the generator of an uninterrupted run.

The uninterrupted reference runs at the same time, in its own folder: --deterministic results do
not depend on the load (issue 10), and the overlap keeps the test near 4 minutes on 2 cores.
"""

import math
import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from helpers import REPO, env, make_tiny_dataset, read_metrics, run_train, tiny_args, train_command

SEED = 12
STEPS_PER_EPOCH = 10  # 2 epochs: 10 init steps, then 10 GAN steps
TOTAL = 2 * STEPS_PER_EPOCH
KILLS = 20
CORRUPT_AFTER = (7, 14)  # kill numbers after which the newest good checkpoint is corrupted


def _lines(path):
    """Complete lines of metrics.jsonl (a torn last line from a kill has no newline yet)."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _writing(run):
    """Whether a checkpoint write is in progress: TensorFlow stages it in ckpt-N_temp/."""
    try:
        return any(re.fullmatch(r"ckpt-\d+_temp", n) for n in os.listdir(run))
    except FileNotFoundError:
        return False


def _plan(rng):
    """20 kills: 12 at a random moment up to 6 s after the start (import, clean-up, checkpoint scan,
    restore, tracing, ...), 4 during a step and 4 during a checkpoint write. The last two kinds wait
    until the run has logged a seeded target step (rising from kill to kill; 6 in the init phase, 2
    in the GAN phase, whose tracing costs twice as much) and at least one step more than any run
    before it, then kill within 0.3 s (a step) or 0.05 s (a write in progress)."""
    targets = sorted(rng.sample(range(1, STEPS_PER_EPOCH), 6) + rng.sample(range(STEPS_PER_EPOCH + 1, TOTAL - 2), 2))
    modes = ["step"] * 4 + ["write"] * 4
    rng.shuffle(modes)
    training = iter(zip(modes, targets))
    start_kills = set(rng.sample(range(KILLS), 12))
    return [("start", None) if i in start_kills else next(training) for i in range(KILLS)]


def _corrupt_newest_good(run, how):
    """Damages the newest checkpoint that verifies; returns its number."""
    from anime_gan.training.checkpoints import checkpoint_problem

    numbers = sorted((int(m.group(1)) for n in os.listdir(run) if (m := re.fullmatch(r"ckpt-(\d+)\.index", n))),
                     reverse=True)
    newest = next(n for n in numbers if checkpoint_problem(os.path.join(run, f"ckpt-{n}")) is None)
    data = os.path.join(run, f"ckpt-{newest}.data-00000-of-00001")
    if how == "truncate":
        os.truncate(data, os.path.getsize(data) // 2)
    else:
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x40]))
    return newest


def _spawn(args, log):
    with open(log, "w") as err:
        return subprocess.Popen(train_command(args), cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err)


def _kill_when(proc, fire, timeout=300):
    """Polls every 5 ms until fire() says when (a time) and that time comes, then SIGKILLs proc;
    returns False if proc ended first."""
    deadline, at = time.time() + timeout, None
    while proc.poll() is None and time.time() < deadline:
        at = at or fire()
        if at is not None and time.time() >= at:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_twenty_kills_and_two_corruptions_end_as_the_uninterrupted_run(tmp_path):
    from anime_gan.weights import load_generator

    rng = random.Random(SEED)
    data = make_tiny_dataset(tmp_path / "data")
    common = dict(deterministic=True, epoch=2, init_epoch=1, steps_per_epoch=STEPS_PER_EPOCH,
                  checkpoint_every_steps=1, max_to_keep=3)
    straight, run = tmp_path / "straight", tmp_path / "killed"
    metrics = run / "logs" / "metrics.jsonl"
    args = tiny_args(data, str(run), **common)
    logs, killed_writing, corrupted = [], 0, {}
    reference = _spawn(tiny_args(data, str(straight), **common), tmp_path / "straight.log")
    proc = None
    try:
        for k, (mode, target) in enumerate(_plan(rng), start=1):
            logs.append(tmp_path / f"run{k:02d}.log")
            gate = min(max(target, _lines(metrics) + 1), TOTAL) if target else None
            delay = rng.uniform(0.3, 6.0) if mode == "start" else rng.uniform(0.0, 0.3 if mode == "step" else 0.05)
            proc = _spawn(args, logs[-1])
            t0 = time.time()

            def fire():
                if mode == "start":
                    return t0 + delay
                ready = _lines(metrics) >= gate and (mode == "step" or _writing(run))
                return time.time() + delay if ready else None

            assert _kill_when(proc, fire), \
                f"kill {k} ({mode}): the run ended first (rc {proc.returncode}):\n{logs[-1].read_text()[-3000:]}"
            killed_writing += _writing(run)
            if k in CORRUPT_AFTER:
                corrupted[_corrupt_newest_good(str(run), "truncate" if k == CORRUPT_AFTER[0] else "flip")] = k

        # The last run goes to the end, as does the reference.
        r = run_train(args)
        assert r.returncode == 0, r.stderr[-3000:]
        assert reference.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    finally:
        for p in (proc, reference):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    # Some kills landed inside a checkpoint write (TensorFlow's staging folder was left behind).
    assert killed_writing >= 1
    # Each corrupted checkpoint was skipped by a later run, which said so; no run showed a traceback.
    said = "\n".join(log.read_text() for log in logs) + r.stderr
    for number in corrupted:
        assert f"Skipped ckpt-{number}, newer than ckpt-" in said, number
    assert "Traceback" not in said

    # Complete, finite, and equal to the uninterrupted run: every step's losses, and the generator.
    a, b = read_metrics(straight / "logs" / "metrics.jsonl"), read_metrics(metrics)
    assert [x["step"] for x in b] == list(range(1, TOTAL + 1))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "step_time"} for row in rows]  # noqa: E731
    assert strip(b) == strip(a)
    assert all(math.isfinite(v) for row in strip(b) for v in row.values() if isinstance(v, float))
    ga, gb = load_generator(straight / "generator"), load_generator(run / "generator")
    for va, vb in zip(ga.weights, gb.weights):
        np.testing.assert_array_equal(vb.numpy(), va.numpy())
    # Nothing left over, and the CheckpointManager still rotates: --max_to_keep=3 checkpoints remain.
    assert not [n for n in os.listdir(run) if n.endswith("_temp") or n.startswith("checkpoint.tmp")]
    assert len([n for n in os.listdir(run) if re.fullmatch(r"ckpt-\d+\.index", n)]) == 3
