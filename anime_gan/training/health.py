"""Health checks of each training step: what became NaN or infinite, and which updates float16 loss
scaling skipped.

A checkpoint is written only after a step whose losses, weights and optimizer state are all finite
(`step_functions(guard=True)` returns `step_health`'s counts with the losses), so every checkpoint is
good; `non_finite_problem` puts a bad step in words for `NonFiniteLossError`. float16 loss scaling
skips the updates whose gradients overflow: `SkippedUpdates` counts them for metrics.jsonl, the log
and the progress bar.
"""

from __future__ import annotations

import logging
import math

import keras
import tensorflow as tf

from anime_gan.errors import TrainingStopped

__all__ = ["HEALTH", "HEALTH_WORDS", "NonFiniteLossError", "SkippedUpdates", "loss_scales", "non_finite_problem",
           "step_health"]
logger = logging.getLogger(__name__)

HEALTH = ("nonfinite_generator", "nonfinite_discriminator", "nonfinite_optimizer", "skipped_G", "skipped_D")
HEALTH_WORDS = {"nonfinite_generator": "the generator's weights",
                "nonfinite_discriminator": "the discriminator's weights",
                "nonfinite_optimizer": "the optimizer state (Adam's moments)"}


class NonFiniteLossError(TrainingStopped):
    """A loss or a weight became NaN or infinite; the message names the step and the loss."""


def step_health(model, optimizers, iterations_before):
    """After a step's update (tensors, for inside the step function): how many variables of G, of D
    and of the step's optimizers hold a NaN or an infinity, and for each net ("G", "D") whose
    optimizer ran whether it skipped the update. The losses alone miss a bad update: they are
    computed before it (and in the init phase VGG features of an all-NaN image came out finite).
    Only float16 loss scaling skips updates: it drops a step whose scaled gradients overflowed,
    halves its scale and leaves the iteration count where it was."""
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


def non_finite_problem(losses, health) -> str | None:
    """What a step made non-finite, in words (the losses first, then what the update wrote), or None.
    losses and health are the step's floats ({name: value}, `step_health`'s entries)."""
    for name, value in losses.items():
        if not math.isfinite(value):
            return f"the {name} loss is {value}"
    for key, words in HEALTH_WORDS.items():
        if health.get(key, 0.0) > 0:
            return f"its update made {words} NaN or infinite"
    return None


def loss_scales(model) -> str:
    """'scale now 2048' or "G's scale now 2048, D's 1024": the loss scales of the phase's optimizers."""
    nets = {"G": model.init_optimizer if model.phase == "init" else model.g_optimizer}
    if model.phase == "gan":
        nets["D"] = model.d_optimizer
    scales = {net: float(opt.dynamic_scale) for net, opt in nets.items()
              if isinstance(opt, keras.optimizers.LossScaleOptimizer)}
    if len(scales) == 1:
        return f"scale now {next(iter(scales.values())):g}"
    return ", ".join(f"{net}'s scale now {v:g}" if i == 0 else f"{net}'s {v:g}"
                     for i, (net, v) in enumerate(scales.items()))


class SkippedUpdates:
    """The updates float16 loss scaling skipped: counted per net in the current epoch (this process),
    warned about at the first skip of the run and at the end of each epoch that had any."""

    def __init__(self, model):
        self.model = model
        self.seen = False  # a skip was already warned about in this run
        self.start_epoch()

    def start_epoch(self) -> None:
        self.updates = {"G": [0, 0], "D": [0, 0]}  # per net: [skipped, run] in this epoch

    @property
    def skipped_in_epoch(self) -> int:
        """How many updates were skipped in this epoch."""
        return self.updates["G"][0] + self.updates["D"][0]

    def count(self, step, health) -> list[str]:
        """Counts step's updates from its `step_health` floats; returns the nets whose update it skipped."""
        skipped = [net for net in self.updates if health.get(f"skipped_{net}", 0.0) > 0]
        for net in self.updates:
            if f"skipped_{net}" in health:
                self.updates[net][0] += net in skipped
                self.updates[net][1] += 1
        if skipped and not self.seen:
            self.seen = True
            logger.warning(f"Step {step}: float16 loss scaling skipped the {' and '.join(skipped)} update, "
                           f"its scaled gradients having overflowed ({loss_scales(self.model)}); metrics.jsonl "
                           f"marks such steps with skipped_updates and each epoch's end counts them.")
        return skipped

    def report_epoch(self, epoch) -> None:
        """The warning at the end of epoch (1-based) when it skipped updates."""
        if self.skipped_in_epoch:
            counts = " and ".join(f"{n} of {run} {net} updates" for net, (n, run) in self.updates.items() if n)
            logger.warning(f"Epoch {epoch}: float16 loss scaling skipped {counts}, their scaled gradients "
                           f"having overflowed ({loss_scales(self.model)}).")
