"""Never lose work (issue 12): a bad update, a damaged checkpoint folder, a second trainer, a full
disk and float16's skipped updates, each on a tiny run (32x32 crops, 4 steps an epoch).

Every test checks that what was written before the fault is still there (checkpoints byte for byte
or read back finite, metrics.jsonl line for line) and that the user reads one sentence.
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from anime_gan.training.checkpoints import (DAMAGED_DIR, DiskFullError, find_resume_checkpoint, is_disk_full,
                                            remove_leftovers)
from anime_gan.training.config import TrainConfig
from anime_gan.training.health import NonFiniteLossError, non_finite_problem, step_health
from anime_gan.training.loop import train
from anime_gan.training.setup import build_model, configure
from anime_gan.errors import OutputExistsError
from anime_gan.training.run_lock import RunFolderBusy, RunLock
from helpers import REPO, STYLE, env, make_tiny_dataset, run_train, tiny_args


def _cfg(data, checkpoint_dir, **kw):
    base = dict(dataset_dir=data, dataset=STYLE, checkpoint_dir=str(checkpoint_dir), img_size=32, batch_size=2,
                ch=8, epoch=1, init_epoch=1, vgg_weights="random", seed=3, export_saved_model=False, progress=False,
                checkpoint_every_steps=1, max_to_keep=4)
    base.update(kw)
    return TrainConfig(**base)


def _args(data, checkpoint_dir, **kw):
    flags = dict(epoch=1, init_epoch=1, checkpoint_every_steps=1, max_to_keep=4)
    return tiny_args(data, str(checkpoint_dir), **{**flags, **kw})


def one_sentence(msg):
    return "\n" not in msg and msg.endswith(".") and ". " not in msg and "Traceback" not in msg


def error_lines(stderr):
    return [line[len("error: "):] for line in stderr.splitlines() if line.startswith("error: ")]


def losses(path):
    """metrics.jsonl without the step times (the one field that differs between equal runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "step_time"} for line in open(path)]


def assert_same_losses(a, b):
    """Equal records; floats to 1e-6 (these in-process runs are not --deterministic, see test_soak.py)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-6), (x["step"], k)
            else:
                assert x[k] == y[k]


def fingerprint(directory):
    """{relative path: sha256} of every file under directory (the lock file aside)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def finite_checkpoint(prefix):
    """Every float tensor of the checkpoint read back with NumPy is finite (independent of training.py)."""
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    floats = [n for n, d in dtypes.items() if d.is_floating]
    assert floats
    return all(np.isfinite(reader.get_tensor(n)).all() for n in floats)


def checkpoint_numbers(directory):
    return sorted(int(m.group(1)) for n in os.listdir(directory) if (m := re.fullmatch(r"ckpt-(\d+)\.index", n)))


@pytest.fixture(autouse=True)
def fresh_keras():
    """Keras' global state grows with every model built in the process, and building gets slower
    with it (2.4, 3.1, 4.9 s for the same model three times over): start each test afresh."""
    import keras

    keras.backend.clear_session()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def healthy(tiny, tmp_path_factory):
    """A finished 4-step run with ckpt-1 .. ckpt-4 (one per step), never touched by the tests: copy it."""
    run = tmp_path_factory.mktemp("healthy") / "run"
    train(_cfg(tiny, run))
    assert checkpoint_numbers(run) == [1, 2, 3, 4]
    return run


@pytest.fixture
def copy_of(healthy, tmp_path):
    def copy():
        target = tmp_path / "run"
        shutil.copytree(healthy, target)
        return target

    return copy


# ---- 1. a bad update is caught before it is checkpointed -----------------------------------------
@pytest.mark.slow  # a whole tiny run (~16 s); the guard itself is tested fast below
def test_update_that_makes_weights_nan_stops_before_any_nan_checkpoint(tiny, tmp_path):
    # The reproduction: init_lr=1e30 sends G to ~1e30 in step 1 and to NaN in step 2, while
    # the content loss of step 2 is still finite; before the fix ckpt-2 and on were all-NaN.
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        train(_cfg(tiny, run, init_lr=1e30))
    msg = str(e.value)
    assert one_sentence(msg), msg
    m = re.fullmatch(r"Training stopped at step (\d+) \(epoch 1, init phase\): (.+); the last good checkpoint "
                     r"\((\S+)\) is intact\.", msg)
    assert m, msg
    bad_step = int(m.group(1))
    assert m.group(2) in ("its update made the generator's weights NaN or infinite", "the init_loss loss is nan",
                          "the content loss is nan")
    assert m.group(3) == str(run / f"ckpt-{bad_step - 1}")
    # Every checkpoint on disk reads back finite, the newest is the one the message names, and the
    # log holds exactly the steps before the bad one.
    assert checkpoint_numbers(run) == list(range(1, bad_step))
    assert all(finite_checkpoint(run / f"ckpt-{n}") for n in checkpoint_numbers(run))
    assert tf.train.latest_checkpoint(str(run)) == m.group(3)
    assert [r["step"] for r in losses(run / "logs" / "metrics.jsonl")] == list(range(1, bad_step))
    assert not (run / "epochs").exists() and not (run / "generator").exists()


def test_step_health_counts_non_finite_variables_and_skipped_updates():
    """The guard itself, on a built model: nothing flagged on fresh weights; one NaN in D, one inf in
    an Adam moment, each counted where it is; an optimizer that did not run counts as skipped."""
    cfg = TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=2, seed=1)
    configure(cfg)
    model = build_model(cfg, tf.distribute.get_strategy())
    optimizers = {"G": model.g_optimizer, "D": model.d_optimizer}
    before = {net: tf.identity(opt.iterations) for net, opt in optimizers.items()}

    def health():
        return {k: float(v) for k, v in step_health(model, optimizers, before).items()}

    assert health() == {"nonfinite_generator": 0, "nonfinite_discriminator": 0, "nonfinite_optimizer": 0,
                        "skipped_G": 1, "skipped_D": 1}
    model.g_optimizer.iterations.assign_add(1)
    kernel = model.discriminator.trainable_weights[0]
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0, 0, 0]], [float("nan")]))
    moment = next(v for v in model.d_optimizer.variables if "velocity" in v.path)
    moment.assign(tf.fill(moment.shape, float("inf")))
    h = health()
    assert (h["nonfinite_generator"], h["nonfinite_discriminator"], h["nonfinite_optimizer"]) == (0, 1, 1)
    assert (h["skipped_G"], h["skipped_D"]) == (0, 1)
    assert non_finite_problem({"d_loss": 1.0}, h) == "its update made the discriminator's weights NaN or infinite"
    assert non_finite_problem({"d_loss": float("inf")}, h) == "the d_loss loss is inf"


@pytest.mark.slow  # the GAN step's first call traces for ~10 s
def test_finite_but_huge_loss_with_nan_weights_is_caught(tiny, tmp_path):
    # --g_adv_weight=1e38: G's loss stays a finite ~1e38 while its update makes the weights NaN.
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        train(_cfg(tiny, run, epoch=2, g_adv_weight=1e38))
    msg = str(e.value)
    assert one_sentence(msg)
    assert re.fullmatch(r"Training stopped at step 5 \(epoch 2, gan phase\): its update made the generator's "
                        r"weights NaN or infinite; the last good checkpoint \(\S+/ckpt-4\) is intact\.", msg), msg
    assert checkpoint_numbers(run) == [1, 2, 3, 4] and all(finite_checkpoint(run / f"ckpt-{n}") for n in range(1, 5))
    assert [r["step"] for r in losses(run / "logs" / "metrics.jsonl")] == [1, 2, 3, 4]


# ---- 2. a damaged checkpoint folder: resume from the newest good checkpoint, never from zero -------
def _nan_copy(prefix, new_prefix):
    """Writes new_prefix as a copy of the checkpoint at prefix with one generator weight all NaN (what
    the issue's unguarded runs wrote)."""
    dtypes = tf.train.load_checkpoint(str(prefix)).get_variable_to_dtype_map()
    names = sorted(dtypes)
    values = tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                                  dtypes=[dtypes[n] for n in names])
    target = next(n for n in names if n.startswith("generator_weights/"))
    values = [tf.fill(v.shape, float("nan")) if n == target else v for n, v in zip(names, values)]
    tf.raw_ops.SaveV2(prefix=str(new_prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)


def _flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


DATA = "ckpt-4.data-00000-of-00001"
DAMAGE = {
    # name: (what to do to the run folder, the checkpoint to resume from, the warning's reason)
    "checkpoint index deleted": (lambda run: os.remove(run / "checkpoint"), 4, None),
    "newest .index deleted": (lambda run: os.remove(run / "ckpt-4.index"), 3, "its .index file is missing"),
    "newest .data truncated": (lambda run: os.truncate(run / DATA, os.path.getsize(run / DATA) // 2), 3,
                               "its data does not read back (the file is truncated)"),
    "a byte of the newest .data changed": (lambda run: _flip_byte(run / DATA, os.path.getsize(run / DATA) // 3), 3,
                                           "its data does not read back (a checksum does not match)"),
    "a byte of the newest .index changed": (lambda run: _flip_byte(run / "ckpt-4.index", 40), 3,
                                            "its .index file does not read"),
    "newest checkpoint all-NaN": (lambda run: _nan_copy(run / "ckpt-4", run / "ckpt-4"), 3,
                                  "holds NaN or infinite values"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_and_kept_aside(copy_of, caplog, damage):
    run = copy_of()
    before = fingerprint(run)
    harm, expected, reason = DAMAGE[damage]
    harm(run)
    with caplog.at_level(logging.WARNING, logger="anime_gan.training.checkpoints"):
        prefix = find_resume_checkpoint(str(run), tidy=True)
    assert prefix == str(run / f"ckpt-{expected}")
    # The checkpoints older than the damaged one are untouched, the damaged one is moved, not deleted,
    # and the CheckpointManager's index lists exactly what is left.
    after = fingerprint(run)
    for n in range(1, expected + 1):
        for suffix in (".index", ".data-00000-of-00001"):
            assert after[f"ckpt-{n}{suffix}"] == before[f"ckpt-{n}{suffix}"]
    assert tf.train.latest_checkpoint(str(run)) == prefix
    state = tf.train.get_checkpoint_state(str(run))
    listed = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    assert listed == [f"ckpt-{n}" for n in range(1, expected + 1)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if reason is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and one_sentence(warnings[0]), warnings
        assert warnings[0].startswith("Skipped ckpt-4, newer than ckpt-3: ") and reason in warnings[0]
        assert warnings[0].endswith(f"; moved ckpt-4 to {run / DAMAGED_DIR}.")
        kept_aside = set(os.listdir(run / DAMAGED_DIR))
        assert kept_aside == {"ckpt-4.index", DATA} - ({"ckpt-4.index"} if damage == "newest .index deleted" else set())


def test_leftovers_of_a_killed_run_are_removed(copy_of, caplog):
    """A kill in the middle of writing ckpt-5 leaves TensorFlow's ckpt-5_temp/, maybe a torn ckpt-5
    the index does not list yet and an index temporary; a kill in save_generator a .tmp-* file."""
    run = copy_of()
    before = fingerprint(run)
    (run / "ckpt-5_temp").mkdir()
    (run / "ckpt-5_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate123").write_bytes(b"x" * 100)
    shutil.copy(run / "ckpt-4.index", run / "ckpt-5.index")
    (run / "ckpt-5.data-00000-of-00001").write_bytes(b"torn")
    (run / "checkpoint.tmp5f3a").write_text("model_checkpoint_path")
    (run / "epochs" / "epoch_001" / ".tmp-999.generator.weights.h5").write_bytes(b"torn")
    (run / "logs" / "metrics.jsonl.tmp").write_text('{"step": 1')
    cfg = _cfg("unused", run).resolved()
    removed = remove_leftovers(cfg)
    assert sorted(os.path.relpath(p, run) for p in removed) == [
        "checkpoint.tmp5f3a", "ckpt-5_temp", "epochs/epoch_001/.tmp-999.generator.weights.h5", "logs/metrics.jsonl.tmp"]
    with caplog.at_level(logging.WARNING, logger="anime_gan.training.checkpoints"):
        assert find_resume_checkpoint(str(run), tidy=True) == str(run / "ckpt-4")
    # The torn ckpt-5 was never listed: it is removed (not kept as "damaged"), the rest is as it was.
    assert not (run / DAMAGED_DIR).exists()
    said = [r.getMessage() for r in caplog.records]
    assert said[-1].endswith("removed ckpt-5, left incomplete by an interrupted run.")
    assert fingerprint(run) == before


def test_resume_after_damage_equals_the_uninterrupted_run(healthy, tiny, copy_of, caplog):
    """The issue's case through train(): the newest .data truncated. The re-run says which checkpoint
    it resumes from and why the newer one was skipped, redoes step 4, and its metrics equal the
    uninterrupted run's; nothing from before the fault is lost."""
    run = copy_of()
    os.truncate(run / DATA, 1000)
    with caplog.at_level(logging.INFO, logger="anime_gan.training"):
        result = train(_cfg(tiny, run, max_to_keep=3))
    said = [r.getMessage() for r in caplog.records]
    assert any(s.startswith("Skipped ckpt-4, newer than ckpt-3: its data does not read back (the file is truncated)")
               for s in said), said
    assert f"Resuming from {run / 'ckpt-3'} (step 3, epoch 0)." in said
    assert result.steps_this_run == 1 and result.steps == 4
    assert_same_losses(losses(healthy / "logs" / "metrics.jsonl"), losses(run / "logs" / "metrics.jsonl"))
    # The rewritten index hands the older checkpoints back to the CheckpointManager's rotation.
    assert checkpoint_numbers(run) == [2, 3, 4] and finite_checkpoint(run / "ckpt-4")
    assert os.path.getsize(run / DAMAGED_DIR / DATA) == 1000


def test_folder_without_a_good_checkpoint_is_refused_not_trained_over(tiny, copy_of):
    run = copy_of()
    for n in range(1, 5):
        os.truncate(run / f"ckpt-{n}.data-00000-of-00001", 100)
    before = fingerprint(run)
    r = run_train(_args(tiny, run), timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    (msg,) = error_lines(r.stderr)
    assert one_sentence(msg), msg
    assert msg.startswith(f"{run} holds a training run but no checkpoint to resume from (ckpt-4: its data does not "
                          f"read back (the file is truncated); ckpt-3: ")
    assert msg.endswith("; pass --restart to train from step 0 over it, or another --checkpoint_dir.")
    assert fingerprint(run) == before  # nothing moved, nothing rewritten, metrics.jsonl kept whole
    # --restart is the explicit way over it: the checkpoints go, the rest is overwritten as training goes.
    assert find_resume_checkpoint(str(run), tidy=True, restart=True) is None
    assert checkpoint_numbers(run) == [] and not (run / "checkpoint").exists()


def test_final_weights_without_checkpoints_are_not_trained_over(copy_of):
    run = copy_of()
    for n in range(1, 5):
        for suffix in (".index", ".data-00000-of-00001"):
            os.remove(run / f"ckpt-{n}{suffix}")
    before = fingerprint(run)
    with pytest.raises(OutputExistsError) as e:
        find_resume_checkpoint(str(run), tidy=True, final_weights=str(run / "generator" / "generator.weights.h5"))
    assert one_sentence(str(e.value)) and "--restart" in str(e.value) and "generator.weights.h5" in str(e.value)
    assert fingerprint(run) == before


# ---- 3. one trainer per folder -------------------------------------------------------------------
HOLD_LOCK = """
    import sys, time
    from anime_gan.training.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(tiny, copy_of):
    run = copy_of()
    before = fingerprint(run)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(run)], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_train(_args(tiny, run, epoch=2), timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        assert error_lines(r.stderr) == [
            f"Another trainer (pid {holder.pid}) is already training in {run}; wait for it to finish or stop it, "
            f"or pass another --checkpoint_dir."]
        assert fingerprint(run) == before
        with pytest.raises(RunFolderBusy):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's pid is still written in the file, but the kernel dropped its flock.
    assert open(run / ".lock").read().strip() == str(holder.pid)
    with RunLock(run):
        assert open(run / ".lock").read().strip() == str(os.getpid())


# ---- 4. a full disk ------------------------------------------------------------------------------
@pytest.mark.slow  # a whole tiny run (~11 s); the line-level disk-full test stays fast
def test_disk_full_while_writing_a_checkpoint(tiny, tmp_path, monkeypatch):
    """ENOSPC injected into the write of ckpt-3, leaving what a real full tmpfs left (TensorFlow's
    ckpt-3_temp/ with a partial shard, and its ResourceExhaustedError). One sentence; ckpt-1, ckpt-2
    and the metrics of steps 1-3 kept; no partial file left, so the next run resumes from ckpt-2
    (the resume itself: test_resume_after_damage_equals_the_uninterrupted_run)."""
    run = tmp_path / "run"
    real_save = tf.train.CheckpointManager.save

    def save(manager, checkpoint_number=None, **kw):
        if checkpoint_number == 3:
            os.makedirs(run / "ckpt-3_temp")
            (run / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate7").write_bytes(b"\0" * 4096)
            (run / "ckpt-3.data-00000-of-00001").write_bytes(b"\0" * 4096)
            where = run / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate7"
            raise tf.errors.ResourceExhaustedError(None, None, f"{where}; No space left on device")
        return real_save(manager, checkpoint_number=checkpoint_number, **kw)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    with pytest.raises(DiskFullError) as e:
        train(_cfg(tiny, run))
    msg = str(e.value)
    assert one_sentence(msg), msg
    assert msg == (f"Training stopped at step 3: the disk is full (writing ckpt-3 in {run}); the partial files were "
                   f"removed and the last good checkpoint ({run / 'ckpt-2'}) is intact, so free some space and re-run "
                   f"the same command to resume.")
    assert sorted(os.listdir(run)) == [".lock", "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
                                       "ckpt-2.data-00000-of-00001", "ckpt-2.index", "logs", "samples"]
    assert finite_checkpoint(run / "ckpt-1") and finite_checkpoint(run / "ckpt-2")
    assert [r["step"] for r in losses(run / "logs" / "metrics.jsonl")] == [1, 2, 3]

    assert find_resume_checkpoint(str(run), tidy=True) == str(run / "ckpt-2") and remove_leftovers(
        _cfg(tiny, run).resolved()) == []


def test_disk_full_in_a_metrics_line_leaves_whole_lines(tmp_path):
    """RunLog takes back a line the disk could only take part of, so metrics.jsonl stays whole lines."""
    import errno

    from anime_gan.training.run_logs import RunLog, read_metrics

    log = RunLog(str(tmp_path), enabled=True)
    log.open()
    record = {"step": 1, "epoch": 1, "phase": "init", "init_loss": 1.5, "step_time": 0.1}
    log.step(record, {"init_loss": 1.5})
    real = log.file

    class HalfFull:
        def __init__(self):
            self.calls = 0

        def write(self, data):  # the first write takes 10 bytes, the next finds the disk full
            self.calls += 1
            if self.calls == 1:
                return real.write(bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return real.fileno()

    log.file = HalfFull()
    with pytest.raises(OSError) as e:
        log.step(dict(record, step=2), {"init_loss": 1.5})
    assert is_disk_full(e.value) and log.file.calls == 2
    log.file = real
    log.close()
    assert open(tmp_path / "metrics.jsonl").read() == json.dumps(record) + "\n"
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == [record]


@pytest.mark.parametrize("error, full", [
    (OSError(28, "No space left on device"), True),
    (OSError(122, "Disk quota exceeded"), True),
    (tf.errors.ResourceExhaustedError(None, None, "x; No space left on device"), True),
    (OSError("Unable to synchronously create dataset (file write failed: errno = 28, error message = "
             "'No space left on device')"), True),  # h5py's wording, without errno
    (OSError(13, "Permission denied"), False),
    (ValueError("bad"), False),
])
def test_is_disk_full(error, full):
    assert is_disk_full(error) is full


# ---- 5. float16 loss scaling's skipped updates are reported --------------------------------------
def test_step_health_sees_a_loss_scale_optimizer_skip_its_update():
    """What the loop reports rests on this: Keras' LossScaleOptimizer drops an update whose gradients
    are not finite (halving its scale, leaving the iteration count), and step_health says so."""
    import keras

    var = keras.Variable(np.ones(3, np.float32))
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.1))
    opt.build([var])

    class Nets:  # step_health reads only the two nets' weights
        generator = discriminator = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])

    def step(gradient):
        before = {"G": tf.identity(opt.iterations)}
        opt.apply([tf.constant(gradient, tf.float32)], [var])
        return float(step_health(Nets, {"G": opt}, before)["skipped_G"])

    assert step([1.0, np.inf, 1.0]) == 1.0
    assert float(opt.dynamic_scale) == 2.0 ** 14 and var.numpy().tolist() == [1, 1, 1]
    assert step([1.0, 1.0, 1.0]) == 0.0 and var.numpy()[0] < 1


@pytest.mark.slow  # float16 steps trace for ~10 s on CPU
def test_skipped_float16_updates_are_logged_counted_and_shown(tiny, tmp_path, caplog, capsys):
    """A short mixed_float16 run whose first updates overflow and are skipped. Checked against what
    the checkpoint says independently: each skip halves the loss scale from 2**15 and leaves Adam's
    iteration count where it was."""
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="anime_gan.training.health"):
        train(_cfg(tiny, run, img_size=16, mixed_precision="mixed_float16", steps_per_epoch=8,
                   checkpoint_every_steps=0, progress=True))
    records = losses(run / "logs" / "metrics.jsonl")
    skipped = [r["step"] for r in records if r.get("skipped_updates") == ["G"]]
    assert all(r.get("skipped_updates") in (None, ["G"]) for r in records)
    reader = tf.train.load_checkpoint(str(run / "ckpt-8"))
    scale = reader.get_tensor("init_optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE")
    iterations = reader.get_tensor("init_optimizer/inner_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    assert 0 < len(skipped) < 8, skipped  # some skipped (the warm-up), then updates again
    assert len(skipped) == round(math.log2(2.0 ** 15 / scale)) == 8 - iterations
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"Epoch 1: float16 loss scaling skipped {len(skipped)} of 8 G updates, their scaled gradients having " \
           f"overflowed (scale now {scale:g})." in said, said
    first = [s for s in said if s.startswith(f"Step {skipped[0]}: float16 loss scaling skipped the G update")]
    assert len(first) == 1 and one_sentence(first[0])
    assert f"skipped={len(skipped)}" in capsys.readouterr().err  # the progress bar's count
