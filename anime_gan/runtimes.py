"""Run a generator in TensorFlow, ONNX Runtime, OpenVINO or LiteRT, and pick the fastest by measurement.

    >>> from anime_gan.runtimes import load_stylizer
    >>> stylizer = load_stylizer("checkpoints/hayao", runtime="auto")
    >>> anime = stylizer(photos_uint8)          # uint8 [N, H, W, 3] -> uint8 [N, H, W, 3]

    python -m anime_gan.runtimes               # prints this machine's table of measured runtimes
    python -m anime_gan.runtimes --calibrate --model=checkpoints/hayao   # measures it now

`load_stylizer` returns an `anime_gan.stylize.Stylizer` (same call, `check_size`, `max_side`, `source`).
`model` is anything `anime_gan.load_generator` reads, or an ONNX file written by
`python -m anime_gan.export --format=onnx` (which runs in onnxruntime or openvino, not tensorflow).
A non-TensorFlow runtime given a TensorFlow model converts it to ONNX once (`anime_gan.deploy.onnx`,
10-20 s) and caches the file under $XDG_CACHE_HOME/anime_gan/onnx/ (default ~/.cache), named by a
hash of the architecture, its options and the weights' bytes; a log line says when it converts.

Runtimes (each an optional package; tensorflow always works):
- tensorflow: `anime_gan.stylize.load_model`, today's path.
- onnxruntime: CPUExecutionProvider, float32, one thread per CPU this process may use.
- openvino: CPU, INFERENCE_PRECISION_HINT=f32 set explicitly (its default picks bf16 on CPUs that
  have it, 27-35 dB from float32) and one thread per CPU (its default counts physical cores). The
  dynamic-shape model runs a size the first time it is seen; a size seen again gets a model compiled
  for that shape (0.5 s once, 6-10% faster per call; at most 4 kept).
- litert: the float32 TFLite export (`anime_gan.deploy.tflite`) in LiteRT + XNNPACK. That export has a
  fixed size, so each new image size is converted once (and cached): fine for a video, slow for a
  folder of photos of many sizes. `auto` does not pick it (its runner returns uint8 only, so its
  accuracy is not measured here).
- auto: the fastest runtime this machine has measured at >= 60 dB from TensorFlow float32, from the
  table `runtimes.json` in the cache folder. Its entries are keyed by the CPU's model name, the
  machine architecture, the installed runtimes' versions and the generator architecture (v1/v2);
  `make bench` writes them (section runtimes), and when this machine has none, `auto` measures the
  installed runtimes once on a 256x256 image (a few seconds, logged) and writes the entry.
The SavedModel's in-graph size checks are not in ONNX: every runtime here checks each image with
`check_size` first (the same sentences), and an empty batch gives an empty batch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import pathlib
import platform
import statistics
import time

import numpy as np

from anime_gan import constants as C
from anime_gan.errors import ConfigError, ModelError, PathNotFoundError
from anime_gan.image_io import ImageError
from anime_gan.stylize import Stylizer
from data_prep.files import write_bytes

log = logging.getLogger("anime_gan.runtimes")

RUNTIMES = ("auto", "tensorflow", "onnxruntime", "openvino", "litert")
ACCURATE_DB = 60.0  # "float-accurate": PSNR from TensorFlow float32 on [-1, 1] (peak-to-peak 2)
CALIBRATION_SIZE = 256
CALIBRATION_REPEATS = 3
STATIC_SHAPES_KEPT = 4
TABLE_NAME = "runtimes.json"
# The Python package of each runtime and the pip extra that installs it.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino"),
            "litert": ("ai_edge_litert", "litert")}


def cache_dir():
    """$XDG_CACHE_HOME/anime_gan, default ~/.cache/anime_gan."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "anime_gan"


def table_path():
    return cache_dir() / TABLE_NAME


def threads():
    """CPUs this process may run on (a container's limit included where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def installed(runtime):
    """True when the runtime's package imports (tensorflow: always)."""
    if runtime == "tensorflow":
        return True
    if runtime == "litert" and not importlib_has("anime_gan.deploy.tflite"):
        return False
    return importlib_has(PACKAGES[runtime][0])


def _require(runtime):
    if not installed(runtime):
        package, extra = PACKAGES[runtime]
        if runtime == "litert" and importlib_has(package):
            raise ConfigError("the LiteRT runtime needs anime_gan.deploy.tflite, which this install lacks; "
                              "use --runtime=tensorflow.")
        raise ConfigError(f"{package} is not installed; pip install 'anime-gan-tf2[{extra}]' or use "
                          "--runtime=tensorflow.")


def importlib_has(package):
    import importlib.util

    return importlib.util.find_spec(package) is not None


# ---------------------------------------------------------------------------------------------
# Runners: uint8 [N, H, W, 3] numpy -> uint8 numpy (and the float32 [-1, 1] output for accuracy)


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
            raise ModelError(f"onnxruntime cannot load {path}: {_first_line(e)}.") from None
        self._input, self._output, self._float = INPUT_NAME, OUTPUT_NAME, FLOAT_OUTPUT_NAME

    def __call__(self, images):
        return self.session.run([self._output], {self._input: images})[0]

    def unit_range(self, images):
        return self.session.run([self._float], {self._input: images})[0]


class OpenVinoRunner:
    """An ONNX file in OpenVINO's CPU plugin at float32: the dynamic model for a size seen once, a
    model compiled for the shape once a size repeats (at most STATIC_SHAPES_KEPT kept)."""

    name = "openvino"

    def __init__(self, path, num_threads=None):
        import openvino as ov

        from anime_gan.deploy.onnx import FLOAT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME

        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": num_threads or threads(),
                       "PERFORMANCE_HINT": "LATENCY"}
        self.path = str(path)
        try:
            self.dynamic = self.core.compile_model(self.core.read_model(self.path), "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError for a bad file
            raise ModelError(f"openvino cannot load {path}: {_first_line(e)}.") from None
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


def _first_line(error):
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0].rstrip(".")


class RuntimeStylizer(Stylizer):
    """A `Stylizer` over a numpy runner: sizes are checked here (the ONNX/TFLite graphs have no
    assertions) and an empty batch is answered without the runtime."""

    def __init__(self, runner, max_side, source, runtime):
        super().__init__(runner, max_side, source, keep_alive=runner)
        self.runtime = runtime

    def __call__(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ImageError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}.")
        self.check_size(images.shape[1], images.shape[2])
        if images.shape[0] == 0:
            return np.zeros(images.shape, np.uint8)
        return self._fn(np.ascontiguousarray(images))


# ---------------------------------------------------------------------------------------------
# Models: an .onnx file, or a TensorFlow model converted once and cached


def is_onnx_path(model):
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
        raise ModelError(f"{path} is not a readable ONNX model ({_first_line(e)}); re-export it with "
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


def cached_tflite(generator, height, width):
    """The generator's float32 TFLite file for one size in the cache folder, converted the first time."""
    from anime_gan.deploy.tflite import write_tflite

    path = cache_dir() / "tflite" / f"{generator.arch}-{weights_key(generator)}-{height}x{width}-float32.tflite"
    if not path.is_file():
        log.info("converting the model to TFLite once for LiteRT at %dx%d (cached as %s) ...", height, width, path)
        write_tflite(generator, str(path), precision="float32", height=height, width=width)
    return path


class LiteRTRunner:
    """LiteRT float32 + XNNPACK: the TFLite export has a fixed size, so one cached file (and one
    interpreter, at most STATIC_SHAPES_KEPT kept) per image size."""

    name = "litert"

    def __init__(self, generator):
        self.generator = generator
        self.runners = {}

    def __call__(self, images):
        from anime_gan.deploy.tflite import TFLiteRunner

        size = tuple(images.shape[1:3])
        if size not in self.runners:
            if len(self.runners) >= STATIC_SHAPES_KEPT:
                self.runners.pop(next(iter(self.runners)))
            self.runners[size] = TFLiteRunner(str(cached_tflite(self.generator, *size)), threads=threads())
        return self.runners[size](images)


def _runner(runtime, onnx_path=None, generator=None):
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(onnx_path)
    if runtime == "openvino":
        return OpenVinoRunner(onnx_path)
    if runtime == "litert":
        return LiteRTRunner(generator)
    raise ValueError(runtime)


def _saved_model_cap(directory):
    """The max_side a SavedModel was exported with, read from its variables (no graph loaded)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(pathlib.Path(directory) / "variables" / "variables"))
        key = "max_side_variable/.ATTRIBUTES/VARIABLE_VALUE"
        return int(reader.get_tensor(key)) if reader.has_tensor(key) else None
    except Exception:  # noqa: BLE001 - an older SavedModel: the default cap
        return None


def load_stylizer(model, runtime="tensorflow", max_side=None):
    """A Stylizer running `model` in `runtime` (one of RUNTIMES). Errors are one sentence.

    max_side: the size cap for weights and checkpoints (default C.DEFAULT_MAX_SIDE); a SavedModel or
    an ONNX file keeps the cap it was exported with.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime={runtime} is not one of {', '.join(RUNTIMES)}.")
    if is_onnx_path(model):
        return _load_onnx_file(pathlib.Path(os.fspath(model)).expanduser(), runtime)
    if runtime == "tensorflow":
        from anime_gan.stylize import load_model

        return load_model(model, max_side=max_side)
    if runtime != "auto":
        _require(runtime)
    from anime_gan.weights.loading import load_generator, resolve_model

    source = resolve_model(pathlib.Path(os.fspath(model)).expanduser())
    cap = (_saved_model_cap(source.path) if source.kind == "saved_model" else None) or max_side \
        or C.DEFAULT_MAX_SIDE
    generator = load_generator(model)
    if runtime == "auto":
        runtime = choose(generator.arch, generator=generator)
        log.info("--runtime=auto: %s (the fastest float-accurate runtime in %s).", runtime, table_path())
        if runtime == "tensorflow":
            from anime_gan.stylize import _stylizer_from_generator

            return _stylizer_from_generator(generator, cap, str(model))
    onnx_path = cached_onnx(generator) if runtime in ("onnxruntime", "openvino") else None
    return RuntimeStylizer(_runner(runtime, onnx_path, generator), cap, str(model), runtime)


def _load_onnx_file(path, runtime):
    if runtime in ("tensorflow", "litert"):
        raise ConfigError(f"{path} is an ONNX model: run it with --runtime=onnxruntime, openvino or auto, or "
                          "pass the TensorFlow model it was exported from.")
    if runtime != "auto":
        _require(runtime)
    elif not (installed("onnxruntime") or installed("openvino")):
        raise ConfigError(f"{path} is an ONNX model and neither onnxruntime nor openvino is installed; pip "
                          "install 'anime-gan-tf2[onnx]' or pass the TensorFlow model it was exported from.")
    if not importlib_has("onnx"):
        raise ConfigError("onnx is not installed; pip install 'anime-gan-tf2[onnx]' to read .onnx models.")
    meta = read_onnx_metadata(path)
    cap = int(meta.get("max_side", C.DEFAULT_MAX_SIDE))
    if runtime == "auto":
        runtime = choose(meta.get("arch", "v1"), onnx_path=path)
        log.info("--runtime=auto: %s (the fastest float-accurate runtime in %s).", runtime, table_path())
    return RuntimeStylizer(_runner(runtime, path), cap, str(path), runtime)


# ---------------------------------------------------------------------------------------------
# The measured table and `auto`


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions():
    """{runtime: version} of the installed runtimes."""
    from importlib import metadata

    out = {}
    for runtime, dists in (("tensorflow", ("tensorflow", "tensorflow-cpu", "tensorflow-intel")),
                           ("onnxruntime", ("onnxruntime",)), ("openvino", ("openvino",)),
                           ("litert", ("ai-edge-litert",))):
        for dist in dists:
            try:
                out[runtime] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if "litert" in out and not installed("litert"):
        del out["litert"]
    return out


def machine_key(arch):
    """The table key: CPU model name, machine architecture, threads, runtime versions, generator arch."""
    v = versions()
    return " | ".join([cpu_name(), platform.machine(), f"{threads()} threads",
                       ", ".join(f"{k} {v[k]}" for k in sorted(v)), f"arch {arch}"])


def read_table(path=None):
    path = pathlib.Path(path or table_path())
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring the unreadable runtime table %s; it will be measured again.", path)
        return {}
    return table if isinstance(table, dict) else {}


def record(arch, measurements, source, path=None, size=None):
    """Store {runtime: {"ms": median ms, "db": PSNR from TF float32}} as this machine's entry for arch;
    size: "WxH" measured (default the calibration size)."""
    path = pathlib.Path(path or table_path())
    table = read_table(path)
    table[machine_key(arch)] = {
        "cpu": cpu_name(), "arch": arch, "versions": versions(), "source": source,
        "size": size or f"{CALIBRATION_SIZE}x{CALIBRATION_SIZE}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runtimes": measurements,
    }
    write_bytes(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return table[machine_key(arch)]


def fastest(entry, candidates=None):
    """The fastest runtime of a table entry at >= ACCURATE_DB (TensorFlow float32 is the reference),
    among the installed candidates; "tensorflow" when none qualifies."""
    candidates = candidates or [r for r in RUNTIMES[1:] if installed(r)]
    timed = [(m["ms"], name) for name, m in entry.get("runtimes", {}).items()
             if name in candidates and m.get("ms") is not None
             and (name == "tensorflow" or (m.get("db") is not None and m["db"] >= ACCURATE_DB))]
    return min(timed)[1] if timed else "tensorflow"


def choose(arch, generator=None, onnx_path=None, path=None):
    """`auto`: the runtime this machine's table says is fastest, measuring it first when absent."""
    if onnx_path is not None:
        candidates = [r for r in ("onnxruntime", "openvino") if installed(r)]
    else:
        candidates = ["tensorflow"] + [r for r in ("onnxruntime", "openvino") if installed(r)]
        if len(candidates) > 1 and not importlib_has("tf2onnx"):
            candidates = ["tensorflow"]
    if len(candidates) == 1:
        return candidates[0]
    entry = read_table(path).get(machine_key(arch))
    if entry is None or not set(candidates) <= set(entry.get("runtimes", {})):
        log.info("no measured runtime table for this machine (%s) in %s: timing %s once on a %dx%d image "
                 "...", cpu_name(), path or table_path(), ", ".join(candidates), CALIBRATION_SIZE,
                 CALIBRATION_SIZE)
        measurements = calibrate(candidates, generator=generator, onnx_path=onnx_path)
        entry = record(arch, measurements, "calibration", path=path)
    return fastest(entry, candidates)


def psnr_db(reference, y):
    """PSNR of y against reference, both in [-1, 1] (peak-to-peak 2); inf when identical."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(y, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))


def calibration_image(size=None):
    """A seeded smooth photo-like uint8 [1, size, size, 3] image (gradients plus noise)."""
    size = size or CALIBRATION_SIZE
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * 200 + rng.normal(0, 20, (size, size, 3))
    return np.clip(base, 0, 255).astype(np.uint8)[np.newaxis]


def calibrate(candidates, generator=None, onnx_path=None, repeats=CALIBRATION_REPEATS):
    """{runtime: {"ms", "db"}} of each candidate on the calibration image: interleaved medians; dB
    from TensorFlow float32 (from onnxruntime when only an ONNX file is given)."""
    x = calibration_image()
    runners, floats = {}, {}
    if generator is not None:
        import tensorflow as tf

        from anime_gan.image_io import images_to_unit_range
        from anime_gan.deploy.saved_model import IMAGES_KEY, StylizeModule, _float32_generator, generate

        module = StylizeModule(generator)
        g32 = _float32_generator(generator)
        runners["tensorflow"] = lambda images: module.serving_default(tf.constant(images))[IMAGES_KEY].numpy()
        floats["tensorflow"] = lambda images: generate(g32, images_to_unit_range(images)).numpy()
        if any(r in candidates for r in ("onnxruntime", "openvino")):
            onnx_path = cached_onnx(generator)
    for name in candidates:
        if name == "tensorflow":
            continue
        runner = _runner(name, onnx_path, generator)
        runners[name] = runner
        floats[name] = getattr(runner, "unit_range", None)
    runners = {name: runners[name] for name in candidates}
    times = {name: [] for name in runners}
    for fn in runners.values():
        fn(x)
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(x)
            times[name].append((time.perf_counter() - start) * 1000.0)
    reference_name = "tensorflow" if "tensorflow" in floats else "onnxruntime"
    reference = floats[reference_name](x) if floats.get(reference_name) else None
    out = {}
    for name in runners:
        db = None
        if reference is not None and floats.get(name) is not None:
            db = round(min(psnr_db(reference, floats[name](x)), 999.0), 1)
        out[name] = {"ms": round(statistics.median(times[name]), 1), "db": db}
    return out


def format_table(table):
    """The table as readable lines, one block per entry, fastest first, the `auto` choice marked."""
    if not table:
        return f"no runtime measurements yet in {table_path()} (run `make bench` or `--runtime=auto` once)."
    lines = []
    for key, entry in sorted(table.items()):
        here = key in (machine_key("v1"), machine_key("v2"))
        lines.append(f"{key}{'  (this machine)' if here else ''}")
        lines.append(f"  measured by {entry.get('source')} at {entry.get('size')} on {entry.get('date')}")
        choice = fastest(entry, list(entry.get("runtimes", {})))
        for name, m in sorted(entry.get("runtimes", {}).items(), key=lambda kv: kv[1].get("ms") or 1e12):
            db = "reference" if name == "tensorflow" else (f"{m['db']} dB" if m.get("db") is not None else "? dB")
            mark = "  <- auto" if name == choice else ""
            lines.append(f"  {name:12s} {m.get('ms')} ms  {db}{mark}")
    return "\n".join(lines)


def main(argv):
    """`python -m anime_gan.runtimes [--calibrate --model=PATH]`: print (or measure) the table."""
    from absl import flags

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    FLAGS = flags.FLAGS
    if FLAGS.calibrate:
        if not FLAGS.model:
            raise ConfigError("--calibrate needs --model=PATH (the generator to time).")
        from anime_gan.weights.loading import load_generator

        generator = load_generator(FLAGS.model)
        candidates = ["tensorflow"] + [r for r in ("onnxruntime", "openvino") if installed(r)]
        record(generator.arch, calibrate(candidates, generator=generator), "calibration")
    print(f"{table_path()}:")
    print(format_table(read_table()))
    return 0


if __name__ == "__main__":
    from absl import flags

    from anime_gan import cli

    flags.DEFINE_boolean("calibrate", False, "Measure the installed runtimes now and store this machine's entry.")
    flags.DEFINE_string("model", None, "The generator --calibrate times (anything load_generator reads).")
    cli.run(main)
