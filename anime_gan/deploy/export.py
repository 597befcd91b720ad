"""`export()`: a generator loaded from any model path, written as a SavedModel, an ONNX model or a
TFLite model (what `python -m anime_gan.export` and `python -m anime_gan.convert` run).

The writers are `anime_gan.deploy.saved_model.export_saved_model`, `anime_gan.deploy.onnx.write_onnx`
(needs tf2onnx) and `anime_gan.deploy.tflite.write_tflite`; the one asked for is checked before the
slow model load, so a missing package is reported first.
"""

from __future__ import annotations

import importlib.util
import os

from anime_gan import constants as C
from anime_gan.deploy import EXPORT_FORMATS, EXPORT_PRECISIONS
from anime_gan.deploy.onnx import write_onnx
from anime_gan.deploy.quantize import calibration_photos, write_int8_onnx
from anime_gan.deploy.saved_model import export_saved_model
from anime_gan.errors import ConfigError, OutputExistsError
from anime_gan.weights import load_generator


def export(checkpoint_dir, output, max_side=C.DEFAULT_MAX_SIDE, overwrite=False, format="saved_model",
           precision="float32", size="256x256", calibration_dir=None):
    """Loads the generator and writes it in `format`; returns the written path. Errors are one sentence."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format={format} is not one of {', '.join(EXPORT_FORMATS)}.")
    if precision not in EXPORT_PRECISIONS[format]:
        works = ", ".join(f"{f} ({' '.join(p)})" for f, p in EXPORT_PRECISIONS.items() if precision in p)
        raise ConfigError(f"--format={format} is written in {' or '.join(EXPORT_PRECISIONS[format])} only; "
                          f"--precision={precision} is for {works or 'no format'}.")
    photos = None
    if format == "tflite":
        height, width = parse_size(size)
        photos = calibration_photos(calibration_dir) if calibration_dir else None
    elif precision == "int8":
        photos = calibration_photos(calibration_dir)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise OutputExistsError(
            f"--output={output} already exists; pass --overwrite to replace it or choose another path.")
    writer = _writer(format)
    generator = load_generator(checkpoint_dir)
    if format == "saved_model":
        return writer(generator, output, max_side=max_side)
    if format == "onnx" and precision == "int8":
        return write_int8_onnx(generator, output, photos, max_side=max_side, overwrite=overwrite)
    if format == "onnx":
        return writer(generator, output, max_side=max_side, overwrite=overwrite)
    return writer(generator, output, precision=precision, calibration_images=photos, height=height, width=width)


def parse_size(size):
    """--size "HEIGHTxWIDTH" -> (height, width) ints; ConfigError otherwise."""
    try:
        height, width = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size={size} is not HEIGHTxWIDTH (e.g. 720x1280).") from None
    return height, width


def _writer(format):
    """The function that writes `format`, or ConfigError if what it needs is not installed."""
    if format == "saved_model":
        return export_saved_model
    if format == "onnx":
        if importlib.util.find_spec("tf2onnx") is None:
            raise ConfigError("tf2onnx is not installed; pip install 'anime-gan-tf2[onnx]' to export ONNX.")
        return write_onnx
    try:  # an install may leave the TFLite export out
        from anime_gan.deploy.tflite import write_tflite
    except ImportError as e:
        raise ConfigError(f"the TFLite export is not available ({e}).") from None
    return write_tflite
