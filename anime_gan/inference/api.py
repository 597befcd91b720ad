"""The one-image Python API: `stylize(image_uint8, model=None, runtime=..., precision=...)` and the
model cache behind it.

    >>> import anime_gan
    >>> anime = anime_gan.stylize(photo_uint8, model="checkpoints/hayao")
"""

from __future__ import annotations

import os

import numpy as np

from anime_gan import constants as C
from anime_gan import image_io
from anime_gan.errors import ConfigError
from anime_gan.inference import faces as face_mode
from anime_gan.inference.runtimes import default_runtime, load_model, stylizer_from_generator
from anime_gan.inference.stylizer import Stylizer, adjust_batch, brightness_mode

MODEL_ENV = "ANIME_GAN_MODEL"

_MODELS = {}  # (absolute model path, runtime, precision) -> its Stylizer, loaded once


def get_model(model=None, runtime=None, precision="float32"):
    """A Stylizer from a Stylizer, a Generator, a path (loaded once per runtime and precision, and
    cached) or $ANIME_GAN_MODEL. runtime, precision: as `load_model` takes them (a Stylizer is used as
    it is; a Generator runs in TensorFlow float32 unless another runtime or precision is asked)."""
    if isinstance(model, Stylizer):
        return model
    runtime = default_runtime(precision) if runtime is None else runtime
    if model is None:
        model = os.environ.get(MODEL_ENV)
        if not model:
            raise ConfigError(f"no model given; pass model=PATH (a SavedModel or weights) or set ${MODEL_ENV}.")
    if isinstance(model, (str, os.PathLike)):
        key = (os.path.abspath(os.fspath(model)), runtime, precision)
        if key not in _MODELS:
            _MODELS[key] = load_model(model, runtime=runtime, precision=precision)
        return _MODELS[key]
    if hasattr(model, "tf1_variable_map"):  # an anime_gan Generator
        if (runtime, precision) != ("tensorflow", "float32"):
            raise ConfigError(f"runtime={runtime!r}, precision={precision!r} need a model path; save the "
                              "Generator with anime_gan.save_generator and pass its folder.")
        return stylizer_from_generator(model)
    raise TypeError(f"model must be a path, a Generator or a Stylizer, not {type(model).__name__}.")


def stylize(image_uint8, model=None, adjust_brightness=False, runtime=None, precision="float32", faces=False,
            face_model=None, face_size=C.FACE_SIZE):
    """Photo(s) -> anime, same size: uint8 [H, W, 3] or [N, H, W, 3] -> uint8 of the same shape.

    Grayscale, RGBA and 16-bit arrays are converted to 8-bit RGB first (`image_io.to_rgb_uint8`).
    model: any path `anime_gan.load_generator` accepts (loaded once), a Generator, or None for
    $ANIME_GAN_MODEL. adjust_brightness matches each result's mean brightness to its photo's:
    "official" or True (the original's weights), "luma", or "none" / False (default).
    runtime: one of constants.RUNTIMES ("auto": the fastest measured here at the precision; default:
    tensorflow for float32, auto otherwise); precision: "float32" (default), "float16" or "int8" (see
    `anime_gan.inference.load_model`). faces: face mode (`anime_gan.inference.faces`): each face
    stylized by face_model (the same forms; default: model) in an aligned face_size crop and pasted
    over the image stylized by model.
    """
    mode = brightness_mode(adjust_brightness)
    if faces:
        face_mode.require_detector()
    stylizer = get_model(model, runtime, precision)
    array = np.asarray(image_uint8)
    batched = array.ndim == 4
    if batched and len(array) == 0:  # nothing to stylize: the empty batch of the same size
        image_io.to_rgb_uint8(np.zeros((1, 1, *array.shape[3:]), array.dtype))  # the same dtype/channel checks
        stylizer.check_size(array.shape[1], array.shape[2])
        return np.zeros((0, *array.shape[1:3], 3), np.uint8)
    images = list(array) if batched else [array]
    images = np.stack([image_io.to_rgb_uint8(im) for im in images])
    stylizer.check_size(images.shape[1], images.shape[2])
    out = stylizer(images)
    if faces:
        paster = face_mode.FaceMode(stylizer if face_model is None else get_model(face_model, runtime, precision),
                                    face_size)
        out = np.stack([paster.apply(photo, background)[0] for photo, background in zip(images, out)])
    out = adjust_batch(out, images, mode)
    return out if batched else out[0]
