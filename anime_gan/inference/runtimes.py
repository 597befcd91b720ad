"""A ready `Stylizer` from any model in any runtime and precision (`load_model`), and the per-machine
table `auto` picks the fastest runtime at a precision from.

    >>> from anime_gan.inference import load_model
    >>> stylizer = load_model("checkpoints/hayao", runtime="auto")
    >>> anime = stylizer(photos_uint8)          # uint8 [N, H, W, 3] -> uint8 [N, H, W, 3]

`model` is anything `anime_gan.load_generator` reads, or an ONNX file written by
`python -m anime_gan.export --format=onnx` (which runs in onnxruntime or openvino, not tensorflow).
Runtimes (each an optional package; tensorflow always works): tensorflow, onnxruntime, openvino,
litert (see `anime_gan.inference.runners`), and auto: the fastest runtime this machine has measured
at the precision (float32: at >= ACCURATE_DB from TensorFlow float32), from the table `runtimes.json`
in the cache folder. Its entries are keyed by the CPU's model name, the machine architecture, the
installed runtimes' versions, the generator architecture (v1/v2) and the precision
(constants.PRECISIONS; constants.RUNTIME_PRECISIONS says which runtime runs which); `make bench`
writes them (section runtimes), and when this machine has none, `auto` measures the installed
runtimes once on a 256x256 image (a few seconds, logged) and writes the entry. `auto` never picks
litert (its runner returns uint8 only, so its accuracy is not measured).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import platform
import statistics
import time

import numpy as np

from anime_gan import constants as C
from anime_gan.errors import ConfigError, ModelError
from anime_gan.inference.runners import (RuntimeStylizer, cache_dir, cached_int8_onnx, cached_onnx, importlib_has,
                                         installed, is_onnx_path, make_runner, read_onnx_metadata, require, threads)
from anime_gan.inference.stylizer import Stylizer
from data_prep.files import write_bytes

log = logging.getLogger(__name__)

ACCURATE_DB = 60.0  # "float-accurate": PSNR from TensorFlow float32 on [-1, 1] (peak-to-peak 2)
CALIBRATION_SIZE = 256
CALIBRATION_REPEATS = 3
TABLE_NAME = "runtimes.json"


# ---------------------------------------------------------------------------------------------
# Loading: one dispatch for every model form and runtime


def stylizer_from_generator(generator, max_side=C.DEFAULT_MAX_SIDE, source="Generator"):
    """A TensorFlow `Stylizer` over a Generator: batches that fit the memory budget run whole through a
    plain graph of G, larger images through its bounded (banded) serving graph."""
    from anime_gan.deploy.saved_model import StylizeModule

    module = StylizeModule(generator, max_side=max_side)
    return Stylizer(module, max_side, source, keep_alive=module)


def stylizer_from_saved_model(path):
    """A TensorFlow `Stylizer` running a SavedModel's serving signature, with the cap it was exported with."""
    import tensorflow as tf

    from anime_gan.deploy.saved_model import IMAGES_KEY, SERVING_SIGNATURE

    loaded = tf.saved_model.load(str(path))
    if SERVING_SIGNATURE not in loaded.signatures:
        raise ModelError(f"the SavedModel at {path} has no {SERVING_SIGNATURE} signature; re-export it.")
    fn = loaded.signatures[SERVING_SIGNATURE]
    variable = getattr(loaded, "max_side_variable", None)
    max_side = int(variable.numpy()) if variable is not None else C.DEFAULT_MAX_SIDE
    return Stylizer(lambda x: fn(images=x)[IMAGES_KEY], max_side, str(path), keep_alive=loaded)


def saved_model_cap(directory):
    """The max_side a SavedModel was exported with, read from its variables (no graph loaded)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(pathlib.Path(directory) / "variables" / "variables"))
        key = "max_side_variable/.ATTRIBUTES/VARIABLE_VALUE"
        return int(reader.get_tensor(key)) if reader.has_tensor(key) else None
    except Exception:  # noqa: BLE001 - an older SavedModel: the default cap
        return None


def check_precision(runtime, precision):
    """ConfigError (one sentence naming what works) unless `runtime` can run `precision`."""
    if precision not in C.PRECISIONS:
        raise ConfigError(f"--precision={precision} is not one of {', '.join(C.PRECISIONS)}.")
    if runtime != "auto" and precision not in C.RUNTIME_PRECISIONS[runtime]:
        where = [r for r in C.RUNTIMES[1:] if precision in C.RUNTIME_PRECISIONS[r]]
        raise ConfigError(f"--runtime={runtime} runs {' and '.join(C.RUNTIME_PRECISIONS[runtime])} only; "
                          f"{precision} runs in {' or '.join(where)} (or --runtime=auto).")


def default_runtime(precision):
    """The runtime used when none is named: TensorFlow for float32 (exact, bounded memory), else "auto"
    (the fastest runtime measured here at that precision)."""
    return "tensorflow" if precision == "float32" else "auto"


def load_model(path, max_side=None, runtime=None, precision="float32", calibration_dir=None):
    """A `Stylizer` running `path` in `runtime` (one of constants.RUNTIMES) at `precision` (one of
    constants.PRECISIONS; constants.RUNTIME_PRECISIONS says which runtime runs which). Errors are one
    sentence (PathNotFoundError / ModelError / ConfigError).

    path: any model `anime_gan.load_generator` accepts (see constants.MODEL_FORMS), or an exported .onnx
    file (run by "auto" unless onnxruntime or openvino is named: TensorFlow cannot run ONNX).
    A SavedModel or an ONNX file keeps the size cap it was exported with; for everything else
    max_side is the cap (default constants.DEFAULT_MAX_SIDE). runtime None: `default_runtime(precision)`;
    "auto": the fastest
    float-accurate runtime measured on this machine at that precision (see `choose`). int8: the
    convolutions quantised once, calibrated on calibration_dir's photos (default scikit-image's
    sample photos) and cached (`anime_gan.inference.runners.cached_int8_onnx`).
    """
    from anime_gan.weights import load_generator, resolve_model

    runtime = default_runtime(precision) if runtime is None else runtime
    if runtime not in C.RUNTIMES:
        raise ConfigError(f"--runtime={runtime} is not one of {', '.join(C.RUNTIMES)}.")
    if is_onnx_path(path):
        runtime = "auto" if runtime == "tensorflow" else runtime  # TensorFlow cannot run ONNX
        check_precision(runtime, precision)
        return _load_onnx_file(pathlib.Path(os.fspath(path)).expanduser(), runtime, precision, calibration_dir)
    check_precision(runtime, precision)
    if runtime not in ("tensorflow", "auto"):
        require(runtime)
    expanded = pathlib.Path(os.fspath(path)).expanduser()
    source = resolve_model(expanded)
    if runtime == "tensorflow" and source.kind == "saved_model":
        return stylizer_from_saved_model(source.path)
    if runtime == "tensorflow":
        return stylizer_from_generator(load_generator(source), max_side or C.DEFAULT_MAX_SIDE, str(expanded))
    cap = (saved_model_cap(source.path) if source.kind == "saved_model" else None) or max_side \
        or C.DEFAULT_MAX_SIDE
    generator = load_generator(source)
    if runtime == "auto":
        runtime = choose(generator.arch, generator=generator, precision=precision, calibration_dir=calibration_dir)
        if runtime == "tensorflow":
            return stylizer_from_generator(generator, cap, str(path))
    onnx_path = cached_onnx(generator) if runtime in ("onnxruntime", "openvino") else None
    if precision == "int8":
        onnx_path = cached_int8_onnx(onnx_path, calibration_dir)
    return RuntimeStylizer(make_runner(runtime, onnx_path, generator, precision), cap, str(path), runtime, precision)


def _load_onnx_file(path, runtime, precision, calibration_dir):
    if runtime == "litert":
        raise ConfigError(f"{path} is an ONNX model: run it with --runtime=onnxruntime, openvino or auto, or "
                          "pass the TensorFlow model it was exported from.")
    if runtime != "auto":
        require(runtime)
    elif not (installed("onnxruntime") or installed("openvino")):
        raise ConfigError(f"{path} is an ONNX model and neither onnxruntime nor openvino is installed; pip "
                          "install 'anime-gan-tf2[onnx]' or pass the TensorFlow model it was exported from.")
    if not importlib_has("onnx"):
        raise ConfigError("onnx is not installed; pip install 'anime-gan-tf2[onnx]' to read .onnx models.")
    meta = read_onnx_metadata(path)
    cap = int(meta.get("max_side", C.DEFAULT_MAX_SIDE))
    if meta.get("precision", "float32") == "int8":
        if precision != "int8":
            raise ConfigError(f"{path} is an int8 model; run it with --precision=int8 or pass its float model.")
    elif precision == "int8":
        path = cached_int8_onnx(path, calibration_dir)
    if runtime == "auto":
        runtime = choose(meta.get("arch", "v1"), onnx_path=path, precision=precision)
    return RuntimeStylizer(make_runner(runtime, path, precision=precision), cap, str(path), runtime, precision)


# ---------------------------------------------------------------------------------------------
# The measured table and `auto`


def table_path():
    """Where this machine's measured runtimes are kept: runtimes.json in the cache folder."""
    return cache_dir() / TABLE_NAME


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
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


def machine_key(arch, precision="float32"):
    """The table key: CPU model name, machine architecture, threads, runtime versions, generator arch,
    and the precision unless float32 (so the float32 keys of earlier tables still count)."""
    v = versions()
    parts = [cpu_name(), platform.machine(), f"{threads()} threads", ", ".join(f"{k} {v[k]}" for k in sorted(v)),
             f"arch {arch}"]
    return " | ".join(parts + ([] if precision == "float32" else [precision]))


def read_table(path=None):
    """The measured table ({} when there is none; an unreadable one is ignored with a warning)."""
    path = pathlib.Path(path or table_path())
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring the unreadable runtime table %s; it will be measured again.", path)
        return {}
    return table if isinstance(table, dict) else {}


def record(arch, measurements, source, path=None, size=None, precision="float32"):
    """Store {runtime: {"ms": median ms, "db": PSNR from TF float32}} as this machine's entry for arch
    at precision; size: "WxH" measured (default the calibration size)."""
    path = pathlib.Path(path or table_path())
    table = read_table(path)
    key = machine_key(arch, precision)
    table[key] = {
        "cpu": cpu_name(), "arch": arch, "precision": precision, "versions": versions(), "source": source,
        "size": size or f"{CALIBRATION_SIZE}x{CALIBRATION_SIZE}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runtimes": measurements,
    }
    write_bytes(path, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return table[key]


def fastest(entry, candidates=None):
    """The fastest runtime of a table entry among the installed candidates: at float32, of those at
    >= ACCURATE_DB (TensorFlow float32 is the reference; "tensorflow" when none qualifies); at a
    reduced precision, of those that ran (the precision was asked for; its dB is shown, not judged)."""
    precision = entry.get("precision", "float32")
    candidates = candidates or [r for r in C.RUNTIMES[1:] if installed(r) and precision in C.RUNTIME_PRECISIONS[r]]
    timed = [(m["ms"], name) for name, m in entry.get("runtimes", {}).items()
             if name in candidates and m.get("ms") is not None
             and (precision != "float32" or name == "tensorflow" or (m.get("db") is not None and m["db"] >= ACCURATE_DB))]
    return min(timed)[1] if timed else "tensorflow" if precision == "float32" else None


def how_chosen(entry):
    """The sentence `python -m anime_gan.runtimes` prints under an entry: what auto picks and why."""
    precision = entry.get("precision", "float32")
    choice = fastest(entry, list(entry.get("runtimes", {})))
    rule = (f"the fastest at >= {ACCURATE_DB:g} dB from TensorFlow float32" if precision == "float32"
            else f"the fastest that runs {precision} (dB from TensorFlow float32, shown, not judged)")
    return (f"auto at {precision} picks {choice}: {rule}, measured by {entry.get('source')} at {entry.get('size')} "
            f"on {entry.get('date')}")


def _onnx_runtimes():
    """The installed runtimes that run ONNX files."""
    return [r for r in ("onnxruntime", "openvino") if installed(r)]


def candidates_for(precision, onnx_file=False):
    """The installed runtimes `auto` chooses from at precision (litert never: uint8 out only)."""
    out = [r for r in (["tensorflow"] + _onnx_runtimes()) if precision in C.RUNTIME_PRECISIONS[r]]
    if onnx_file:
        return [r for r in out if r != "tensorflow"]
    if not importlib_has("tf2onnx"):
        return [r for r in out if r == "tensorflow"]
    return out


def choose(arch, generator=None, onnx_path=None, path=None, precision="float32", calibration_dir=None):
    """`auto`: the runtime this machine's table says is fastest at precision, measuring it first when
    absent (logged); ConfigError when no installed runtime runs that precision."""
    candidates = candidates_for(precision, onnx_file=onnx_path is not None)
    if not candidates:
        where = [r for r in C.RUNTIMES[1:-1] if precision in C.RUNTIME_PRECISIONS[r]]
        raise ConfigError(f"--precision={precision} runs in {' or '.join(where)}, and none is installed here with "
                          "tf2onnx; pip install 'anime-gan-tf2[onnx]' or 'anime-gan-tf2[openvino]'.")
    if len(candidates) == 1:
        runtime = candidates[0]
    else:
        runtime = _fastest_measured(arch, candidates, generator, onnx_path, path, precision, calibration_dir)
    log.info("--runtime=auto: %s at %s (the fastest measured in %s).", runtime, precision, path or table_path())
    return runtime


def _fastest_measured(arch, candidates, generator, onnx_path, path, precision, calibration_dir):
    entry = read_table(path).get(machine_key(arch, precision))
    if entry is None or not set(candidates) <= set(entry.get("runtimes", {})):
        log.info("no measured runtime table for this machine (%s) at %s in %s: timing %s once on a %dx%d image "
                 "...", cpu_name(), precision, path or table_path(), ", ".join(candidates), CALIBRATION_SIZE,
                 CALIBRATION_SIZE)
        measurements = calibrate(candidates, generator=generator, onnx_path=onnx_path, precision=precision,
                                 calibration_dir=calibration_dir)
        entry = record(arch, measurements, "calibration", path=path, precision=precision)
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


def _tensorflow_runners(generator):
    """(uint8 runner, float32 [-1, 1] runner) of a generator in TensorFlow, the accuracy reference."""
    import tensorflow as tf

    from anime_gan.deploy.saved_model import IMAGES_KEY, StylizeModule, float32_generator, generate
    from anime_gan.image_io import images_to_unit_range

    g32 = float32_generator(generator)
    module = StylizeModule(g32)
    return (lambda images: module.serving_default(tf.constant(images))[IMAGES_KEY].numpy(),
            lambda images: generate(g32, images_to_unit_range(images)).numpy())


def calibrate(candidates, generator=None, onnx_path=None, repeats=CALIBRATION_REPEATS, precision="float32",
              calibration_dir=None):
    """{runtime: {"ms", "db"}} of each candidate at precision on the calibration image: interleaved
    medians; dB from TensorFlow float32 (from onnxruntime float32 when only an ONNX file is given; an
    int8 file has no float reference here: None)."""
    x = calibration_image()
    runners, floats = {}, {}
    reference = None
    if generator is not None:
        runners["tensorflow"], floats["tensorflow"] = _tensorflow_runners(generator)
        reference = floats["tensorflow"]
        if any(r in candidates for r in ("onnxruntime", "openvino")):
            onnx_path = cached_onnx(generator)
    elif onnx_path is not None and read_onnx_metadata(onnx_path).get("precision", "float32") == "float32" \
            and installed("onnxruntime"):
        reference = make_runner("onnxruntime", onnx_path).unit_range
    if precision == "int8" and onnx_path is not None \
            and read_onnx_metadata(onnx_path).get("precision", "float32") != "int8":
        onnx_path = cached_int8_onnx(onnx_path, calibration_dir)
    for name in candidates:
        if name == "tensorflow":
            continue
        runner = make_runner(name, onnx_path, generator, precision)
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
    expected = reference(x) if reference is not None else None
    out = {}
    for name in runners:
        db = None
        if expected is not None and floats.get(name) is not None:
            db = round(min(psnr_db(expected, floats[name](x)), 999.0), 1)
        out[name] = {"ms": round(statistics.median(times[name]), 1), "db": db}
    return out


def calibrate_model(model, precisions=C.PRECISIONS):
    """Measures the installed runtimes on `model` (anything load_generator reads) at each precision
    that has two candidates or more, and records the entries; returns them {precision: entry}."""
    from anime_gan.weights import load_generator

    generator = load_generator(model)
    entries = {}
    for precision in precisions:
        candidates = candidates_for(precision)
        if len(candidates) > 1:
            measured = calibrate(candidates, generator=generator, precision=precision)
            entries[precision] = record(generator.arch, measured, "calibration", precision=precision)
    return entries


def format_table(table):
    """The table as readable lines, one block per entry (per precision), fastest first, the `auto`
    choice marked and how it was chosen said."""
    if not table:
        return f"no runtime measurements yet in {table_path()} (run `make bench` or `--runtime=auto` once)."
    lines = []
    here_keys = {machine_key(a, p) for a in C.ARCHITECTURES for p in C.PRECISIONS}
    for key, entry in sorted(table.items()):
        here = key in here_keys
        lines.append(f"{key}{'  (this machine)' if here else ''}")
        lines.append(f"  {how_chosen(entry)}")
        choice = fastest(entry, list(entry.get("runtimes", {})))
        for name, m in sorted(entry.get("runtimes", {}).items(), key=lambda kv: kv[1].get("ms") or 1e12):
            reference = name == "tensorflow" and entry.get("precision", "float32") == "float32"
            db = "reference" if reference else (f"{m['db']} dB" if m.get("db") is not None else "? dB")
            mark = "  <- auto" if name == choice else ""
            lines.append(f"  {name:12s} {m.get('ms')} ms  {db}{mark}")
    return "\n".join(lines)
