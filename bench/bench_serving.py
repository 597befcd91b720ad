"""Latency of the exported SavedModel's `serving_default` (uint8 in, uint8 out, one image per call).

    python -m bench.bench_serving          # prints JSON

`bench_serving()` returns {"serving_default_256x256_ms": median, "serving_default_1280x720_ms": median}
measured on a SavedModel exported from a randomly initialised generator (weights do not change the
cost) and loaded back with plain `tf.saved_model.load`, as TF Serving would run it.
"""

from __future__ import annotations

import json
import tempfile

from bench.common import median_ms

SIZES = {"256x256": (256, 256), "1280x720": (720, 1280)}  # name: (height, width)


def bench_serving(repeats=5, large_repeats=3, saved_model_dir=None):
    """Median milliseconds per call of serving_default at 256x256 and 1280x720 (batch 1)."""
    import numpy as np
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        if saved_model_dir is None:
            from anime_gan.generator import Generator
            from anime_gan.serving import export_saved_model

            generator = Generator()
            generator.build()
            saved_model_dir = export_saved_model(generator, f"{tmp}/saved_model")
        model = tf.saved_model.load(str(saved_model_dir))
        serve = model.signatures["serving_default"]
        rng = np.random.default_rng(0)
        results = {}
        for name, (h, w) in SIZES.items():
            images = tf.constant(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
            n = repeats if h * w <= 256 * 256 else large_repeats
            # One warm-up call: the first call at a new shape builds its kernels.
            ms = median_ms(lambda: serve(images=images)["images"].numpy(), repeats=n, warmup=1)
            results[f"serving_default_{name}_ms"] = round(ms, 1)
    return results


def run(repeats=None, quick=False):
    """Rows for `python -m bench` (quick: 3 repeats)."""
    results = bench_serving(repeats=repeats or (3 if quick else 5))
    return [
        {"section": "serving", "case": f"SavedModel serving_default {name} (uint8, batch 1)",
         "ms": results[f"serving_default_{name}_ms"]}
        for name in SIZES
    ]


if __name__ == "__main__":
    print(json.dumps(bench_serving(), indent=2))
