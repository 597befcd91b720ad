"""Data benchmarks (numbers only; `python -m bench` prints them): edge smoothing ours vs the per-pixel
original, and the tf.data training pipeline's throughput at 256², batch 6."""
from __future__ import annotations

import os
import tempfile
import time

import cv2
import numpy as np


def _edge_dense_images(n: int, img_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR, gray) pairs: cartoon crops of the demo source photos (the kind of image smoothing sees)."""
    from data_prep import demo
    photos = demo.source_photos()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = demo.cartoon(demo.crop(photos[i % len(photos)][1], demo.random_crop_box(rng, *photos[i % len(photos)][1].shape[:2]), img_size))
        ok, buf = cv2.imencode(".jpg", img)  # read back as a file would be: colour and grayscale decodes
        out.append((cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)))
    return out


def bench_smoothing(n_images: int = 5, img_size: int = 256, repeats: int = 5) -> dict:
    """ms per image of `smooth_arrays` and of the per-pixel reference, the speedup, and whether equal."""
    from data_prep import smoothing
    images = _edge_dense_images(n_images, img_size)
    t = time.perf_counter()
    for _ in range(repeats):
        ours = [smoothing.smooth_arrays(b, g, img_size) for b, g in images]
    ours_ms = (time.perf_counter() - t) * 1000 / (repeats * n_images)
    t = time.perf_counter()
    ref = [smoothing.smooth_reference(b, g, img_size) for b, g in images]
    ref_ms = (time.perf_counter() - t) * 1000 / n_images
    masked = np.mean([np.count_nonzero(smoothing.edge_mask(cv2.resize(g, (img_size, img_size)))) for _, g in images])
    return {"smoothing_ms_per_image": round(ours_ms, 3), "smoothing_reference_ms_per_image": round(ref_ms, 1),
            "smoothing_speedup": round(ref_ms / ours_ms, 1),
            "smoothing_equal": bool(all(np.array_equal(a, b) for a, b in zip(ours, ref))),
            "smoothing_masked_fraction": round(float(masked) / img_size ** 2, 3), "img_size": img_size}


def bench_pipeline(img_size: int = 256, batch_size: int = 6, steps: int = 60, dataset_dir: str | None = None,
                   style: str = "Demo") -> dict:
    """Images per second the training pipeline delivers (after a warm-up), on the demo set.

    Uses `dataset_dir` when given, else builds a small demo set (64 photos, 64 style images) in a
    temporary folder. One "image" = one photo + one anime image (+ its grayscale) + one smooth image.
    """
    import tensorflow as tf  # noqa: F401  (imported here so smoothing-only runs stay light)
    from anime_gan.training import data
    from data_prep import demo
    with tempfile.TemporaryDirectory() as tmp:
        if dataset_dir is None:
            dataset_dir = os.path.join(tmp, "ds")
            demo.build(dataset_dir, num_photos=64, num_style=64, img_size=img_size, progress=False)
        t = time.perf_counter()
        ds, steps_per_epoch, _ = data.make_train_dataset(dataset_dir, style, batch_size, img_size)
        build_s = time.perf_counter() - t
        it = iter(ds)
        for _ in range(5):  # warm-up: tracing, thread pools, autotuning
            next(it)
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        dt = time.perf_counter() - t
    return {"pipeline_images_per_s": round(steps * batch_size / dt, 1),
            "pipeline_ms_per_batch": round(dt * 1000 / steps, 2), "pipeline_build_s": round(build_s, 2),
            "pipeline_batch": batch_size, "pipeline_img_size": img_size}


def run(repeats=None, quick=False) -> list[dict]:
    """Rows for `python -m bench`: edge smoothing, then the tf.data pipeline (quick: fewer images and steps)."""
    smoothing = bench_smoothing(n_images=2 if quick else 5, repeats=repeats or (2 if quick else 5))
    pipeline = bench_pipeline(steps=20 if quick else 60)
    return [{"case": "edge smoothing, ours vs per-pixel reference", **smoothing},
            {"case": "tf.data training pipeline", **pipeline}]


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=1))
