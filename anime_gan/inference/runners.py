"""The generator outside TensorFlow: ONNX Runtime, OpenVINO and LiteRT runners (uint8 [N, H, W, 3]
numpy -> uint8 numpy, and the float32 [-1, 1] output for accuracy), `RuntimeStylizer` over them, and
the conversions they need, done once and cached under `cache_dir()`.

A non-TensorFlow runtime given a TensorFlow model converts it to ONNX once (`anime_gan.deploy.onnx`)
and caches the file under $XDG_CACHE_HOME/anime_gan/onnx/ (default ~/.cache), named by a
hash of the architecture, its options and the weights' bytes; a log line says when it converts.

- onnxruntime: CPUExecutionProvider, float32, one thread per CPU this process may use.
- openvino: CPU, INFERENCE_PRECISION_HINT=f32 set explicitly (its default may pick bf16, far from
  float32; f16 for precision float16) and one thread per CPU (its default counts physical cores). The dynamic-shape model runs
  a size the first time it is seen; a size seen again gets a model compiled for that shape (at most
  STATIC_SHAPES_KEPT kept).
- int8 (onnxruntime or openvino): the ONNX file quantised once (`anime_gan.deploy.quantize`) on
  calibration photos and cached beside it, named by the weights and the photos (`cached_int8_onnx`).
  It runs images up to INT8_MAX_PIXELS whole and refuses larger ones in one sentence (no banded
  int8 graph: TensorFlow float32 runs them in bounded memory).
- litert: the float32 (or float16) TFLite export (`anime_gan.deploy.tflite`) in LiteRT + XNNPACK. That export has a
  fixed size, so each new image size is converted once (and cached).
The SavedModel's in-graph size checks are not in ONNX or TFLite: `RuntimeStylizer` checks each image
with `check_size` first (the same sentences), and an empty batch gives an empty batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import time

import numpy as np

from anime_gan.errors import ConfigError, ModelError, PathNotFoundError, first_line
from anime_gan.image_io import ImageError
from anime_gan.inference.stylizer import Stylizer, check_batch
from data_prep.files import write_bytes

log = logging.getLogger(__name__)

STATIC_SHAPES_KEPT = 4
# The largest image (pixels) an int8 model runs: its working memory peaked at 3.1 kB per pixel (v1 in
# OpenVINO at 720p; docs/deploy.md#int8), so 2 MiB pixels (1080p fits) stay within the 6 GiB the
# TensorFlow path is bounded by.
INT8_MAX_PIXELS = 2 * 2**20
# The Python package of each runtime and the pip extra that installs it.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino"),
            "litert": ("ai_edge_litert", "litert")}


def cache_dir():
    """$XDG_CACHE_HOME/anime_gan, default ~/.cache/anime_gan."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "anime_gan"


def threads():
    """CPUs this process may run on (a container's limit included where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def importlib_has(package):
    """True when `package` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def installed(runtime):
    """True when the runtime's package imports (tensorflow: always)."""
    if runtime == "tensorflow":
        return True
    if runtime == "litert" and not importlib_has("anime_gan.deploy.tflite"):
        return False
    return importlib_has(PACKAGES[runtime][0])


def require(runtime):
    """ConfigError (one sentence: what to install) unless `runtime` is installed."""
    if not installed(runtime):
        package, extra = PACKAGES[runtime]
        if runtime == "litert" and importlib_has(package):
            raise ConfigError("the LiteRT runtime needs anime_gan.deploy.tflite, which this install lacks; "
                              "use --runtime=tensorflow.")
        raise ConfigError(f"{package} is not installed; pip install 'anime-gan-tf2[{extra}]' or use "
                          "--runtime=tensorflow.")


class OnnxRuntimeRunner:
    """An ONNX file in ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, path, num_threads=None):
        import onnxruntime as ort

        from anime_gan.deploy.onnx import FLOAT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own types for a bad file
            raise ModelError(f"onnxruntime cannot load {path}: {first_line(e)}.") from None
        self._input, self._output, self._float = INPUT_NAME, OUTPUT_NAME, FLOAT_OUTPUT_NAME

    def __call__(self, images):
        return self.session.run([self._output], {self._input: images})[0]

    def unit_range(self, images):
        return self.session.run([self._float], {self._input: images})[0]


class OpenVinoRunner:
    """An ONNX file in OpenVINO's CPU plugin at float32: the dynamic model for a size seen once, a
    model compiled for the shape once a size repeats (at most STATIC_SHAPES_KEPT kept)."""

    name = "openvino"

    def __init__(self, path, num_threads=None, precision="float32"):
        import openvino as ov

        from anime_gan.deploy.onnx import FLOAT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME

        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": "f16" if precision == "float16" else "f32", "INFERENCE_NUM_THREADS": num_threads or threads(),
                       "PERFORMANCE_HINT": "LATENCY"}
        self.path = str(path)
        try:
            self.dynamic = self.core.compile_model(self.core.read_model(self.path), "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError for a bad file
            raise ModelError(f"openvino cannot load {path}: {first_line(e)}.") from None
        self._input, self._output, self._float = INPUT_NAME, OUTPUT_NAME, FLOAT_OUTPUT_NAME
        self.seen = set()
        self.static = {}  # shape -> compiled model, oldest first

    def compiled(self, shape):
        if shape in self.static:
            self.static[shape] = self.static.pop(shape)  # most recently used last
            return self.static[shape]
        if shape not in self.seen:
            self.seen.add(shape)
            return self.dynamic
        model = self.core.read_model(self.path)
        model.reshape({self._input: list(shape)})
        if len(self.static) >= STATIC_SHAPES_KEPT:
            self.static.pop(next(iter(self.static)))
        self.static[shape] = self.core.compile_model(model, "CPU", self.config)
        return self.static[shape]

    def _run(self, images, output):
        return np.asarray(self.compiled(images.shape)(images)[output])

    def __call__(self, images):
        return self._run(images, self._output)

    def unit_range(self, images):
        return self._run(images, self._float)


class LiteRTRunner:
    """LiteRT float32 (or float16 weights) + XNNPACK: the TFLite export has a fixed size, so one cached
    file (and one interpreter, at most STATIC_SHAPES_KEPT kept) per image size."""

    name = "litert"

    def __init__(self, generator, precision="float32"):
        self.generator, self.precision = generator, precision
        self.runners = {}

    def __call__(self, images):
        from anime_gan.deploy.tflite import TFLiteRunner

        size = tuple(images.shape[1:3])
        if size not in self.runners:
            if len(self.runners) >= STATIC_SHAPES_KEPT:
                self.runners.pop(next(iter(self.runners)))
            path = cached_tflite(self.generator, *size, precision=self.precision)
            self.runners[size] = TFLiteRunner(str(path), threads=threads())
        return self.runners[size](images)


def make_runner(runtime, onnx_path=None, generator=None, precision="float32"):
    """The runner of `runtime` ("onnxruntime", "openvino": an ONNX file, int8 when precision is;
    "litert": a generator)."""
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(onnx_path)
    if runtime == "openvino":
        return OpenVinoRunner(onnx_path, precision=precision)
    if runtime == "litert":
        return LiteRTRunner(generator, precision)
    raise ValueError(runtime)


class RuntimeStylizer(Stylizer):
    """A `Stylizer` over a numpy runner: sizes are checked here (the ONNX/TFLite graphs have no
    assertions) and an empty batch is answered without the runtime."""

    def __init__(self, runner, max_side, source, runtime, precision="float32"):
        super().__init__(runner, max_side, source, keep_alive=runner)
        self.runner, self.runtime, self.precision = runner, runtime, precision  # runner: its float output too

    def check_size(self, height, width, name="image"):
        """The size rule, and for int8 at most INT8_MAX_PIXELS (ImageError, one sentence)."""
        super().check_size(height, width, name)
        if self.precision == "int8" and height * width > INT8_MAX_PIXELS:
            raise ImageError(f"{name} is {height}x{width}, more than the {INT8_MAX_PIXELS / 2**20:.0f} megapixels "
                             "int8 runs whole; stylize it with --precision=float32 (TensorFlow runs large images "
                             "in bounded memory) or make it smaller.")

    def __call__(self, images):
        images = check_batch(images)
        self.check_size(images.shape[1], images.shape[2])
        if images.shape[0] == 0:
            return np.zeros(images.shape, np.uint8)
        return self._fn(np.ascontiguousarray(images))


# ---------------------------------------------------------------------------------------------
# Model files: an .onnx file's metadata, and conversions cached by the weights' hash


def is_onnx_path(model):
    """True for a path (str or PathLike) ending in .onnx."""
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def read_onnx_metadata(path):
    """The anime_gan metadata of an ONNX file; ModelError (one sentence) if it is not a readable ONNX model."""
    import onnx

    from anime_gan.deploy.onnx import read_metadata

    path = pathlib.Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"no ONNX model at {path}.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model ({first_line(e)}); re-export it with "
                         "python -m anime_gan.export --format=onnx.") from None
    if not proto.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (it has no graph); re-export it with "
                         "python -m anime_gan.export --format=onnx.")
    return read_metadata(proto)


def weights_key(generator):
    """A hash of what the exported graph depends on: architecture, options, weights, converter."""
    import tf2onnx

    from anime_gan.deploy.onnx import FORMAT_VERSION

    h = hashlib.sha256()
    h.update(json.dumps([generator.arch, generator.options(), FORMAT_VERSION, tf2onnx.__version__],
                        sort_keys=True).encode())
    for w in generator.weights:
        value = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w, np.float32))
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()[:24]


def cached_onnx(generator):
    """The generator's ONNX file in the cache folder, converted (and logged) the first time."""
    if not importlib_has("tf2onnx"):
        raise ConfigError("tf2onnx is not installed (it converts the model for this runtime); pip install "
                          "'anime-gan-tf2[onnx]' or use --runtime=tensorflow.")
    from anime_gan.deploy.onnx import to_onnx

    path = cache_dir() / "onnx" / f"{generator.arch}-{weights_key(generator)}.onnx"
    if not path.is_file():
        log.info("converting the model to ONNX once for this runtime (cached as %s) ...", path)
        start = time.perf_counter()
        write_bytes(path, to_onnx(generator).SerializeToString())
        log.info("converted to ONNX in %.0f s.", time.perf_counter() - start)
    return path


def cached_tflite(generator, height, width, precision="float32"):
    """The generator's TFLite file (float32 or float16) for one size in the cache folder, converted the first time."""
    from anime_gan.deploy.tflite import write_tflite

    name = f"{generator.arch}-{weights_key(generator)}-{height}x{width}-{precision}.tflite"
    path = cache_dir() / "tflite" / name
    if not path.is_file():
        log.info("converting the model to TFLite once for LiteRT at %dx%d (cached as %s) ...", height, width, path)
        write_tflite(generator, str(path), precision=precision, height=height, width=width)
    return path


def cached_int8_onnx(float_onnx, calibration_dir=None):
    """The int8 model of a float ONNX file (`anime_gan.deploy.quantize`), quantised once per file and
    calibration photos and cached in the cache folder (logged the first time)."""
    from anime_gan.deploy.quantize import calibration_key, calibration_photos, quantize_onnx

    if not importlib_has("onnxruntime"):
        raise ConfigError("int8 is quantised by onnxruntime, which is not installed; pip install "
                          "'anime-gan-tf2[onnx]' or use --precision=float32.")
    float_onnx = pathlib.Path(float_onnx)
    photos = calibration_photos(calibration_dir)
    h = hashlib.sha256(float_onnx.read_bytes())
    h.update(calibration_key(photos).encode())
    path = cache_dir() / "onnx" / f"{float_onnx.stem}-int8-{h.hexdigest()[:12]}.onnx"
    if not path.is_file():
        log.info("quantising the model to int8 once on %d calibration photos (cached as %s) ...", len(photos), path)
        start = time.perf_counter()
        quantize_onnx(float_onnx, path, photos)
        log.info("quantised in %.0f s.", time.perf_counter() - start)
    return path
