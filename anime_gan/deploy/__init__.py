"""Deployment: the generator as a SavedModel (`saved_model`, with bounded-memory inference in
`banded`), an ONNX model (`onnx`) or a TFLite model (`tflite`); `export` loads a model path and
writes one of them. This package module itself imports no TensorFlow: the export command reads its
facts below before TensorFlow loads."""

from anime_gan import constants as C

EXPORT_FORMATS = ("saved_model", "onnx", "tflite")  # `python -m anime_gan.export --format`
# What --precision may be per format (another is refused in one sentence naming these).
EXPORT_PRECISIONS = {"saved_model": ("float32",), "onnx": ("float32", "int8"), "tflite": C.TFLITE_PRECISIONS}
CALIBRATION_PHOTOS = 32  # at most this many photos of --calibration_dir calibrate int8 and int8_full
