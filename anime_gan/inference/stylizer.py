"""What every way of running a model shares: the `Stylizer` contract (uint8 [N, H, W, 3] RGB in, the
same out, the size rule checked), the readable sentence of a model's error, and --adjust_brightness.

No model is loaded here (see `anime_gan.inference.runtimes.load_model`).
"""

from __future__ import annotations

import re

import numpy as np

from anime_gan.errors import ConfigError
from anime_gan.image_io import ImageError

# --adjust_brightness: weights of the R, G, B channel means in the brightness that is matched.
# "official" is what the original's image path computes: its helper reads channel 0 as B (weight
# 0.114) and channel 2 as R (0.299), as for an OpenCV BGR array, but is given RGB arrays, so in
# effect 0.114 R + 0.587 G + 0.299 B. "luma" is true ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B.
BRIGHTNESS_WEIGHTS = {"official": (0.114, 0.587, 0.299), "luma": (0.299, 0.587, 0.114)}
BRIGHTNESS_MODES = ("official", "luma", "none")


def check_batch(images):
    """images as a numpy array, or ImageError unless it is uint8 [N, H, W, 3]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ImageError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}.")
    return images


class Stylizer:
    """uint8 [N, H, W, 3] RGB -> uint8 [N, H, W, 3]: a SavedModel's serving_default or a Generator.

    `max_side` is the largest side the model accepts; `source` says where it came from.
    """

    def __init__(self, fn, max_side, source, keep_alive=None):
        self._fn = fn
        self.max_side = int(max_side)
        self.source = source
        self._keep_alive = keep_alive  # a loaded SavedModel must outlive its signatures

    def check_size(self, height, width, name="image"):
        """ImageError unless the size rule (`anime_gan.deploy.saved_model.size_error`) accepts the image."""
        from anime_gan.deploy.saved_model import size_error  # imports TensorFlow: not at command start-up

        problem = size_error(height, width, self.max_side, name)
        if problem:
            raise ImageError(problem)

    def __call__(self, images):
        import tensorflow as tf

        images = check_batch(images)
        try:
            return np.asarray(self._fn(tf.constant(images)))
        except tf.errors.InvalidArgumentError as e:
            raise ImageError(model_error_message(e)) from None


def model_error_message(error):
    """The one readable sentence inside a TF InvalidArgumentError (our in-graph assertions)."""
    text = str(getattr(error, "message", error))
    match = re.search(r"assertion failed: \[(.*?)\]\s*$", text, re.MULTILINE)
    if match:
        return match.group(1)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    useful = [l for l in lines if not l.startswith(("Graph execution error", "Detected at node", "<stack", "[["))]
    return (useful or lines or ["the model rejected the input"])[0]


def brightness_mode(value):
    """"official" | "luma" | "none" from a mode name or a bool (True: "official", False/None: "none")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "official"
    text = str(value).strip().lower()
    if text in BRIGHTNESS_MODES:
        return text
    if text in ("true", "t", "1", "yes", "y", "on"):
        return "official"
    if text in ("false", "f", "0", "no", "n", "off", ""):
        return "none"
    raise ConfigError(
        f"adjust_brightness must be official (the original's 0.114R+0.587G+0.299B), luma "
        f"(0.299R+0.587G+0.114B) or none, not {value!r}."
    )


def average_brightness(image, weights="official"):
    """Weighted sum of the channel means of an RGB image; weights "official" or "luma" (see
    BRIGHTNESS_WEIGHTS) or three numbers for R, G, B."""
    weights = BRIGHTNESS_WEIGHTS[weights] if isinstance(weights, str) else weights
    means = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    return float(np.dot(weights, means))


def adjust_brightness(result, photo, weights="official"):
    """The original's --adjust_brightness: scale the result so its brightness equals the photo's.

    weights: "official" (default; the original's image path, 0.114R+0.587G+0.299B) or "luma"
    (0.299R+0.587G+0.114B). Multiplied in floating point, clipped to [0, 255], truncated to uint8
    as in the original.
    """
    target, current = average_brightness(photo, weights), average_brightness(result, weights)
    if current <= 0.0:  # an all-black result has no brightness to scale
        return np.asarray(result, np.uint8)
    scaled = np.asarray(result, np.float64) * (target / current)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def adjust_batch(outputs, photos, mode):
    """Each output brightness-matched to its photo per `mode` (a `brightness_mode`); unchanged for "none"."""
    if mode == "none":
        return outputs
    return np.stack([adjust_brightness(o, p, mode) for o, p in zip(outputs, photos)])
