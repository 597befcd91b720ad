"""What the stylize, serving, convert and model-loading tests share: test pictures, the original's
stylization computed in NumPy (independent of `anime_gan.deploy.saved_model` and `anime_gan.image_io`), a
generator with seeded weights, and the messages the library logs."""

import contextlib
import logging
import os
import pathlib

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def textured(shape, seed):
    """A smooth random picture (a photo is not white noise) plus pixel noise, so borders are not flat
    and padding choices show in the result. shape: (H, W, C), or (N, H, W, C) for a batch."""
    if len(shape) == 3:
        return textured((1, *shape), seed)[0]
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    coarse = rng.integers(0, 256, (n, max(h // 8, 2), max(w // 8, 2), c)).astype(np.float32)
    fine = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c) for im in coarse])
    return np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).round().astype(np.uint8)


def to_uint8(y):
    """The original's output mapping in NumPy: (y + 1) / 2 * 255, clipped, truncated."""
    return np.clip((np.asarray(y, np.float64) + 1.0) / 2.0 * 255.0, 0, 255).astype(np.uint8)


def reference_stylize(generator, images):
    """uint8 [H, W, 3] or [N, H, W, 3] -> the same: NumPy reflect pad to multiples of 4, G, crop, map."""
    if images.ndim == 3:
        return reference_stylize(generator, images[None])[0]
    _, h, w, _ = images.shape
    padded = np.pad(images, [(0, 0), (0, -h % 4), (0, -w % 4), (0, 0)], mode="reflect")
    y = generator(padded.astype(np.float32) / 127.5 - 1.0).numpy()
    return to_uint8(y[:, :h, :w])


def max_diff(a, b):
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def seeded_generator(seed):
    """A Generator with seeded random weights in which every gamma and beta matters."""
    from anime_gan.nets.generator import Generator
    from official_graph import random_official_weights
    from anime_gan.weights import tf1_to_generator

    g = Generator()
    g.build()
    shapes = {name: tuple(v.shape) for name, v in g.tf1_variable_map().items()}
    return tf1_to_generator(random_official_weights(shapes, seed), g)


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@contextlib.contextmanager
def logged(name):
    """The messages (any level) logged under the logger `name` and its children while the block runs."""
    messages = []

    class Catch(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger(name), Catch(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
