"""The AnimeGAN training loop: `train(TrainConfig(...))` is what `python -m anime_gan.train` runs;
tests call it too. `TrainingRun` holds one call's steps: set up, resume, the epochs, save, finish.

Schedule (docs/original.md, "Training schedule"): epochs 0 .. init_epoch-1 are the init phase (G
alone, con_weight * content, Adam at init_lr); the rest is the GAN phase. In the GAN phase D is
updated on the first of every `training_rate` steps and G on every step (G:D = training_rate:1, the
original's meaning of `training_rate`; 1 = one D and one G update per step). Steps per epoch =
floor(max(#photos, #anime) / batch_size) unless --steps_per_epoch overrides it.

Resume: the checkpoint (`checkpoints.make_checkpoint`) is written at the end of every epoch and
every `checkpoint_every_steps` steps. Re-running the same command resumes from the newest checkpoint
that restores and verifies (`checkpoints.find_resume_checkpoint`) and cuts `metrics.jsonl` back to
the steps it holds, so the log reads as one uninterrupted run.

Never losing work:
- One trainer per folder: `run_lock.RunLock` (a flock the kernel drops when the process dies).
- A checkpoint is written only after a step whose losses, weights and optimizer state are all
  finite (`health`), so every checkpoint is good.
- What a killed run leaves is removed on the next start, and a newer checkpoint that does not
  verify is skipped with a warning (`checkpoints`).
- A full disk stops the run with one sentence, after removing the partial files of that write; the
  last good checkpoint stays.
- float16 loss scaling skips the updates whose gradients overflow: such steps carry
  `skipped_updates` in metrics.jsonl, and the log and the progress bar count them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time

import keras
import tensorflow as tf
from tqdm import tqdm

from anime_gan import constants as C
from anime_gan.deploy.saved_model import export_saved_model
from anime_gan.errors import first_line
from anime_gan.image_io import write_image
from anime_gan.training.checkpoints import (DiskFullError, discard_partial_checkpoint, find_resume_checkpoint,
                                            is_disk_full, make_checkpoint, remove_leftovers, remove_tmp_files)
from anime_gan.training.config import ConfigError, TrainConfig, validate_config
from anime_gan.training.data import make_train_dataset, make_val_dataset
from anime_gan.training.health import HEALTH, NonFiniteLossError, SkippedUpdates, non_finite_problem
from anime_gan.training.run_lock import RunLock
from anime_gan.training.run_logs import LOSS_PLOT_FILE, SAMPLE_LIMIT, RunLog, plot_losses, sample_grid, truncate_metrics
from anime_gan.training.setup import (UNTRAINED_VGG_WARNING, build_model, configure, copy_generator_weights, is_chief,
                                      load_init_generator, make_strategy, split_batch, step_functions)
from anime_gan.weights import save_generator

__all__ = ["PHASES", "TrainConfig", "TrainResult", "TrainingRun", "train"]
logger = logging.getLogger(__name__)

PHASES = ("init", "gan")  # the checkpoint's phase variable is an index into this
LOSSES_SHOWN = ("init_loss", "g_loss", "d_loss", "g_adv", "content", "style", "color", "tv")  # on the progress bar


@dataclasses.dataclass
class TrainResult:
    """Where a run wrote everything, how far it is, and the trained model."""
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
            return TrainingRun(cfg, strategy, chief, own_dir).run()
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


class TrainingRun:
    """One call of `train`, in a folder whose lock this process holds. `run` takes its steps in order:
    `find_resume` (the checkpoint to go on from), `load_init` (--init_from's generator when there is
    none), `load_data`, `build`, `restore`, `open_logs`, then
    `run_epoch` and `end_epoch` for each epoch left, then `finish` (final weights, plot, SavedModel)."""

    def __init__(self, cfg: TrainConfig, strategy, chief: bool, own_dir: str):
        self.cfg, self.strategy, self.chief, self.own_dir = cfg, strategy, chief, own_dir
        self.final_weights = os.path.join(cfg.checkpoint_dir, C.RUN_WEIGHTS)
        self.generator_dir = os.path.dirname(self.final_weights)
        self.step = self.epoch = self.first_step = 0
        self.good = None  # the newest checkpoint known good: restored after verifying, or written after a finite step
        self.traced = set()  # the phases whose step function this process has already traced

    def run(self) -> TrainResult:
        resume = self.find_resume()
        init = self.load_init(resume)
        self.load_data()
        self.build()
        self.restore(resume, init)
        self.open_logs()
        self.step_fns = step_functions(self.model, self.strategy, self.cfg.jit_compile, guard=True)
        self.split = split_batch(self.strategy, self.cfg.batch_size)
        try:
            while self.epoch < self.cfg.epoch:
                self.run_epoch()
                self.end_epoch()
        finally:
            self.logs.close()
        return self.finish()

    # ---- set up and resume ----------------------------------------------------------------------
    def find_resume(self) -> str | None:
        """Removes an interrupted run's leftovers (chief) and finds the checkpoint to resume from;
        before the data and the model, so a folder that cannot be resumed is refused at once."""
        cfg = self.cfg
        if self.chief:
            removed = remove_leftovers(cfg)
            if removed:
                names = ", ".join(os.path.relpath(p, cfg.checkpoint_dir) for p in removed)
                logger.info(f"Removed what an interrupted run left: {names}.")
        return find_resume_checkpoint(cfg.checkpoint_dir, tidy=self.chief, restart=cfg.restart,
                                      final_weights=self.final_weights)

    def load_init(self, resume):
        """--init_from's generator, checked against --arch before the data and the model are built; None
        without it or when the run resumes (its checkpoint holds the run's own generator)."""
        cfg = self.cfg
        if not cfg.init_from:
            return None
        if resume:
            logger.info(f"--init_from={cfg.init_from} is not used: {cfg.checkpoint_dir} holds this run's checkpoints, "
                        f"and resuming wins (pass --restart or another --checkpoint_dir to start from it again).")
            return None
        return load_init_generator(cfg.init_from, cfg.arch)

    def load_data(self) -> None:
        """The training pipeline, the steps per epoch and (chief) the val images of the sample grids."""
        cfg = self.cfg
        self.dataset, data_steps, report = make_train_dataset(
            cfg.dataset_dir, cfg.dataset, cfg.batch_size, img_size=cfg.img_size, seed=cfg.seed, shuffle=True)
        self.steps_per_epoch = cfg.steps_per_epoch or data_steps
        if self.chief:
            override = f" (--steps_per_epoch={cfg.steps_per_epoch} overrides it)" if cfg.steps_per_epoch else ""
            logger.info(report.summary() + override)
        self.val_images = make_val_dataset(os.path.join(cfg.dataset_dir, "val"), cfg.img_size, limit=SAMPLE_LIMIT) \
            if self.chief else []

    def build(self) -> None:
        """The model, the input iterator and the checkpoint that holds both with the run's position."""
        self.model = build_model(self.cfg, self.strategy)
        if self.model.vgg.untrained:
            logger.warning(UNTRAINED_VGG_WARNING.format(source=self.model.vgg.weights_source))
        self.iterator = iter(self.dataset)
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.phase_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")  # index into PHASES
        self.checkpoint = make_checkpoint(self.model, self.iterator, self.step_var, self.epoch_var, self.phase_var)
        self.skips = SkippedUpdates(self.model)

    def restore(self, resume, init=None) -> None:
        """Restores the checkpoint at resume (if any), else copies the generator init (--init_from) into
        G, and sets the run's position."""
        cfg = self.cfg
        if init is not None:
            with self.strategy.scope():
                copy_generator_weights(init, self.model.generator)
            phase = f"{cfg.init_epoch} init epochs first" if cfg.init_epoch else "no init phase (--init_epoch=0)"
            logger.info(f"Fine-tuning from {cfg.init_from}: G starts from its weights, D and the optimizers start "
                        f"fresh; {phase}.")
        if resume:
            try:
                self.checkpoint.restore(resume).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:  # it verified: it is another model's
                raise ConfigError(f"The checkpoint {resume} does not fit this run's model ({first_line(e)}); resume "
                                  f"with the flags it was written with, or pass another --checkpoint_dir.") from None
            logger.info(f"Resuming from {resume} (step {int(self.step_var)}, epoch {int(self.epoch_var)}).")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.own_dir, max_to_keep=cfg.max_to_keep)
        self.step, self.epoch = int(self.step_var), int(self.epoch_var)
        self.first_step = self.step
        self.good = resume
        if self.epoch >= cfg.epoch:
            logger.info(f"The run in {cfg.checkpoint_dir} is already complete ({self.epoch} of --epoch={cfg.epoch} "
                        f"epochs); nothing to train. Pass a larger --epoch to train on, or a new --checkpoint_dir "
                        f"to start over.")

    def open_logs(self) -> None:
        """metrics.jsonl cut back to the restored step (chief), the sample folder, TensorBoard's writer."""
        self.logs = RunLog(self.cfg.log_dir, self.chief)
        if self.chief:
            with self.stop_if_disk_full(self.logs.path):
                truncate_metrics(self.logs.path, self.step)
            os.makedirs(self.cfg.sample_dir, exist_ok=True)
        self.logs.open()

    # ---- the epochs -----------------------------------------------------------------------------
    def run_epoch(self) -> None:
        """The steps left in the current epoch, with its progress bar and mid-epoch checkpoints."""
        cfg, steps_per_epoch = self.cfg, self.steps_per_epoch
        phase = "init" if self.epoch < cfg.init_epoch else "gan"
        self.phase_var.assign(PHASES.index(phase))
        self.model.phase = phase
        in_epoch = self.step - self.epoch * steps_per_epoch
        if not 0 <= in_epoch <= steps_per_epoch:
            raise ConfigError(f"The checkpoint in {cfg.checkpoint_dir} is at step {self.step} of epoch {self.epoch}, "
                              f"which does not fit {steps_per_epoch} steps per epoch; resume with the "
                              f"same --steps_per_epoch and data, or use a new --checkpoint_dir.")
        if phase not in self.traced and in_epoch < steps_per_epoch:
            self.traced.add(phase)
            logger.info(f"Building the {phase}-phase step: its first call traces and optimises the graph, "
                        f"which takes longer than the steps after it ...")
        bar = tqdm(total=steps_per_epoch, initial=in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epoch} {phase}",
                   disable=not (cfg.progress and self.chief), file=sys.stderr, dynamic_ncols=True)
        self.skips.start_epoch()
        while in_epoch < steps_per_epoch:
            losses = self.take_step(phase)
            in_epoch += 1
            postfix = {k: f"{v:.3g}" for k, v in losses.items() if k in LOSSES_SHOWN}
            if self.skips.skipped_in_epoch:
                postfix["skipped"] = self.skips.skipped_in_epoch
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 \
                    and in_epoch < steps_per_epoch:
                self.save_checkpoint()
        bar.close()
        self.skips.report_epoch(self.epoch + 1)

    def take_step(self, phase) -> dict[str, float]:
        """One training step: runs it, stops on a non-finite result, logs it; returns its losses."""
        init_fn, gan_d_fn, gan_g_fn = self.step_fns
        batch = self.split(next(self.iterator))
        t0 = time.perf_counter()
        if phase == "init":
            out = init_fn(*batch)
        else:
            # D on the first of every training_rate GAN steps, G on every step.
            gan_index = self.step - self.cfg.init_epoch * self.steps_per_epoch
            fn = gan_d_fn if gan_index % self.cfg.training_rate == 0 else gan_g_fn
            out = fn(*batch)
        health = {k: float(out.pop(k)) for k in HEALTH if k in out}
        losses = {k: float(v) for k, v in out.items()}
        step_time = time.perf_counter() - t0
        problem = non_finite_problem(losses, health)
        if problem:
            raise NonFiniteLossError(
                f"Training stopped at step {self.step + 1} (epoch {self.epoch + 1}, {phase} phase): {problem}; "
                f"the last good checkpoint ({self.good or 'none written yet'}) is intact.")
        self.step += 1
        self.step_var.assign(self.step)
        record = {"step": self.step, "epoch": self.epoch + 1, "phase": phase, **losses,
                  "step_time": round(step_time, 6)}
        skipped = self.skips.count(self.step, health)
        if skipped:
            record["skipped_updates"] = skipped
        with self.stop_if_disk_full(self.logs.path):
            self.logs.step(record, losses)
        return losses

    def end_epoch(self) -> None:
        """The epoch's weights and samples (chief), then the checkpoint that records the epoch as done
        (a kill in between redoes this part on resume, with the same result)."""
        cfg = self.cfg
        self.epoch += 1
        if self.chief:
            if cfg.epoch_weights:
                epoch_dir = os.path.join(cfg.checkpoint_dir, "epochs", f"epoch_{self.epoch:03d}")
                with self.stop_if_disk_full(epoch_dir, lambda: remove_tmp_files(epoch_dir)):
                    save_generator(self.model.generator, epoch_dir)
            if self.epoch >= cfg.init_epoch:
                # The original writes samples after every epoch from the end of the init phase on.
                grid = sample_grid(self.model.generator, self.val_images)
                with self.stop_if_disk_full(f"the sample grid in {cfg.sample_dir}"):
                    write_image(os.path.join(cfg.sample_dir, f"epoch_{self.epoch:03d}.png"), grid)
                    self.logs.image("photo | generated", grid, self.step)
        self.epoch_var.assign(self.epoch)
        self.save_checkpoint()

    # ---- saving -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Writes ckpt-<step>; a full disk removes its partial files and stops the run."""
        with self.stop_if_disk_full(f"ckpt-{self.step} in {self.own_dir}",
                                    lambda: discard_partial_checkpoint(self.own_dir, self.step)):
            self.good = self.manager.save(checkpoint_number=self.step)

    @contextlib.contextmanager
    def stop_if_disk_full(self, what, discard=None):
        """A full disk in the block's write ends the run in one sentence, after discard() removed the
        write's partial files (it returns the checkpoint it found whole, if any)."""
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            kept = discard() if discard else None
            raise DiskFullError(
                f"Training stopped at step {self.step}: the disk is full (writing {what}); the partial files were "
                f"removed and the last good checkpoint ({kept or self.good or 'none written yet'}) is intact, so "
                f"free some space and re-run the same command to resume.") from None

    def finish(self) -> TrainResult:
        """The final generator weights, the loss plot and the SavedModel (chief; written again only
        when this call trained or they are missing); a worker's scratch folder is removed."""
        cfg = self.cfg
        saved_model = loss_plot = None
        if self.chief:
            trained_now = self.step > self.first_step
            if trained_now or not os.path.exists(self.final_weights):
                with self.stop_if_disk_full(self.generator_dir, lambda: remove_tmp_files(self.generator_dir)):
                    save_generator(self.model.generator, self.generator_dir)
            with self.stop_if_disk_full(cfg.log_dir):
                loss_plot = plot_losses(self.logs.path, os.path.join(cfg.log_dir, LOSS_PLOT_FILE))
            if cfg.export_saved_model:
                saved_model = os.path.join(cfg.checkpoint_dir, C.SAVED_MODEL_DIR)
                if trained_now or not os.path.exists(os.path.join(saved_model, C.SAVED_MODEL_FILENAME)):
                    self.export(saved_model)
        else:
            shutil.rmtree(self.own_dir, ignore_errors=True)
        if self.model.vgg.untrained:
            logger.warning(UNTRAINED_VGG_WARNING.format(source=self.model.vgg.weights_source))
        return TrainResult(
            checkpoint_dir=cfg.checkpoint_dir, generator_dir=self.generator_dir, sample_dir=cfg.sample_dir,
            log_dir=cfg.log_dir, metrics_path=self.logs.path, loss_plot=loss_plot, saved_model=saved_model,
            steps=self.step, epochs=self.epoch, steps_this_run=self.step - self.first_step,
            model=self.model,
        )

    def export(self, saved_model) -> None:
        """Exports the generator as a SavedModel folder, timed."""
        logger.info(f"Exporting the SavedModel to {saved_model} (traces its two serving signatures) ...")
        t0 = time.perf_counter()
        with self.stop_if_disk_full(saved_model):
            export_saved_model(self.model.generator, saved_model)
        logger.info(f"Exported in {time.perf_counter() - t0:.0f} s.")
