"""int8: the ONNX model (`anime_gan.deploy.onnx`) with its convolutions quantised, the norms in float.

    quantize_onnx("hayao.onnx", "hayao-int8.onnx", calibration_images=sample_photos())

ONNX Runtime's static post-training quantisation (`onnxruntime.quantization.quantize_static`) in
the QDQ format: each convolution's input becomes uint8 (per-tensor scale from the calibration
photos' activations, Percentile method) and its weights int8 (per output channel); QuantizeLinear /
DequantizeLinear pairs around it say so. The reflect pads before them copy uint8. Everything else (the instance norms of v1, the layer norms
of v2, LeakyReLU, the pads, the resizes) stays float32, and so does the last convolution (its output
is the picture: quantising it cost 1 dB). The file keeps the float model's contract (uint8 images of
any size in, `stylized` uint8 and `stylized_unit_range` out) and runs in ONNX Runtime (QLinearConv)
and OpenVINO (which reads the QDQ pairs as int8 convolutions). Why this toolkit and not NNCF, and
the measurements: docs/deploy.md#int8.

Calibration: real photos, centre-cropped and resized to CALIBRATION_SIDE squares; by default
scikit-image's sample photos (SAMPLE_PHOTOS, shipped in its wheel), or the first
`anime_gan.deploy.CALIBRATION_PHOTOS` of a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pathlib
import tempfile

import numpy as np

from anime_gan import constants as C
from anime_gan.deploy import CALIBRATION_PHOTOS
from anime_gan.deploy.onnx import INPUT_NAME, METADATA_PREFIX, to_onnx
from anime_gan.deploy.tflite import fit_photo
from anime_gan.errors import ConfigError, OutputExistsError, PathNotFoundError
from anime_gan.image_io import is_image_path, read_image
from data_prep.files import write_bytes

log = logging.getLogger(__name__)

SAMPLE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")  # scikit-image's data folder
CALIBRATION_SIDE = 384
PERCENTILE = 99.999  # of each activation's histogram: the range its uint8 covers
# The reflect pads before each convolution are quantised too: they then copy uint8 (OpenVINO's pad is
# a reference kernel; in float it took 15% of the time at 720p, in uint8 5%), at no cost in dB.
QUANTIZED_OPS = ("Conv", "Pad")


def sample_photos():
    """scikit-image's sample photos SAMPLE_PHOTOS as uint8 RGB arrays (ConfigError if it is not installed)."""
    import importlib.util

    import cv2

    spec = importlib.util.find_spec("skimage")
    if spec is None:
        raise ConfigError("int8 calibrates on scikit-image's sample photos, and scikit-image is not installed; "
                          "pip install scikit-image or pass --calibration_dir=FOLDER of real photos.")
    folder = pathlib.Path(spec.origin).parent / "data"
    return [cv2.cvtColor(cv2.imread(str(folder / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for name in SAMPLE_PHOTOS]


def calibration_photos(directory=None):
    """The photos int8 is calibrated on: the first CALIBRATION_PHOTOS images under `directory`
    (sorted by path), else scikit-image's sample photos; uint8 RGB arrays."""
    if directory is None:
        return sample_photos()
    if not pathlib.Path(directory).is_dir():
        raise PathNotFoundError(f"--calibration_dir={directory} is not a folder; pass a folder of real photos.")
    paths = sorted(p for p in pathlib.Path(directory).rglob("*") if p.is_file() and is_image_path(p))
    if not paths:
        raise PathNotFoundError(f"--calibration_dir={directory} holds no images; pass a folder of real photos.")
    return [read_image(p) for p in paths[:CALIBRATION_PHOTOS]]


def calibration_batches(images, side=CALIBRATION_SIDE):
    """uint8 [1, side, side, 3] batches of the photos (centre crop, area resize)."""
    return [fit_photo(np.asarray(image), side, side)[None] for image in images]


def calibration_key(images):
    """A short hash of the calibration photos (what a cached int8 model is named by)."""
    h = hashlib.sha256()
    for batch in calibration_batches(images):
        h.update(batch.tobytes())
    return h.hexdigest()[:12]


def float_convolutions_kept(model_proto):
    """Names of the convolutions left in float: the last one (its output is the picture)."""
    convs = [node.name for node in model_proto.graph.node if node.op_type == "Conv"]
    return convs[-1:]


@contextlib.contextmanager
def _root_log_quiet():
    """The root logger drops records below ERROR while in this block."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(float_path, output, calibration_images):
    """Write the int8 model of the float ONNX file `float_path` to `output` (a temp file beside it,
    then renamed); calibration_images: real photos, uint8 [H, W, 3] RGB. Returns output."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if not calibration_images:
        raise ConfigError("int8 needs calibration photos; pass a folder of real photos.")
    model = onnx.load(str(float_path))
    batches = calibration_batches(calibration_images)

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{INPUT_NAME: b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    output = pathlib.Path(os.path.abspath(os.fspath(output)))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        staged = pathlib.Path(tmp) / output.name
        # The quantiser prints its progress and logs advice (shape-inference pre-processing, which our
        # dynamic-shape model does not need) on the root logger: neither is for our users.
        with contextlib.redirect_stdout(io.StringIO()), _root_log_quiet():
            quantize_static(str(float_path), str(staged), Photos(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=float_convolutions_kept(model),
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": PERCENTILE})
        quantized = onnx.load(str(staged))
        del quantized.metadata_props[:]
        metadata = {p.key: p.value for p in model.metadata_props}
        metadata[METADATA_PREFIX + "precision"] = "int8"
        metadata[METADATA_PREFIX + "calibration"] = f"{len(batches)} photos, {calibration_key(calibration_images)}"
        for key, value in metadata.items():
            entry = quantized.metadata_props.add()
            entry.key, entry.value = key, value

        write_bytes(output, quantized.SerializeToString())
    return output


def write_int8_onnx(generator, output, calibration_images, max_side=None, overwrite=False):
    """Write the generator as an int8 ONNX file (`to_onnx`, then `quantize_onnx`); returns its path."""
    output = pathlib.Path(os.path.abspath(os.fspath(output)))
    if output.is_dir():
        raise OutputExistsError(f"--output={output} is a directory; pass a file path such as model.onnx.")
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"--output={output} already exists; pass --overwrite to replace it or choose another path.")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        float_path = pathlib.Path(tmp) / "float32.onnx"
        float_path.write_bytes(to_onnx(generator, max_side or C.DEFAULT_MAX_SIDE).SerializeToString())
        return quantize_onnx(float_path, output, calibration_images)
