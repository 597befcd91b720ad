"""Exact resume: a --deterministic run killed with SIGKILL mid-epoch and re-run with the same command
gives the per-step losses and final weights of an uninterrupted run."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from helpers import REPO, env, make_tiny_dataset, read_metrics, run_train, tiny_args, train_command


def _losses(records):
    return [{k: v for k, v in r.items() if k != "step_time"} for r in records]


# v2: AnimeGANv2's generator, layer-norm D, TV term and D term weights (the v2 code's values).
V2 = dict(arch="v2", tv_weight=1.0, d_real_weight=1.7, d_gray_weight=1.7, d_fake_weight=1.7, d_smooth_weight=1.0,
          sty_weight=2.5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(tmp_path, arch):
    from anime_gan.weights import load_generator

    data = make_tiny_dataset(tmp_path / "data")
    common = dict(deterministic=True, epoch=3, init_epoch=1, checkpoint_every_steps=2, training_rate=1,
                  **(V2 if arch == "v2" else {}))

    straight = tmp_path / "straight"
    r = run_train(tiny_args(data, str(straight), **common))
    assert r.returncode == 0, r.stderr[-3000:]

    killed = tmp_path / "killed"
    args = tiny_args(data, str(killed), **common)
    metrics = killed / "logs" / "metrics.jsonl"
    proc = subprocess.Popen(train_command(args), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # 4 steps per epoch: kill after step 7 is logged, i.e. in the middle of epoch 2 (GAN phase),
    # one step after the step-6 checkpoint.
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(metrics.read_text().splitlines())
    assert 7 <= n_before < 12

    r = run_train(args)
    assert r.returncode == 0, r.stderr[-3000:]

    a, b = read_metrics(straight / "logs" / "metrics.jsonl"), read_metrics(metrics)
    assert [x["step"] for x in b] == list(range(1, 13))
    for x, y in zip(_losses(a), _losses(b)):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= 1e-6 * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
            else:
                assert x[k] == y[k]
    if arch == "v2":
        assert all(x["tv"] > 0 for x in a if x.get("phase") == "gan")
    ga, gb = load_generator(straight / "generator"), load_generator(killed / "generator")
    assert ga.arch == gb.arch == arch
    for va, vb in zip(ga.weights, gb.weights):
        np.testing.assert_allclose(vb.numpy(), va.numpy(), rtol=0, atol=1e-6)
