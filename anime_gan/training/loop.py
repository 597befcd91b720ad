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
CheckpointManager then replaces its `checkpoint` index atomically. Re-running the same command
resumes from the newest checkpoint that restores and verifies (`find_resume_checkpoint`: every
tensor reads back against the CRC32C stored in its index, every float is finite) and cuts
`metrics.jsonl` back to the steps it holds, so the log reads as one uninterrupted run.

Never losing work (issue 12):
- One trainer per folder: `run_lock.RunLock` (a flock the kernel drops when the process dies).
- A checkpoint is written only after a step whose losses, weights and optimizer state are all
  finite (`step_functions(guard=True)` checks them after the update), so every checkpoint is good.
- What a killed run leaves (TensorFlow's ckpt-N_temp/ folders and index temporaries, our .tmp-*
  files) is removed on the next start. A newer checkpoint that does not verify is skipped with a
  warning saying why: removed if the `checkpoint` index does not list it (a write the kill cut
  short), else moved to damaged/. The folder is never trained over from step 0 while it holds
  checkpoints, unless --restart says so.
- A full disk stops the run with one sentence, after removing the partial files of that write; the
  last good checkpoint stays.
- float16 loss scaling skips the updates whose gradients overflow: such steps carry
  `skipped_updates` in metrics.jsonl, and the log and the progress bar count them.

Distribution: every worker builds the same input pipeline (same seed) and reads the same global
batch; replica r of the global replica group takes rows [r*b, (r+1)*b) of it, b = batch_size /
replicas. The input iterator therefore stays a plain, checkpointable one on every worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import time

import tensorflow as tf

from anime_gan.errors import TrainingStopped
from anime_gan.training.run_lock import RunLock
from anime_gan.training.run_logs import (LOSS_PLOT_FILE, METRICS_FILE, SAMPLE_LIMIT, RunLog, plot_losses, sample_grid,
                                truncate_metrics)
from anime_gan.training.config import ConfigError, TrainConfig, validate_config

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

    from anime_gan.nets.discriminator import Discriminator
    from anime_gan.nets import generator_class
    from anime_gan.training.gan import AnimeGAN, make_adam
    from anime_gan.nets.vgg import load_vgg19

    with strategy.scope():
        # --arch=v2: AnimeGANv2's generator and its discriminator, which has layer norms where v1's has
        # instance norms (ORIGINAL_V2.md); the loss weights come from the flags either way.
        generator = generator_class(cfg.arch)()
        generator.build()
        discriminator = Discriminator(ch=cfg.ch, n_dis=cfg.n_dis, sn=cfg.sn,
                                      norm="layer" if cfg.arch == "v2" else "instance")
        discriminator.build()
        vgg = load_vgg19(cfg.vgg_weights, seed=cfg.seed)
        model = AnimeGAN(
            generator, discriminator, vgg, gan_type=cfg.gan_type, g_adv_weight=cfg.g_adv_weight,
            d_adv_weight=cfg.d_adv_weight, con_weight=cfg.con_weight, sty_weight=cfg.sty_weight,
            color_weight=cfg.color_weight, tv_weight=cfg.tv_weight,
            d_term_weights=(cfg.d_real_weight, cfg.d_gray_weight, cfg.d_fake_weight, cfg.d_smooth_weight),
            ld=cfg.ld, seed=cfg.seed,
        )
        optimizers = [make_adam(lr) for lr in (cfg.init_lr, cfg.g_lr, cfg.d_lr)]
        if cfg.mixed_precision == "mixed_float16":
            # float16's range needs loss scaling; bfloat16 has float32's range and does not.
            optimizers = [keras.optimizers.LossScaleOptimizer(o) for o in optimizers]
        model.compile(*optimizers)
    return model


# ---- checkpoints: where to resume, what a killed run left, a full disk -----------------------------
CHECKPOINT_INDEX = "checkpoint"  # the CheckpointManager's list of its checkpoints
DAMAGED_DIR = "damaged"  # where checkpoints that fail verification are moved
_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d{5}-of-\d{5})")


class DiskFullError(TrainingStopped):
    """The disk filled up while the run wrote a checkpoint, weights or a log."""


def _first_line(error) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def checkpoint_problem(prefix) -> str | None:
    """Why the checkpoint at prefix cannot be resumed from, or None when it can: its index must read,
    every tensor it lists must read back whole (TensorFlow checks each against the CRC32C the index
    stores) and every float tensor must be finite. Reads the whole checkpoint once (~80 MB for the
    original's nets with their Adam moments: about 0.3 s) and restores nothing."""
    import numpy as np

    prefix = str(prefix)
    if not os.path.exists(prefix + ".index"):
        return "its .index file is missing"
    try:
        dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    except Exception as e:  # noqa: BLE001 - any failure to read it is the answer
        return f"its .index file does not read ({_tf_error_words(e)})"
    names = sorted(dtypes)
    try:
        # One op for all tensors, variants (the input iterator's state) included.
        values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                                      dtypes=[dtypes[n] for n in names])
    except Exception as e:  # noqa: BLE001
        return f"its data does not read back ({_tf_error_words(e)})"
    for name, value in zip(names, values):
        if value.dtype.is_floating and not np.isfinite(value.numpy()).all():
            return f"{name.split('/.ATTRIBUTES')[0]} holds NaN or infinite values"
    return None


def _tf_error_words(error) -> str:
    """A TensorFlow read error in a few plain words (its own text has braces, ops and 'vs.')."""
    text = _first_line(error)
    for words, phrase in (("Checksum does not match", "a checksum does not match"),
                          ("Read less bytes than requested", "the file is truncated"),
                          ("checksum mismatch", "a checksum does not match"),
                          ("No such file", "a file is missing"), ("not found", "a file is missing")):
        if words.lower() in text.lower():
            return phrase
    text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", text)
    return text.replace("vs. ", "versus ")


def _checkpoint_files(directory) -> dict[int, list[str]]:
    """{N: paths of ckpt-N's .index and .data files} in directory."""
    found = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = _CHECKPOINT_FILE.fullmatch(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(os.path.join(directory, name))
    return found


def _listed_checkpoints(directory) -> tuple[list[int], int | None] | None:
    """(the checkpoint numbers the `checkpoint` index lists, its latest), or None when the index is
    missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - a torn or edited index: treat as missing
        return None
    if state is None:
        return None

    def number(path):
        match = re.search(r"ckpt-(\d+)$", path)
        return int(match.group(1)) if match else None

    return [number(p) for p in state.all_model_checkpoint_paths], number(state.model_checkpoint_path)


def remove_leftovers(cfg) -> list[str]:
    """Removes what a killed run leaves behind (we hold the folder's lock, so no writer is using
    them): TensorFlow's ckpt-N_temp/ staging folders and `checkpoint.tmp*` index temporaries, the
    SavedModel export's staging folders, the .tmp-* files of our atomic weight and image writes and
    the metrics/plot temporaries. Returns the paths removed."""
    removed = []

    def remove(path):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        removed.append(path)

    def matching(directory, test):
        return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if test(n)] \
            if os.path.isdir(directory) else []

    top = cfg.checkpoint_dir
    for path in matching(top, lambda n: (re.fullmatch(r"ckpt-\d+_temp", n) or n.startswith(CHECKPOINT_INDEX + ".tmp")
                                         or n.startswith(".saved_model_tmp_"))):
        remove(path)
    for name in (METRICS_FILE + ".tmp", LOSS_PLOT_FILE + ".tmp.png"):  # run_logs' temporaries
        if os.path.exists(os.path.join(cfg.log_dir, name)):
            remove(os.path.join(cfg.log_dir, name))
    epoch_dirs = matching(os.path.join(top, "epochs"), lambda n: True)
    for directory in [os.path.join(top, "generator"), cfg.sample_dir, *epoch_dirs]:
        removed += _remove_tmp_files(directory)
    return removed


def _discard_checkpoint(directory, number, files, listed) -> str:
    """Removes ckpt-N (its files) when the `checkpoint` index does not list it, i.e. when it is what
    a killed write or deletion left; otherwise moves it to damaged/. Returns what was done."""
    name = f"ckpt-{number}"
    if listed is not None and number not in listed[0]:
        for path in files:
            os.remove(path)
        return f"removed {name}, left incomplete by an interrupted run"
    damaged = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(damaged, exist_ok=True)
    for path in files:
        os.replace(path, os.path.join(damaged, os.path.basename(path)))
    return f"moved {name} to {damaged}"


def find_resume_checkpoint(directory, *, tidy, restart=False, final_weights=None) -> str | None:
    """The prefix of the newest checkpoint in directory that restores and verifies
    (`checkpoint_problem`), or None to start at step 0.

    Checkpoints are found by their files, not through the `checkpoint` index (which a kill or a
    user may have removed). Each newer one that fails is skipped with a warning naming it and why.
    With tidy (the chief), it is removed when the index does not list it (a write or a deletion a
    kill cut short) or else moved to damaged/, and the index is rewritten to list the checkpoints
    kept. When the folder holds checkpoints (or final_weights, a finished run's weights) but none
    verifies, raises OutputExistsError rather than train over them from step 0; restart=True
    removes the checkpoints instead (tidy) and starts over.
    """
    from anime_gan.errors import OutputExistsError

    found = _checkpoint_files(directory)
    if restart:
        if tidy and found:
            for files in found.values():
                for path in files:
                    os.remove(path)
            index = os.path.join(directory, CHECKPOINT_INDEX)
            if os.path.exists(index):
                os.remove(index)
            logger.info(f"--restart: removed the {len(found)} checkpoints in {directory}; training starts at step 0.")
        return None
    chosen, skipped = None, []
    for number in sorted(found, reverse=True):
        problem = checkpoint_problem(os.path.join(directory, f"ckpt-{number}"))
        if problem is None:
            chosen = number
            break
        skipped.append((number, problem))
    if chosen is None and (found or (final_weights and os.path.exists(final_weights))):
        what = "; ".join(f"ckpt-{n}: {p}" for n, p in skipped) if skipped else f"only the final weights {final_weights}"
        raise OutputExistsError(
            f"{directory} holds a training run but no checkpoint to resume from ({what}); pass --restart to "
            f"train from step 0 over it, or another --checkpoint_dir.")
    listed = _listed_checkpoints(directory)
    for number, problem in skipped:
        done = _discard_checkpoint(directory, number, found[number], listed) if tidy else "left in place"
        logger.warning(f"Skipped ckpt-{number}, newer than ckpt-{chosen}: {problem}; {done}.")
    if chosen is None:
        return None
    prefix = os.path.join(directory, f"ckpt-{chosen}")
    if tidy:
        # Older checkpoints stay as they are, but one without its .index (a deletion a kill cut
        # short) can never be restored: discard it by the same rule.
        kept = []
        for number in sorted(n for n in found if n < chosen):
            if any(p.endswith(".index") for p in found[number]):
                kept.append(number)
            else:
                _discard_checkpoint(directory, number, found[number], listed)
        # The CheckpointManager rotates (keeps max_to_keep of) what this index lists: make it list
        # what is here. It only ever deletes checkpoints stamped later than last_preserved_timestamp,
        # so each gets its file's time and that mark goes below them all.
        if listed != (kept + [chosen], chosen):
            from tensorflow.python.checkpoint import checkpoint_management  # the public alias is deprecated

            paths = [os.path.join(directory, f"ckpt-{n}") for n in kept + [chosen]]
            stamps = [os.path.getmtime(p + ".index") for p in paths]
            checkpoint_management.update_checkpoint_state_internal(
                directory, prefix, all_model_checkpoint_paths=paths, all_model_checkpoint_timestamps=stamps,
                last_preserved_timestamp=min(stamps) - 1, save_relative_paths=True)
    return prefix


def is_disk_full(error) -> bool:
    """Whether an exception from a write means the disk (or the user's quota) is full: Python's
    OSError(ENOSPC/EDQUOT), TensorFlow's ResourceExhaustedError (its file system maps ENOSPC to it),
    or a library's error saying so in words (h5py)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def discard_partial_checkpoint(directory, number) -> str | None:
    """After a failed write of ckpt-N: keeps it if it was written whole (only the index update
    failed) and returns its prefix, else removes its files and TensorFlow's temporaries."""
    prefix = os.path.join(directory, f"ckpt-{number}")
    whole = checkpoint_problem(prefix) is None
    if not whole:
        for path in _checkpoint_files(directory).get(number, []):
            os.remove(path)
    shutil.rmtree(prefix + "_temp", ignore_errors=True)
    for name in os.listdir(directory):
        if name.startswith(CHECKPOINT_INDEX + ".tmp"):
            os.remove(os.path.join(directory, name))
    return prefix if whole else None


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


def step_functions(model, strategy, jit_compile, guard=False):
    """The loop's three steps, each `AnimeGAN.train_step` in one mode: (init, GAN with the D update,
    GAN without it). Each is a tf.function that takes the per-replica batch (photo, anime,
    anime_gray, smooth_gray) and returns the losses averaged over replicas. `train_step` reads
    `model.phase` and `model.update_discriminator` when it is traced, so each mode is its own
    function, traced once.

    With guard=True each step also returns the `HEALTH` entries of `step_health`, measured after the
    update (the loop takes them out before it logs the losses)."""
    def wrap(phase, update_discriminator):
        optimizers = {"G": model.init_optimizer} if phase == "init" else {"G": model.g_optimizer}
        if phase == "gan" and update_discriminator:
            optimizers["D"] = model.d_optimizer

        def replica_step(*batch):
            model.phase, model.update_discriminator = phase, update_discriminator
            if not guard:
                return model.train_step(batch)
            # Read before and after the update: the function's automatic control dependencies run
            # the reads and the optimizers' writes of each variable in program order.
            iterations = {net: tf.identity(opt.iterations) for net, opt in optimizers.items()}
            losses = dict(model.train_step(batch))
            return {**losses, **step_health(model, optimizers, iterations)}

        inner = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

        @tf.function
        def run(*batch):
            per_replica = strategy.run(inner, args=batch)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

        return run

    return wrap("init", True), wrap("gan", True), wrap("gan", False)


HEALTH = ("nonfinite_generator", "nonfinite_discriminator", "nonfinite_optimizer", "skipped_G", "skipped_D")
HEALTH_WORDS = {"nonfinite_generator": "the generator's weights",
                "nonfinite_discriminator": "the discriminator's weights",
                "nonfinite_optimizer": "the optimizer state (Adam's moments)"}


def step_health(model, optimizers, iterations_before):
    """After a step's update (tensors, for inside the step function): how many variables of G, of D
    and of the step's optimizers hold a NaN or an infinity, and for each net ("G", "D") whose
    optimizer ran whether it skipped the update. The losses alone miss a bad update: they are
    computed before it (and in the init phase VGG features of an all-NaN image came out finite).
    Only float16 loss scaling skips updates: it drops a step whose scaled gradients overflowed,
    halves its scale and leaves the iteration count where it was."""
    import keras

    def nonfinite(variables):
        ok = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if keras.backend.is_float_dtype(v.dtype)]
        return tf.reduce_sum(tf.cast(tf.logical_not(tf.stack(ok)), tf.float32))

    health = {
        "nonfinite_generator": nonfinite(model.generator.weights),
        "nonfinite_discriminator": nonfinite(model.discriminator.weights),
        "nonfinite_optimizer": nonfinite([v for opt in optimizers.values() for v in opt.variables]),
    }
    for net, opt in optimizers.items():
        health[f"skipped_{net}"] = tf.cast(tf.equal(opt.iterations, iterations_before[net]), tf.float32)
    return health


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
    "anime_gan" logger and a tqdm bar. cfg.restart (--restart) trains from step 0 over the
    checkpoints the folder holds; without it such a folder is resumed, or refused when none of its
    checkpoints verifies."""
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
    # Non-chief workers write their (identical) checkpoints to a scratch folder they delete at the
    # end: every worker takes part in saving, as tf.distribute's multi-worker saving requires.
    own_dir = cfg.checkpoint_dir if chief else os.path.join(
        cfg.checkpoint_dir, f".worker_{strategy.cluster_resolver.task_id}")
    with RunLock(own_dir):
        previous_policy = configure(cfg)
        try:
            return _train(cfg, strategy, chief, own_dir, cfg.restart)
        finally:
            import keras

            keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg, strategy, chief, own_dir, restart):
    from anime_gan.training.data import make_train_dataset, make_val_dataset
    from anime_gan.image_io import write_image
    from anime_gan.weights.loading import WEIGHTS_FILENAME, save_generator

    generator_dir = os.path.join(cfg.checkpoint_dir, "generator")
    if chief:
        removed = remove_leftovers(cfg)
        if removed:
            names = ", ".join(os.path.relpath(p, cfg.checkpoint_dir) for p in removed)
            logger.info(f"Removed what an interrupted run left: {names}.")
    # Before the data and the model: a folder that cannot be resumed is refused at once.
    resume = find_resume_checkpoint(cfg.checkpoint_dir, tidy=chief, restart=restart,
                                    final_weights=os.path.join(generator_dir, WEIGHTS_FILENAME))

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
    if resume:
        try:
            checkpoint.restore(resume).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:  # it verified: it is another model's
            raise ConfigError(f"The checkpoint {resume} does not fit this run's model ({_first_line(e)}); resume "
                              f"with the flags it was written with, or pass another --checkpoint_dir.") from None
        logger.info(f"Resuming from {resume} (step {int(step_var)}, epoch {int(epoch_var)}).")
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=cfg.max_to_keep)
    step, epoch = int(step_var), int(epoch_var)
    first_step = step
    good = resume  # the newest checkpoint known good: restored after verifying, or written after a finite step

    @contextlib.contextmanager
    def stop_if_disk_full(what, discard=None):
        """A full disk in the block's write ends the run in one sentence, after discard() removed the
        write's partial files (it returns the checkpoint it found whole, if any)."""
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            kept = discard() if discard else None
            raise DiskFullError(
                f"Training stopped at step {step}: the disk is full (writing {what}); the partial files were "
                f"removed and the last good checkpoint ({kept or good or 'none written yet'}) is intact, so free "
                f"some space and re-run the same command to resume.") from None

    def save_checkpoint():
        nonlocal good
        with stop_if_disk_full(f"ckpt-{step} in {own_dir}", lambda: discard_partial_checkpoint(own_dir, step)):
            good = manager.save(checkpoint_number=step)

    if epoch >= cfg.epoch:
        logger.info(f"The run in {cfg.checkpoint_dir} is already complete ({epoch} of --epoch={cfg.epoch} epochs); "
            f"nothing to train. Pass a larger --epoch to train on, or a new --checkpoint_dir to start over.")

    logs = RunLog(cfg.log_dir, chief)
    if chief:
        with stop_if_disk_full(logs.path):
            truncate_metrics(logs.path, step)
        os.makedirs(cfg.sample_dir, exist_ok=True)
    logs.open()
    init_fn, gan_d_fn, gan_g_fn = step_functions(model, strategy, cfg.jit_compile, guard=True)
    split = split_batch(strategy, cfg.batch_size)
    epochs_dir = os.path.join(cfg.checkpoint_dir, "epochs")
    traced = set()  # the phases whose step function this process has already traced
    skips_seen = False

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
            updates = {"G": [0, 0], "D": [0, 0]}  # per net: [skipped, run] in this epoch (this process)
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
                health = {k: float(out.pop(k)) for k in HEALTH if k in out}
                losses = {k: float(v) for k, v in out.items()}
                step_time = time.perf_counter() - t0
                problem = _non_finite(losses, health)
                if problem:
                    raise NonFiniteLossError(
                        f"Training stopped at step {step + 1} (epoch {epoch + 1}, {phase} phase): {problem}; "
                        f"the last good checkpoint ({good or 'none written yet'}) is intact.")
                step += 1
                in_epoch += 1
                step_var.assign(step)
                record = {"step": step, "epoch": epoch + 1, "phase": phase, **losses,
                          "step_time": round(step_time, 6)}
                skipped = [net for net in updates if health.get(f"skipped_{net}", 0.0) > 0]
                for net in updates:
                    if f"skipped_{net}" in health:
                        updates[net][0] += net in skipped
                        updates[net][1] += 1
                if skipped:
                    record["skipped_updates"] = skipped
                    if not skips_seen:
                        skips_seen = True
                        logger.warning(f"Step {step}: float16 loss scaling skipped the {' and '.join(skipped)} update, "
                                       f"its scaled gradients having overflowed ({_loss_scales(model)}); metrics.jsonl "
                                       f"marks such steps with skipped_updates and each epoch's end counts them.")
                with stop_if_disk_full(logs.path):
                    logs.step(record, losses)
                postfix = {k: f"{v:.3g}" for k, v in losses.items()
                           if k in ("init_loss", "g_loss", "d_loss", "g_adv", "content", "style", "color", "tv")}
                if updates["G"][0] + updates["D"][0]:
                    postfix["skipped"] = updates["G"][0] + updates["D"][0]
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                        and in_epoch < steps_per_epoch:
                    save_checkpoint()
            bar.close()
            if updates["G"][0] + updates["D"][0]:
                counts = " and ".join(f"{n} of {run} {net} updates" for net, (n, run) in updates.items() if n)
                logger.warning(f"Epoch {epoch + 1}: float16 loss scaling skipped {counts}, their scaled gradients "
                               f"having overflowed ({_loss_scales(model)}).")
            # End of the epoch: the weights and samples first, then the checkpoint that records the
            # epoch as done (a kill in between redoes this part on resume, with the same result).
            epoch += 1
            if chief:
                if cfg.epoch_weights:
                    epoch_dir = os.path.join(epochs_dir, f"epoch_{epoch:03d}")
                    with stop_if_disk_full(epoch_dir, lambda: _remove_tmp_files(epoch_dir)):
                        save_generator(model.generator, epoch_dir)
                if epoch >= cfg.init_epoch:
                    # The original writes samples after every epoch from the end of the init phase on.
                    grid = sample_grid(model.generator, val_images)
                    with stop_if_disk_full(f"the sample grid in {cfg.sample_dir}"):
                        write_image(os.path.join(cfg.sample_dir, f"epoch_{epoch:03d}.png"), grid)
                        logs.image("photo | generated", grid, step)
            epoch_var.assign(epoch)
            save_checkpoint()
    finally:
        logs.close()

    saved_model = None
    loss_plot = None
    if chief:
        trained_now = step > first_step
        if trained_now or not os.path.exists(os.path.join(generator_dir, WEIGHTS_FILENAME)):
            with stop_if_disk_full(generator_dir, lambda: _remove_tmp_files(generator_dir)):
                save_generator(model.generator, generator_dir)
        with stop_if_disk_full(cfg.log_dir):
            loss_plot = plot_losses(logs.path, os.path.join(cfg.log_dir, LOSS_PLOT_FILE))
        if cfg.export_saved_model:
            from anime_gan.deploy.saved_model import export_saved_model

            saved_model = os.path.join(cfg.checkpoint_dir, "saved_model")
            if trained_now or not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
                logger.info(f"Exporting the SavedModel to {saved_model} (traces its two serving signatures) ...")
                t0 = time.perf_counter()
                with stop_if_disk_full(saved_model):
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


def _non_finite(losses, health) -> str | None:
    """What a step made non-finite, in words (the losses first, then what the update wrote), or None."""
    for name, value in losses.items():
        if not math.isfinite(value):
            return f"the {name} loss is {value}"
    for key, words in HEALTH_WORDS.items():
        if health.get(key, 0.0) > 0:
            return f"its update made {words} NaN or infinite"
    return None


def _loss_scales(model) -> str:
    """'scale now 2048' or "G's scale now 2048, D's 1024": the loss scales of the phase's optimizers."""
    import keras

    nets = {"G": model.init_optimizer if model.phase == "init" else model.g_optimizer}
    if model.phase == "gan":
        nets["D"] = model.d_optimizer
    scales = {net: float(opt.dynamic_scale) for net, opt in nets.items()
              if isinstance(opt, keras.optimizers.LossScaleOptimizer)}
    if len(scales) == 1:
        return f"scale now {next(iter(scales.values())):g}"
    return ", ".join(f"{net}'s scale now {v:g}" if i == 0 else f"{net}'s {v:g}"
                     for i, (net, v) in enumerate(scales.items()))


def _remove_tmp_files(directory) -> list[str]:
    """Removes the .tmp-* files interrupted atomic writes (weights.save_generator, image_io.write_image)
    left in directory; returns their paths."""
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.startswith(".tmp-"):
                removed.append(os.path.join(directory, name))
                os.remove(removed[-1])
    return removed
