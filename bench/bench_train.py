"""Train-step throughput: images/s of one AnimeGAN train step at 256x256, batch 6 (the official
setting), init and GAN phase, float32 and mixed_bfloat16, with and without XLA.

One "image" is one photo of the batch: a GAN step also reads the anime, grayscale anime and smooth
batches of the same size. Random VGG weights (the speed does not depend on them).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bench.common import median_ms


def train_step_rate(phase="gan", policy="float32", jit_compile=False, img_size=256, batch_size=6,
                    repeats=3, warmup=1):
    """{phase, dtype, xla, step_ms, images_per_s} of our compiled train step."""
    from anime_gan.training.config import TrainConfig
    from anime_gan.training.setup import build_model, step_functions

    cfg = TrainConfig(vgg_weights="random", img_size=img_size, batch_size=batch_size,
                      mixed_precision="none" if policy == "float32" else policy)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        strategy = tf.distribute.get_strategy()
        model = build_model(cfg, strategy)
        init_fn, gan_fn, _ = step_functions(model, strategy, jit_compile)
        rng = np.random.default_rng(0)
        batch = tuple(tf.constant(rng.uniform(-1, 1, (batch_size, img_size, img_size, 3)).astype(np.float32))
                      for _ in range(4))

        def step():
            out = init_fn(*batch) if phase == "init" else gan_fn(*batch)
            float(out["content"])  # wait for the step

        ms = median_ms(step, repeats=repeats, warmup=warmup)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return {"case": f"train step {phase} {policy}{' XLA' if jit_compile else ''}", "phase": phase,
            "dtype": policy, "xla": jit_compile, "img_size": img_size, "batch_size": batch_size,
            "step_ms": round(ms, 1), "images_per_s": round(batch_size / (ms / 1000.0), 2)}


def run(repeats=None, quick=False, img_size=256, batch_size=6):
    """Rows for every (phase, dtype, XLA) case; --quick: float32 without XLA only."""
    repeats = repeats or (2 if quick else 3)
    rows = []
    for phase in ("init", "gan"):
        for policy in (("float32",) if quick else ("float32", "mixed_bfloat16")):
            for xla in ((False,) if quick else (False, True)):
                try:
                    # XLA steps are several times slower here and the first one compiles: one timed.
                    rows.append(train_step_rate(phase, policy, xla, img_size, batch_size, 1 if xla else repeats))
                except Exception as e:  # e.g. an op without an XLA or bfloat16 kernel on this machine
                    rows.append({"case": f"train step {phase} {policy}{' XLA' if xla else ''}", "phase": phase,
                                 "dtype": policy, "xla": xla, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return rows
