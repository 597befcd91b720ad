"""The AnimeGAN training loop as library code: configuration and its checks, the distribution
strategy, checkpoints and exact resume, per-step logs, samples and the loss plot.

`train(TrainConfig(...))` is what `python -m anime_gan.train` runs; tests call it too.

Schedule (ORIGINAL.md "Training schedule"): epochs 0 .. init_epoch-1 are the init phase (G alone,
con_weight * content, Adam at init_lr); the rest is the GAN phase. In the GAN phase D is updated on
the first of every `training_rate` steps and G on every step (G:D = training_rate:1, the original's
meaning of `training_rate`; 1 = one D and one G update per step). Steps per epoch =
floor(max(#photos, #anime) / batch_size) unless --steps_per_epoch overrides it.

Resume: `tf.train.Checkpoint` holds G, D, the three optimizers (slots, iteration counts, loss scale),
the global step, the epoch, the phase, the step's random generator and the input iterator (its
position, shuffle order and crop seeds). It is written at the end of every epoch and every
`checkpoint_every_steps` steps; TensorFlow writes the data under a temporary name and the
CheckpointManager then replaces its `checkpoint` index atomically, so a process killed at any moment
leaves the previous checkpoint usable. Re-running the same command restores the newest one and cuts
`metrics.jsonl` back to the steps it holds, so the log reads as one uninterrupted run.

Distribution: every worker builds the same input pipeline (same seed) and reads the same global
batch; replica r of the global replica group takes rows [r*b, (r+1)*b) of it, b = batch_size /
replicas. The input iterator therefore stays a plain, checkpointable one on every worker.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import tensorflow as tf

from anime_gan import constants as C

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
VGG_KEYWORDS = ("auto", "imagenet", "random")
SAMPLE_LIMIT = 8  # val images in each sample grid
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curves.png"
PHASES = ("init", "gan")


class ConfigError(ValueError):
    """A flag value out of range or contradicting another; the message is one sentence."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the loss."""


@dataclasses.dataclass
class TrainConfig:
    # Data and output places.
    dataset_dir: str = "dataset"
    dataset: str = "Hayao"
    checkpoint_dir: str = ""  # default: checkpoints/<dataset>_<gan_type>
    log_dir: str = ""  # default: <checkpoint_dir>/logs
    sample_dir: str = ""  # default: <checkpoint_dir>/samples
    vgg_weights: str = "auto"
    # The original's hyper-parameters (official code defaults).
    epoch: int = 101
    init_epoch: int = 5
    batch_size: int = 6
    init_lr: float = 1e-4
    g_lr: float = 8e-5
    d_lr: float = 1.6e-4
    g_adv_weight: float = C.G_ADV_WEIGHT
    d_adv_weight: float = C.D_ADV_WEIGHT
    con_weight: float = C.CON_WEIGHT
    sty_weight: float = C.STY_WEIGHT
    color_weight: float = C.COLOR_WEIGHT
    training_rate: int = 1
    gan_type: str = "lsgan"
    ld: float = C.GP_WEIGHT
    img_size: int = 256
    ch: int = 64
    n_dis: int = 3
    sn: bool = True
    # Ours.
    mixed_precision: str = "none"
    strategy: str = "default"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False
    steps_per_epoch: int = 0  # 0: from the data
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_to_keep: int = 3
    epoch_weights: bool = True  # generator weights after every epoch, in <checkpoint_dir>/epochs/
    export_saved_model: bool = True
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with the default folders filled in."""
        cfg = dataclasses.replace(self)
        if not cfg.checkpoint_dir:
            cfg.checkpoint_dir = os.path.join("checkpoints", f"{cfg.dataset}_{cfg.gan_type}")
        if not cfg.log_dir:
            cfg.log_dir = os.path.join(cfg.checkpoint_dir, "logs")
        if not cfg.sample_dir:
            cfg.sample_dir = os.path.join(cfg.checkpoint_dir, "samples")
        return cfg


def validate_config(cfg: TrainConfig) -> None:
    """Raises ConfigError (one sentence) for any value out of range or contradictory.

    Pure Python, touching neither TensorFlow nor the disk beyond existence checks, so it runs before
    any work starts.
    """
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    need(cfg.epoch >= 1, f"--epoch must be at least 1 (got {cfg.epoch}).")
    need(0 <= cfg.init_epoch <= cfg.epoch,
         f"--init_epoch must be between 0 and --epoch={cfg.epoch} (got {cfg.init_epoch}).")
    need(cfg.batch_size >= 1, f"--batch_size must be at least 1 (got {cfg.batch_size}).")
    for name in ("init_lr", "g_lr", "d_lr"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value > 0, f"--{name} must be a positive number (got {value}).")
    for name in ("g_adv_weight", "d_adv_weight", "con_weight", "sty_weight", "color_weight", "ld"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value >= 0, f"--{name} must be a number >= 0 (got {value}).")
    need(cfg.training_rate >= 1, f"--training_rate (G updates per D update) must be at least 1 "
                                 f"(got {cfg.training_rate}).")
    need(cfg.gan_type in C.GAN_TYPES,
         f"--gan_type must be one of {', '.join(C.GAN_TYPES)} (got {cfg.gan_type!r}).")
    need(cfg.ch >= 2, f"--ch (discriminator width) must be at least 2 (got {cfg.ch}).")
    need(cfg.n_dis >= 1, f"--n_dis must be at least 1 (got {cfg.n_dis}).")
    min_side = max(8, 2 ** (cfg.n_dis - 1))
    need(cfg.img_size >= min_side and cfg.img_size % 4 == 0,
         f"--img_size must be a multiple of 4 and at least {min_side} (the VGG's and --n_dis={cfg.n_dis}'s "
         f"minimum; got {cfg.img_size}).")
    need(cfg.mixed_precision in MIXED_PRECISION,
         f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {cfg.mixed_precision!r}).")
    need(cfg.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)} (got {cfg.strategy!r}).")
    need(cfg.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, 0 meaning from the data "
                                   f"(got {cfg.steps_per_epoch}).")
    need(cfg.checkpoint_every_steps >= 0, f"--checkpoint_every_steps must be >= 0, 0 meaning only at "
                                          f"epoch ends (got {cfg.checkpoint_every_steps}).")
    need(cfg.max_to_keep >= 1, f"--max_to_keep must be at least 1 (got {cfg.max_to_keep}).")
    need(bool(cfg.dataset) and os.sep not in cfg.dataset,
         f"--dataset must be a style folder name such as Hayao (got {cfg.dataset!r}).")
    need(not (cfg.strategy == "multi_worker" and not os.environ.get("TF_CONFIG")),
         "--strategy=multi_worker needs the TF_CONFIG environment variable describing the cluster.")
    if cfg.vgg_weights.lower() not in VGG_KEYWORDS:
        need(os.path.isfile(cfg.vgg_weights),
             f"--vgg_weights file {cfg.vgg_weights} does not exist; pass auto, imagenet, random or an "
             f"existing vgg19.npy / .h5 file.")
    from data_prep import demo

    if cfg.dataset != demo.STYLE:
        style_dir = os.path.join(cfg.dataset_dir, cfg.dataset, "style")
        need(os.path.isdir(style_dir),
             f"Dataset folder {style_dir} does not exist; run `make data` (ARGS=\"--source=official\" for "
             f"the official set) or point --dataset_dir/--dataset at your data.")


# ---- setup ---------------------------------------------------------------------------------------
def make_strategy(name: str):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _ensure_demo_data(cfg: TrainConfig, log) -> None:
    from data_prep import demo

    if cfg.dataset != demo.STYLE or os.path.isdir(os.path.join(cfg.dataset_dir, demo.STYLE, "smooth")):
        return
    log(f"Building the offline demo set in {cfg.dataset_dir} (first run) ...")
    demo.ensure(cfg.dataset_dir, progress=False)


def build_model(cfg: TrainConfig, strategy):
    """G, D, VGG and the AnimeGAN model with its three optimizers, inside the strategy's scope."""
    import keras

    from anime_gan.discriminator import Discriminator
    from anime_gan.generator import Generator
    from anime_gan.model import AnimeGAN, make_adam
    from anime_gan.vgg import load_vgg19

    with strategy.scope():
        generator = Generator()
        generator.build()
        discriminator = Discriminator(ch=cfg.ch, n_dis=cfg.n_dis, sn=cfg.sn)
        discriminator.build()
        vgg = load_vgg19(cfg.vgg_weights, seed=cfg.seed)
        model = AnimeGAN(
            generator, discriminator, vgg, gan_type=cfg.gan_type, g_adv_weight=cfg.g_adv_weight,
            d_adv_weight=cfg.d_adv_weight, con_weight=cfg.con_weight, sty_weight=cfg.sty_weight,
            color_weight=cfg.color_weight, ld=cfg.ld, seed=cfg.seed,
        )
        optimizers = [make_adam(lr) for lr in (cfg.init_lr, cfg.g_lr, cfg.d_lr)]
        if cfg.mixed_precision == "mixed_float16":
            # float16's range needs loss scaling; bfloat16 has float32's range and does not.
            optimizers = [keras.optimizers.LossScaleOptimizer(o) for o in optimizers]
        model.compile(*optimizers)
    return model


# ---- logs ----------------------------------------------------------------------------------------
def read_metrics(path) -> list[dict]:
    """The complete JSON lines of a metrics file (a torn last line from a kill is ignored)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_metrics(path, last_step: int) -> None:
    """Keeps the records of steps <= last_step (what the restored checkpoint holds), atomically."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def plot_losses(metrics_path, out_path) -> str:
    """A PNG of every loss against the step (init loss, G's and D's totals and parts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    groups = [
        ("init phase", ["init_loss", "content"], "init"),
        ("generator", ["g_loss", "g_adv", "content", "style", "color"], "gan"),
        ("discriminator", ["d_loss", "d_adv", "d_real", "d_gray", "d_fake", "d_smooth", "gp"], "gan"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, keys, phase) in zip(axes, groups):
        rows = [r for r in records if r.get("phase") == phase]
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-2)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no steps", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = f"{out_path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


def to_uint8(images):
    """[-1, 1] floats -> uint8, the original's way ((y+1)/2*255, clip, truncate)."""
    return np.clip(np.nan_to_num((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def sample_grid(generator, val_images) -> np.ndarray:
    """uint8 RGB grid: one row per val image, photo | generated."""
    rows = []
    for _, image in val_images:
        out = generator(image, training=False).numpy()
        h, w = out.shape[1:3]
        rows.append(np.concatenate([to_uint8(image[0, :h, :w]), to_uint8(out[0])], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def write_png(path, rgb) -> None:
    import cv2

    tmp = f"{path}.tmp.png"
    if not cv2.imwrite(tmp, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


def _summary_metadata(plugin):
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    return meta.SerializeToString()


def tb_scalar(tag, value, step):
    """A TensorBoard scalar through the core `tf.summary.write` op: tensorflow-cpu 2.21 does not
    install TensorBoard (only needed to *view* the logs), and `tf.summary.scalar` requires it."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_summary_metadata("scalars"))


def tb_image(tag, rgb, step):
    """A TensorBoard image (the images plugin's layout: [width, height, png])."""
    png = tf.io.encode_png(tf.constant(rgb))
    h, w = rgb.shape[:2]
    tensor = tf.stack([tf.constant(str(w)), tf.constant(str(h)), png])
    tf.summary.write(tag, tensor, step=step, metadata=_summary_metadata("images"))


class _Log:
    """metrics.jsonl (one flushed line per step), TensorBoard scalars and images; chief only."""

    def __init__(self, log_dir, enabled):
        self.enabled = enabled
        self.path = os.path.join(log_dir, METRICS_FILE)
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            self.writer = tf.summary.create_file_writer(log_dir)

    def open(self):
        if self.enabled:
            self.file = open(self.path, "a")

    def step(self, record, losses):
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        with self.writer.as_default(step=record["step"]):
            for k, v in losses.items():
                tb_scalar(f"{record['phase']}/{k}", v, record["step"])
            tb_scalar("step_time", record["step_time"], record["step"])

    def image(self, name, rgb, step):
        if self.enabled:
            with self.writer.as_default(step=step):
                tb_image(name, rgb, step)
            self.writer.flush()

    def close(self):
        if self.enabled:
            self.file.close()
            self.writer.flush()


# ---- the loop ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    checkpoint_dir: str
    generator_dir: str
    sample_dir: str
    log_dir: str
    metrics_path: str
    loss_plot: str | None
    saved_model: str | None
    steps: int
    epochs: int
    steps_this_run: int
    vgg_untrained: bool
    vgg_source: str
    last_losses: dict
    model: object = dataclasses.field(default=None, repr=False)

    def text(self) -> str:
        if self.steps_this_run == 0:
            head = f"already complete: {self.epochs} epochs, {self.steps} steps (nothing left to train)"
        elif self.steps_this_run < self.steps:
            head = (f"trained {self.steps_this_run} steps (resumed at step {self.steps - self.steps_this_run}); "
                    f"the run is complete: {self.epochs} epochs, {self.steps} steps")
        else:
            head = f"trained {self.epochs} epochs, {self.steps} steps"
        lines = [
            head,
            f"checkpoint (resume):   {self.checkpoint_dir}",
            f"generator weights:     {self.generator_dir}  (anime_gan.load_generator reads this)",
        ]
        if self.saved_model:
            lines.append(f"SavedModel (serving):  {self.saved_model}")
        lines += [
            f"samples:               {self.sample_dir}",
            f"loss plot:             {self.loss_plot}",
            f"per-step losses:       {self.metrics_path}",
            f"TensorBoard:           tensorboard --logdir {self.log_dir}",
        ]
        return "\n".join(lines)


UNTRAINED_VGG_WARNING = (
    "WARNING: the perceptual VGG19 has RANDOM weights ({source}): content and style losses do not "
    "measure what the paper's do, and the results will not look like AnimeGAN. Put vgg19.npy or Keras' "
    "VGG19 ImageNet weights in place and pass --vgg_weights (see README)."
)


def _configure(cfg: TrainConfig):
    import keras

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    return previous


def _step_functions(model, strategy, jit_compile):
    """tf.functions for the init step and the GAN steps (with/without the D update); they take the
    per-replica batch and return losses averaged over replicas."""
    def wrap(fn):
        inner = tf.function(fn, jit_compile=True) if jit_compile else fn

        @tf.function
        def run(*args):
            per_replica = strategy.run(inner, args=args)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

        return run

    init = wrap(lambda photo: model.init_step(photo))
    gan_with_d = wrap(lambda p, a, x, y: model.gan_step(p, a, x, y, update_discriminator=True))
    gan_without_d = wrap(lambda p, a, x, y: model.gan_step(p, a, x, y, update_discriminator=False))
    return init, gan_with_d, gan_without_d


def _splitter(strategy, batch_size):
    """global batch (tuple of tensors) -> tuple of per-replica values: replica r takes rows
    [r*b, (r+1)*b) by its index in the global replica group."""
    if strategy.num_replicas_in_sync == 1:
        return lambda batch: tuple(batch)
    per = batch_size // strategy.num_replicas_in_sync

    def split(batch):
        def rows(tensor):
            def take(ctx):
                i = ctx.replica_id_in_sync_group
                return tensor[i * per:(i + 1) * per]

            return strategy.experimental_distribute_values_from_function(take)

        return tuple(rows(t) for t in batch)

    return split


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Trains (or resumes) the run described by cfg; returns where everything was written."""
    cfg = cfg.resolved()
    validate_config(cfg)
    strategy = make_strategy(cfg.strategy)  # multi-worker needs this before other TF work
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(f"--batch_size={cfg.batch_size} is not divisible by the {replicas} replicas of "
                          f"--strategy={cfg.strategy}; use a multiple of {replicas}.")
    if cfg.jit_compile and cfg.strategy == "mirrored" and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        # XLA's known issue: a compiled replica function cannot read a variable placed on another CPU
        # device (InvalidArgumentError "Trying to access resource ... located in device CPU:1").
        raise ConfigError("--jit_compile does not work with --strategy=mirrored on CPU devices (XLA cannot "
                          "read a variable placed on another CPU device); drop one of the two.")
    chief = is_chief(strategy)
    _ensure_demo_data(cfg, log)
    previous_policy = _configure(cfg)
    try:
        return _train(cfg, strategy, chief, log)
    finally:
        import keras

        keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg, strategy, chief, log):
    from anime_gan.data import make_train_dataset, make_val_dataset
    from anime_gan.weights import WEIGHTS_FILENAME, save_generator

    ds, data_steps, _report = make_train_dataset(
        cfg.dataset_dir, cfg.dataset, cfg.batch_size, img_size=cfg.img_size, seed=cfg.seed, shuffle=True)
    steps_per_epoch = cfg.steps_per_epoch or data_steps
    if chief:
        log(_report.summary() + (f" (--steps_per_epoch={cfg.steps_per_epoch} overrides it)" if cfg.steps_per_epoch else ""))
    val_images = make_val_dataset(os.path.join(cfg.dataset_dir, "val"), cfg.img_size, limit=SAMPLE_LIMIT) \
        if chief else []

    model = build_model(cfg, strategy)
    vgg = model.vgg
    if vgg.untrained:
        log(UNTRAINED_VGG_WARNING.format(source=vgg.weights_source))

    iterator = iter(ds)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    phase_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")  # index into PHASES
    checkpoint = tf.train.Checkpoint(
        generator=model.generator, discriminator=model.discriminator,
        init_optimizer=model.init_optimizer, g_optimizer=model.g_optimizer, d_optimizer=model.d_optimizer,
        step=step_var, epoch=epoch_var, phase=phase_var, rng=model.rng, iterator=iterator,
        # Every weight of G and D once more, as flat lists: tf.train.Checkpoint does not see layers
        # kept in a list of tuples (the discriminator's stages), so without these the spectral-norm
        # u of those convolutions would be left out (the kernels reach the checkpoint through the
        # optimizers) and a resumed run would drift from an uninterrupted one.
        generator_weights=list(model.generator.weights), discriminator_weights=list(model.discriminator.weights),
    )
    # Non-chief workers write their (identical) checkpoints to a scratch folder they delete at the
    # end: every worker takes part in saving, as tf.distribute's multi-worker saving requires.
    own_dir = cfg.checkpoint_dir if chief else os.path.join(
        cfg.checkpoint_dir, f".worker_{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=cfg.max_to_keep)
    latest = tf.train.latest_checkpoint(cfg.checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log(f"Resuming from {latest} (step {int(step_var)}, epoch {int(epoch_var)}).")
    step, epoch = int(step_var), int(epoch_var)
    first_step = step
    if epoch >= cfg.epoch:
        log(f"The run in {cfg.checkpoint_dir} is already complete ({epoch} of --epoch={cfg.epoch} epochs); "
            f"nothing to train. Pass a larger --epoch to train on, or a new --checkpoint_dir to start over.")

    logs = _Log(cfg.log_dir, chief)
    if chief:
        truncate_metrics(logs.path, step)
        os.makedirs(cfg.sample_dir, exist_ok=True)
    logs.open()
    init_fn, gan_d_fn, gan_g_fn = _step_functions(model, strategy, cfg.jit_compile)
    split = _splitter(strategy, cfg.batch_size)
    epochs_dir = os.path.join(cfg.checkpoint_dir, "epochs")
    last_losses = {}
    traced = set()  # the phases whose step function this process has already traced

    from tqdm import tqdm

    try:
        while epoch < cfg.epoch:
            phase = "init" if epoch < cfg.init_epoch else "gan"
            phase_var.assign(PHASES.index(phase))
            model.phase = phase
            in_epoch = step - epoch * steps_per_epoch
            if not 0 <= in_epoch <= steps_per_epoch:
                raise ConfigError(f"The checkpoint in {cfg.checkpoint_dir} is at step {step} of epoch {epoch}, "
                                  f"which does not fit {steps_per_epoch} steps per epoch; resume with the "
                                  f"same --steps_per_epoch and data, or use a new --checkpoint_dir.")
            if phase not in traced and in_epoch < steps_per_epoch:
                traced.add(phase)
                log(f"Building the {phase}-phase step: its first call traces and optimises the graph, "
                    f"which takes longer than the steps after it ...")
            bar = tqdm(total=steps_per_epoch, initial=in_epoch, desc=f"epoch {epoch + 1}/{cfg.epoch} {phase}",
                       disable=not (cfg.progress and chief), file=sys.stderr, dynamic_ncols=True)
            while in_epoch < steps_per_epoch:
                batch = split(next(iterator))
                t0 = time.perf_counter()
                if phase == "init":
                    out = init_fn(batch[0])
                else:
                    # D on the first of every training_rate GAN steps, G on every step.
                    gan_index = step - cfg.init_epoch * steps_per_epoch
                    fn = gan_d_fn if gan_index % cfg.training_rate == 0 else gan_g_fn
                    out = fn(*batch)
                losses = {k: float(v) for k, v in out.items()}
                step_time = time.perf_counter() - t0
                for name, value in losses.items():
                    if not math.isfinite(value):
                        kept = manager.latest_checkpoint or "none written yet"
                        raise NonFiniteLossError(
                            f"Training stopped at step {step + 1} (epoch {epoch + 1}, {phase} phase): the "
                            f"{name} loss is {value}; the last good checkpoint ({kept}) is intact.")
                step += 1
                in_epoch += 1
                step_var.assign(step)
                record = {"step": step, "epoch": epoch + 1, "phase": phase, **losses,
                          "step_time": round(step_time, 6)}
                logs.step(record, losses)
                last_losses = losses
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()
                                 if k in ("init_loss", "g_loss", "d_loss", "g_adv", "content", "style", "color")},
                                refresh=False)
                bar.update(1)
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                        and in_epoch < steps_per_epoch:
                    manager.save(checkpoint_number=step)
            bar.close()
            # End of the epoch: the weights and samples first, then the checkpoint that records the
            # epoch as done (a kill in between redoes this part on resume, with the same result).
            epoch += 1
            if chief:
                if cfg.epoch_weights:
                    save_generator(model.generator, os.path.join(epochs_dir, f"epoch_{epoch:03d}"))
                if epoch >= cfg.init_epoch:
                    # The original writes samples after every epoch from the end of the init phase on.
                    grid = sample_grid(model.generator, val_images)
                    write_png(os.path.join(cfg.sample_dir, f"epoch_{epoch:03d}.png"), grid)
                    logs.image("photo | generated", grid, step)
            epoch_var.assign(epoch)
            manager.save(checkpoint_number=step)
    finally:
        logs.close()

    generator_dir = os.path.join(cfg.checkpoint_dir, "generator")
    saved_model = None
    loss_plot = None
    if chief:
        trained_now = step > first_step
        if trained_now or not os.path.exists(os.path.join(generator_dir, WEIGHTS_FILENAME)):
            save_generator(model.generator, generator_dir)
        loss_plot = plot_losses(logs.path, os.path.join(cfg.log_dir, LOSS_PLOT_FILE))
        if cfg.export_saved_model:
            from anime_gan.serving import export_saved_model

            saved_model = os.path.join(cfg.checkpoint_dir, "saved_model")
            if trained_now or not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
                log(f"Exporting the SavedModel to {saved_model} (traces its two serving signatures) ...")
                t0 = time.perf_counter()
                export_saved_model(model.generator, saved_model)
                log(f"Exported in {time.perf_counter() - t0:.0f} s.")
    else:
        shutil.rmtree(own_dir, ignore_errors=True)
    if vgg.untrained:
        log(UNTRAINED_VGG_WARNING.format(source=vgg.weights_source))
    return TrainResult(
        checkpoint_dir=cfg.checkpoint_dir, generator_dir=generator_dir, sample_dir=cfg.sample_dir,
        log_dir=cfg.log_dir, metrics_path=logs.path, loss_plot=loss_plot, saved_model=saved_model,
        steps=step, epochs=epoch, steps_this_run=step - first_step, vgg_untrained=bool(vgg.untrained), vgg_source=vgg.weights_source,
        last_losses=last_losses, model=model,
    )
