"""The training loop: flag checks, logs, checkpoints, samples, non-finite stop, mixed precision."""

import glob
import json
import logging
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from anime_gan.training.config import ConfigError, TrainConfig, validate_config
from anime_gan.training.health import NonFiniteLossError
from anime_gan.training import loop
from anime_gan.training.loop import train
from anime_gan.training.setup import build_model, configure, step_functions
from helpers import STYLE, make_tiny_dataset, run_train, tiny_args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def _cfg(tiny, tmp_path, **kw):
    base = dict(dataset_dir=tiny, dataset=STYLE, checkpoint_dir=str(tmp_path / "ckpt"), img_size=32,
                batch_size=2, ch=8, epoch=2, init_epoch=1, vgg_weights="random", seed=3,
                export_saved_model=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# ---- flag checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("override, words", [
    (dict(init_epoch=3, epoch=2), "--init_epoch"),
    (dict(g_lr=-1e-4), "--g_lr"),
    (dict(d_lr=float("nan")), "--d_lr"),
    (dict(gan_type="wgan"), "--gan_type"),
    (dict(mixed_precision="float8"), "--mixed_precision"),
    (dict(strategy="tpu"), "--strategy"),
    (dict(img_size=30), "--img_size"),
    (dict(training_rate=0), "--training_rate"),
    (dict(batch_size=0), "--batch_size"),
    (dict(sty_weight=-3.0), "--sty_weight"),
    (dict(vgg_weights="/nonexistent/vgg19.npy"), "/nonexistent/vgg19.npy"),
    (dict(dataset="Nope"), "make data"),
    (dict(strategy="multi_worker"), "TF_CONFIG"),
])
def test_bad_flags_end_in_one_sentence(tiny, tmp_path, monkeypatch, override, words):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(tiny, tmp_path, **override).resolved())
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.endswith(".")
    assert msg.count(". ") == 0 or msg.count(". ") == msg.count("e.g. ")


def test_cli_rejects_contradictory_flags_before_any_work(tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    r = run_train(tiny_args(tiny, str(ckpt), epoch=2, init_epoch=5), timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: --init_epoch must be between 0 and --epoch=2 (got 5)."]
    assert "Traceback" not in r.stderr and not ckpt.exists()


def test_batch_not_divisible_by_replicas(tiny, tmp_path, monkeypatch):
    # One CPU device here: a mirrored strategy has 1 replica, so use the check's own arithmetic
    # through a fake strategy count.
    class Two:
        num_replicas_in_sync = 2

    cfg = _cfg(tiny, tmp_path, batch_size=3, strategy="mirrored")
    monkeypatch.setattr(loop, "make_strategy", lambda name: Two())
    with pytest.raises(ConfigError, match="not divisible by the 2 replicas"):
        train(cfg)
    assert not os.path.exists(cfg.checkpoint_dir)


# ---- a whole tiny run ----------------------------------------------------------------------------
def test_tiny_run_writes_everything_and_resumes_as_a_no_op(tiny, tmp_path):
    from anime_gan.weights import load_generator

    cfg = _cfg(tiny, tmp_path, training_rate=2, checkpoint_every_steps=3)
    res = train(cfg)
    # 8 photos / batch 2 = 4 steps per epoch; 2 epochs.
    assert (res.steps, res.epochs) == (8, 2)
    records = [json.loads(line) for line in open(res.metrics_path)]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["phase"] for r in records] == ["init"] * 4 + ["gan"] * 4
    assert [r["epoch"] for r in records] == [1] * 4 + [2] * 4
    for r in records:
        assert r["step_time"] > 0
        keys = {"content", "init_loss"} if r["phase"] == "init" else {
            "g_adv", "content", "style", "color", "g_loss"}
        assert keys <= set(r) and all(math.isfinite(r[k]) for k in keys)
    # training_rate=2: D is updated on the 1st and 3rd GAN steps only.
    assert ["d_loss" in r for r in records[4:]] == [True, False, True, False]
    for r in records[4:]:
        if "d_loss" in r:
            assert r["d_loss"] == pytest.approx(300 * r["d_adv"] + r["gp"], rel=1e-5)
            assert r["d_adv"] == pytest.approx(r["d_real"] + r["d_gray"] + r["d_fake"] + 0.1 * r["d_smooth"],
                                               rel=1e-5)

    # Samples after every epoch from the end of init (init_epoch=1) on; TensorBoard; loss plot.
    import cv2

    samples = sorted(os.listdir(res.sample_dir))
    assert samples == ["epoch_001.png", "epoch_002.png"]
    grid = cv2.imread(os.path.join(res.sample_dir, samples[-1]))
    assert grid.shape == (2 * 32, 2 * 32, 3)  # 2 val images, photo | generated
    assert glob.glob(os.path.join(res.log_dir, "events.out.tfevents.*"))
    # TensorBoard (installed with the project) reads every step's scalars and the sample grids back.
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(res.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert events.SummaryMetadata("gan/g_loss").plugin_data.plugin_name == "scalars"
    assert [e.step for e in events.Tensors("gan/g_loss")] == [5, 6, 7, 8]
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("init/init_loss")] == pytest.approx(
        [r["init_loss"] for r in records[:4]], rel=1e-6)
    assert events.SummaryMetadata("photo | generated").plugin_data.plugin_name == "images"
    assert len(events.Tensors("photo | generated")) == 2
    plot = cv2.imread(res.loss_plot)
    assert plot is not None and plot.std() > 0

    # Generator weights, per epoch and final, in load_generator's format.
    G = res.model.generator
    final = load_generator(res.generator_dir)
    for a, b in zip(final.weights, G.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert os.path.exists(os.path.join(cfg.checkpoint_dir, "epochs", "epoch_001", "generator.weights.h5"))
    epoch1 = load_generator(os.path.join(cfg.checkpoint_dir, "epochs", "epoch_001"))
    assert any(np.abs(a.numpy() - b.numpy()).max() > 0 for a, b in zip(epoch1.weights, G.weights))

    # The checkpoint: step, epoch, phase; mid-epoch saves at step 3 (not at 6: epoch 2's step 2).
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(cfg.checkpoint_dir))
    names = reader.get_variable_to_shape_map()
    get = lambda prefix: reader.get_tensor(next(n for n in names if n.startswith(prefix + "/")))  # noqa: E731
    assert (int(get("step")), int(get("epoch")), int(get("phase"))) == (8, 2, 1)
    assert any(n.startswith("iterator/") for n in names) and any(n.startswith("rng/") for n in names)
    assert any(n.startswith("d_optimizer/") for n in names)

    # Restoring the checkpoint into fresh nets gives back every weight, spectral-norm u included.
    fresh = build_model(cfg.resolved(), tf.distribute.get_strategy())
    tf.train.Checkpoint(generator_weights=list(fresh.generator.weights),
                        discriminator_weights=list(fresh.discriminator.weights)).restore(
        tf.train.latest_checkpoint(cfg.checkpoint_dir)).expect_partial()
    trained = res.model.generator.weights + res.model.discriminator.weights
    for a, b in zip(fresh.generator.weights + fresh.discriminator.weights, trained):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)

    # Re-running a finished run restores it, trains nothing more and says so.
    assert res.steps_this_run == 8 and res.text().startswith("trained 2 epochs, 8 steps")
    said = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    training_logger = logging.getLogger("anime_gan.training.loop")
    training_logger.addHandler(handler)
    level = training_logger.level
    training_logger.setLevel(logging.INFO)
    try:
        res2 = train(cfg)
    finally:
        training_logger.removeHandler(handler)
        training_logger.setLevel(level)
    assert res2.steps == 8 and [json.loads(line) for line in open(res2.metrics_path)] == records
    assert res2.steps_this_run == 0 and res2.text().startswith("already complete: 2 epochs, 8 steps")
    assert any("already complete" in line for line in said)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny, tmp_path):
    # An absurd learning rate sends the weights to ~1e30 within a step; a few steps later a loss
    # overflows (which step depends on where the first inf appears; the message names it).
    import re

    cfg = _cfg(tiny, tmp_path, init_lr=1e30, g_lr=1e30, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    msg = str(e.value)
    m = re.fullmatch(r"Training stopped at step (\d+) \(epoch \d, (init|gan) phase\): (the \w+ loss is "
                     r"(nan|inf|-inf)|its update made the (generator|discriminator)'s weights NaN or infinite); "
                     r"the last good checkpoint \((\S+)\) is intact\.", msg)
    assert m, msg
    bad_step = int(m.group(1))
    latest = tf.train.latest_checkpoint(cfg.checkpoint_dir)
    assert latest == m.group(6) and latest.endswith(f"ckpt-{bad_step - 1}")
    reader = tf.train.load_checkpoint(latest)
    step_name = next(n for n in reader.get_variable_to_shape_map() if n.startswith("step/"))
    assert int(reader.get_tensor(step_name)) == bad_step - 1
    records = [json.loads(line) for line in open(os.path.join(cfg.checkpoint_dir, "logs", "metrics.jsonl"))]
    assert [r["step"] for r in records] == list(range(1, bad_step))
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k != "phase")


# ---- mixed precision -----------------------------------------------------------------------------
@pytest.mark.parametrize("policy, jit_compile", [
    ("mixed_float16", False),
    # The same checks as float16 without loss scaling; slow to keep `make test` under 15 minutes.
    pytest.param("mixed_bfloat16", False, marks=pytest.mark.slow),
    # XLA compiles each step function for tens of seconds on this CPU.
    pytest.param("mixed_float16", True, marks=pytest.mark.slow),
    pytest.param("mixed_bfloat16", True, marks=pytest.mark.slow),
])
def test_mixed_precision_steps_are_finite(tmp_path, policy, jit_compile):
    import keras

    cfg = TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=2, mixed_precision=policy)
    previous = configure(cfg)
    try:
        strategy = tf.distribute.get_strategy()
        model = build_model(cfg, strategy)
        assert model.generator.compute_dtype == policy.split("_")[1]
        assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        init_fn, gan_fn, _ = step_functions(model, strategy, jit_compile=jit_compile)
        rng = np.random.default_rng(0)
        batch = tuple(tf.constant(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)) for _ in range(4))
        before = [v.numpy().copy() for v in model.generator.trainable_variables]
        for out in (init_fn(*batch), gan_fn(*batch), gan_fn(*batch)):
            assert all(math.isfinite(float(v)) for v in out.values()), out
        # Dynamic loss scaling starts at 2**15 and halves on every overflowing step (which it skips):
        # a few more init steps let float16 reach a scale whose gradients fit and the weights move.
        for _ in range(30):
            moved = max(np.abs(v.numpy() - b).max() for v, b in zip(model.generator.trainable_variables, before))
            if moved > 0:
                break
            assert all(math.isfinite(float(v)) for v in init_fn(*batch).values())
        assert moved > 0
        if policy == "mixed_float16":
            assert float(model.init_optimizer.dynamic_scale) < 2.0 ** 15
        assert all(v.dtype == tf.float32 for v in model.generator.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.slow  # XLA compiles for ~30 s per step function
def test_xla_steps_match_the_plain_steps():
    import keras

    cfg = TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=2, seed=4)
    configure(cfg)
    strategy = tf.distribute.get_strategy()
    plain, xla = build_model(cfg, strategy), build_model(cfg, strategy)
    for m in (plain, xla):  # SGD: the update is the gradient itself (see test_train_step.py)
        m.compile(*(keras.optimizers.SGD(1e-6) for _ in range(3)))
    rng = np.random.default_rng(0)
    batch = tuple(tf.constant(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)) for _ in range(4))
    fns = {jit: step_functions(m, strategy, jit_compile=jit) for m, jit in ((plain, False), (xla, True))}
    pairs = list(zip(plain.generator.weights + plain.discriminator.weights,
                     xla.generator.weights + xla.discriminator.weights))
    # Each step starts both models from the same weights: this tiny model's GAN step is chaotic
    # (see distributed_check.py), so a second step would amplify the first one's rounding.
    for phase in ("init", "gan"):
        for a, b in pairs:
            b.assign(a.numpy())
        start = [a.numpy().copy() for a, _ in pairs]
        outs = []
        for jit in (False, True):
            init_fn, gan_fn, _ = fns[jit]
            step = init_fn(*batch) if phase == "init" else gan_fn(*batch)
            outs.append({k: float(v) for k, v in step.items()})
        for k in outs[0]:
            assert outs[1][k] == pytest.approx(outs[0][k], rel=1e-4, abs=1e-5), (phase, k)
        # XLA fuses and reorders the sums of the backward pass, which moves the near-zero gradients
        # (instance-norm betas followed by another norm) by their own size. The update as a whole
        # agrees to 1% (relative L2 norm) in the init step. The GAN step's noise floor is higher:
        # a 1e-7 relative perturbation of G's weights (float32 rounding) already moves its plain
        # update by ~0.5%, and XLA's fused arithmetic gave 1.1% here, so 2% there.
        d_plain = np.concatenate([(a.numpy() - s0).ravel() for (a, _), s0 in zip(pairs, start) if a.trainable])
        d_xla = np.concatenate([(b.numpy() - s0).ravel() for (a, b), s0 in zip(pairs, start) if a.trainable])
        bound = 0.01 if phase == "init" else 0.02
        assert np.linalg.norm(d_xla - d_plain) <= bound * np.linalg.norm(d_plain), phase


@pytest.mark.slow  # ~30 s on 2 cores
def test_fit_and_our_loop_take_the_same_first_steps():
    """AnimeGAN.train_step is the step of both: Keras' fit (with PhaseSchedule) and our loop's
    step functions, from equal weights, give the same losses and weights after one init step and
    one GAN step (the tolerance of the one-step tests, rel 1e-5)."""
    import keras

    from anime_gan.training.gan import PhaseSchedule

    cfg = TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=2, seed=4)
    configure(cfg)
    strategy = tf.distribute.get_strategy()
    ours, fitted = build_model(cfg, strategy), build_model(cfg, strategy)
    pairs = list(zip(ours.generator.weights + ours.discriminator.weights,
                     fitted.generator.weights + fitted.discriminator.weights))
    for a, b in pairs:
        b.assign(a.numpy())
    start = [a.numpy().copy() for a, _ in pairs]
    rng = np.random.default_rng(0)
    batch = tuple(tf.constant(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)) for _ in range(4))

    init_fn, gan_fn, _ = step_functions(ours, strategy, jit_compile=False)
    loop_logs = [{k: float(v) for k, v in fn(*batch).items()} for fn in (init_fn, gan_fn)]

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append({k: float(v) for k, v in logs.items()})

    record = Record()
    fitted.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=2, steps_per_epoch=1, verbose=0, shuffle=False,
               callbacks=[PhaseSchedule(init_epoch=1), record])
    assert [set(r) for r in record.logs] == [set(r) for r in loop_logs]
    assert "init_loss" in record.logs[0] and "d_loss" in record.logs[1]
    for fit_log, loop_log in zip(record.logs, loop_logs):
        for k in loop_log:
            assert fit_log[k] == pytest.approx(loop_log[k], rel=1e-5), k
    for a, b in pairs:
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)
    # Both steps really trained: G and D moved away from where they started.
    assert all(np.abs(a.numpy() - s0).max() > 0 for (a, _), s0 in zip(pairs, start) if a.trainable)
