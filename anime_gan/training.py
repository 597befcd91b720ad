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
import logging
import math
import os
import shutil
import sys
import time

import tensorflow as tf

from anime_gan.errors import TrainingStopped
from anime_gan.run_logs import LOSS_PLOT_FILE, SAMPLE_LIMIT, RunLog, plot_losses, sample_grid, truncate_metrics
from anime_gan.train_config import ConfigError, TrainConfig, validate_config

__all__ = ["ConfigError", "NonFiniteLossError", "TrainConfig", "TrainResult", "build_model", "configure",
           "is_chief", "make_strategy", "split_batch", "step_functions", "train", "validate_config"]
logger = logging.getLogger(__name__)

PHASES = ("init", "gan")


class NonFiniteLossError(TrainingStopped):
    """A loss or a weight became NaN or infinite; the message names the step and the loss."""


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
    "the perceptual VGG19 has RANDOM weights ({source}): content and style losses do not "
    "measure what the paper's do, and the results will not look like AnimeGAN. Put vgg19.npy or Keras' "
    "VGG19 ImageNet weights in place and pass --vgg_weights (see README)."
)


def configure(cfg: TrainConfig):
    """Seeds, op determinism and the dtype policy for a run; returns the previous policy's name."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
        # enable_op_determinism alone does not make the GAN step reproducible (issue 10). Grappler's
        # memory optimizer (on by default) rewrites each AddN with more than two inputs that is live
        # at the graph's statically estimated memory peak into a TemporaryVariable plus one AssignAdd
        # per input, which run as their inputs become ready. It fires on any graph estimated above 80%
        # of the CPU device's nominal 256 MB, which every training step here is. The rewrite makes the
        # order of the float additions depend on which inter-op thread finishes first, and so on the
        # machine's load. The rewritten AddNs in the GAN step are the tape's sums of each D weight's
        # gradient over its several reads (four D evaluations, each also reading the kernel for the
        # power iteration), the sum of G(p)'s gradient from D, VGG and the colour loss, and
        # d_adv = d_real + d_gray + d_fake + 0.1 * d_smooth, which Grappler turns into an AddN.
        # Measured in one process: the same GAN step, run again and again from the same state beside
        # a busy loop, gave weights that differed from the first run's in 35 of 42 repetitions (six
        # gan_types), and d_adv took two values one ulp apart although its four terms were identical
        # in every run. Without the rewrite (Grappler off, or this setting), or with one inter-op
        # thread, every repetition was identical. The init step has no such AddN, which is why the
        # issue's init-phase losses agreed.
        # Turning the rewrite off (memory_optimization = NO_MEM_OPT) removes the race at its
        # source: every AddN then sums its inputs in their fixed order. Measured on 2 cores, it costs
        # nothing: the demo step (64x64, batch 4) took 0.61 s with or without it, and at the
        # original's 256x256, batch 6 the peak memory (9.4 GB) and step time did not change. TF 2
        # has no public switch for this optimizer (tf.config.optimizer.set_experimental_options
        # has a fixed list without it), so it is set in the eager context's base ConfigProto. Every
        # function call's Grappler config is built from that proto (thread-local copies are rebuilt
        # after any tf.config change), so the setting holds for all threads and for functions traced
        # later; it needs no restart of the runtime. The other remedy, inter_op_parallelism_threads
        # = 1, only hides the race by running one op at a time. It costs about 4% on the demo step
        # and must be set before the TF runtime starts, which an in-process train() cannot ensure.
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.eager import context

        ctx = context.context()
        tf.config.list_physical_devices()  # device discovery reads the base config once: let it run first
        base = config_pb2.ConfigProto()
        if ctx._config is not None:
            base.CopyFrom(ctx._config)
        base.graph_options.rewrite_options.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        ctx._config = base
        ctx.function_call_options = None  # this thread's cached call options are rebuilt from ctx.config
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    return previous


def step_functions(model, strategy, jit_compile):
    """The loop's three steps, each `AnimeGAN.train_step` in one mode: (init, GAN with the D update,
    GAN without it). Each is a tf.function that takes the per-replica batch (photo, anime,
    anime_gray, smooth_gray) and returns the losses averaged over replicas. `train_step` reads
    `model.phase` and `model.update_discriminator` when it is traced, so each mode is its own
    function, traced once."""
    def wrap(phase, update_discriminator):
        def replica_step(*batch):
            model.phase, model.update_discriminator = phase, update_discriminator
            return model.train_step(batch)

        inner = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

        @tf.function
        def run(*batch):
            per_replica = strategy.run(inner, args=batch)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

        return run

    return wrap("init", True), wrap("gan", True), wrap("gan", False)


def split_batch(strategy, batch_size):
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


def train(cfg: TrainConfig) -> TrainResult:
    """Trains (or resumes) the run described by cfg; returns where everything was written.

    The data set must exist (the command builds the demo set first); progress goes to the
    "anime_gan" logger and a tqdm bar."""
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
    previous_policy = configure(cfg)
    try:
        return _train(cfg, strategy, chief)
    finally:
        import keras

        keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg, strategy, chief):
    from anime_gan.data import make_train_dataset, make_val_dataset
    from anime_gan.image_io import write_image
    from anime_gan.weights import WEIGHTS_FILENAME, save_generator

    ds, data_steps, _report = make_train_dataset(
        cfg.dataset_dir, cfg.dataset, cfg.batch_size, img_size=cfg.img_size, seed=cfg.seed, shuffle=True)
    steps_per_epoch = cfg.steps_per_epoch or data_steps
    if chief:
        logger.info(_report.summary() + (f" (--steps_per_epoch={cfg.steps_per_epoch} overrides it)" if cfg.steps_per_epoch else ""))
    val_images = make_val_dataset(os.path.join(cfg.dataset_dir, "val"), cfg.img_size, limit=SAMPLE_LIMIT) \
        if chief else []

    model = build_model(cfg, strategy)
    vgg = model.vgg
    if vgg.untrained:
        logger.warning(UNTRAINED_VGG_WARNING.format(source=vgg.weights_source))

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
        logger.info(f"Resuming from {latest} (step {int(step_var)}, epoch {int(epoch_var)}).")
    step, epoch = int(step_var), int(epoch_var)
    first_step = step
    if epoch >= cfg.epoch:
        logger.info(f"The run in {cfg.checkpoint_dir} is already complete ({epoch} of --epoch={cfg.epoch} epochs); "
            f"nothing to train. Pass a larger --epoch to train on, or a new --checkpoint_dir to start over.")

    logs = RunLog(cfg.log_dir, chief)
    if chief:
        truncate_metrics(logs.path, step)
        os.makedirs(cfg.sample_dir, exist_ok=True)
    logs.open()
    init_fn, gan_d_fn, gan_g_fn = step_functions(model, strategy, cfg.jit_compile)
    split = split_batch(strategy, cfg.batch_size)
    epochs_dir = os.path.join(cfg.checkpoint_dir, "epochs")
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
                logger.info(f"Building the {phase}-phase step: its first call traces and optimises the graph, "
                    f"which takes longer than the steps after it ...")
            bar = tqdm(total=steps_per_epoch, initial=in_epoch, desc=f"epoch {epoch + 1}/{cfg.epoch} {phase}",
                       disable=not (cfg.progress and chief), file=sys.stderr, dynamic_ncols=True)
            while in_epoch < steps_per_epoch:
                batch = split(next(iterator))
                t0 = time.perf_counter()
                if phase == "init":
                    out = init_fn(*batch)
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
                    write_image(os.path.join(cfg.sample_dir, f"epoch_{epoch:03d}.png"), grid)
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
                logger.info(f"Exporting the SavedModel to {saved_model} (traces its two serving signatures) ...")
                t0 = time.perf_counter()
                export_saved_model(model.generator, saved_model)
                logger.info(f"Exported in {time.perf_counter() - t0:.0f} s.")
    else:
        shutil.rmtree(own_dir, ignore_errors=True)
    if vgg.untrained:
        logger.warning(UNTRAINED_VGG_WARNING.format(source=vgg.weights_source))
    return TrainResult(
        checkpoint_dir=cfg.checkpoint_dir, generator_dir=generator_dir, sample_dir=cfg.sample_dir,
        log_dir=cfg.log_dir, metrics_path=logs.path, loss_plot=loss_plot, saved_model=saved_model,
        steps=step, epochs=epoch, steps_this_run=step - first_step,
        model=model,
    )
