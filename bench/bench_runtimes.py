"""Inference runtimes side by side: the official TF1 graph, ours in TensorFlow float32, ONNX Runtime,
OpenVINO f32 and LiteRT float32 (256x256 only: the TFLite export has a fixed size and converting a
720p one took ~8 GB; its runner gives uint8 only, so its agreement is in levels), for AnimeGAN (v1) and
AnimeGANv2, at 256x256 and (full run only) 720x1280; medians of interleaved calls in one process.

    python -m bench --sections=runtimes [--quick]
    python -m bench.bench_runtimes          # prints JSON rows

Each runtime runs what `--runtime=NAME` runs: uint8 [1, H, W, 3] in, uint8 out (ours: the serving
signature; the others: the ONNX/TFLite export). The official graph takes the same image in [-1, 1].
accuracy_db: PSNR of the float [-1, 1] output against our float32 generator in the same process.
ratio_to_official: to the official v1 graph at the same size; it has no v2, so the v2 rows are also
divided by the v1 graph's time (a yardstick for the machine, not a like-for-like comparison).
The fastest float-accurate runtime of the largest size measured is written to the `auto` table
(`anime_gan.inference.runtimes`, source "bench").
"""

from __future__ import annotations

import json
import tempfile

import numpy as np

from bench.common import interleaved_timings

SIZES = [(256, 256), (720, 1280)]


def seeded_generators():
    """(the official variables' seeded values, {"v1": Generator with them, "v2": a seeded GeneratorV2})."""
    import keras

    from anime_gan.nets import Generator, build_generator
    from references.official_graph import random_official_weights
    from anime_gan.weights import tf1_to_generator

    probe = Generator()
    probe.build()
    values = random_official_weights({n: tuple(v.shape) for n, v in probe.tf1_variable_map().items()}, seed=0)
    v1 = tf1_to_generator(values, build_generator("float32"))
    keras.utils.set_random_seed(0)
    v2 = build_generator("float32", arch="v2")
    return values, {"v1": v1, "v2": v2}


def _runners(generator, workdir):
    """{name: (uint8 -> uint8, uint8 -> float [-1, 1] or None)} for each installed runtime."""
    import tensorflow as tf

    from anime_gan.inference import runners
    from anime_gan.image_io import images_to_unit_range
    from anime_gan.deploy.saved_model import IMAGES_KEY, StylizeModule, generate

    module = StylizeModule(generator, max_side=4096)
    out = {"tensorflow": (lambda x: module.serving_default(tf.constant(x))[IMAGES_KEY].numpy(),
                          lambda x: generate(generator, images_to_unit_range(x)).numpy())}
    notes = []
    if runners.installed("onnxruntime") or runners.installed("openvino"):
        from anime_gan.deploy.onnx import to_onnx

        path = f"{workdir}/{generator.arch}.onnx"
        with open(path, "wb") as f:
            f.write(to_onnx(generator).SerializeToString())
        for name in ("onnxruntime", "openvino"):
            if runners.installed(name):
                runner = runners.make_runner(name, path)
                out[name] = (runner, runner.unit_range)
    return out, notes


def _litert(generator, workdir, height, width):
    """LiteRT float32 (XNNPACK) at one size (the TFLite export has a fixed size), or a note why not."""
    from anime_gan.inference import runners

    if not runners.installed("litert"):
        return None, None
    try:
        from anime_gan.deploy.tflite import TFLiteRunner, write_tflite

        path = f"{workdir}/{generator.arch}-{height}x{width}.tflite"
        write_tflite(generator, path, precision="float32", height=height, width=width)
        return TFLiteRunner(path, threads=runners.threads()), None
    except Exception as e:  # noqa: BLE001 - another module's failure is a note, not a lost section
        return None, f"litert {generator.arch} {width}x{height} skipped: {type(e).__name__}: {str(e).splitlines()[0]}"


def run(repeats=None, quick=False, sizes=None):
    """Rows of {case, arch, size, runtime, median_ms, cpu_ms, ratio_to_official, accuracy_db}.

    One architecture at a time (its runtimes, then freed), so that at 720p the process stays under
    ~6 GB; the official graph is timed with each, interleaved.
    """
    import gc

    from anime_gan.inference import runtimes
    from references.official_graph import OFFICIAL_META, OfficialGenerator

    repeats = repeats or (3 if quick else 5)
    sizes = sizes or ([(256, 256)] if quick else SIZES)
    values, generators = seeded_generators()
    official = None
    if OFFICIAL_META.exists():
        official = OfficialGenerator(OFFICIAL_META)
        official.assign(values)
    rows, notes, largest = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as workdir:
        for arch, g in generators.items():
            runners, arch_notes = _runners(g, workdir)
            notes += arch_notes
            for h, w in sizes:
                large = h * w > 256 * 256
                if large:
                    notes.append(f"litert {arch} {w}x{h} not timed here: converting a TFLite model of that size "
                                 "alone took ~8 GB (see the TFLite export's own measurements)")
                else:
                    runner, note = _litert(g, workdir, h, w)
                    if runner is not None:
                        runners["litert"] = (runner, None)
                    if note:
                        notes.append(note)
                x = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
                if "openvino" in runners:
                    # The model compiled for this shape from the first call (as a video runs after its
                    # first frame), without a dynamic-shape run beside it: at 720p both took ~1 GB more.
                    runners["openvino"][0].seen.add(x.shape)
                x_float = x.astype(np.float32) / 127.5 - 1.0
                timed = {}
                if official is not None:
                    timed["official graph"] = lambda: official(x_float)
                for name, (fn, _) in runners.items():
                    timed[name] = lambda fn=fn: fn(x)
                n = max(3, repeats // 2) if large else repeats
                times = interleaved_timings(timed, repeats=n, warmup=1 if large else 2)
                reference = runners["tensorflow"][1](x)
                ours_uint8 = runners["tensorflow"][0](x).astype(int)
                base = times["official graph"][0] if official is not None else None
                if official is not None:
                    rows.append({"case": f"official graph (with {arch}) {w}x{h}", "arch": "v1", "size": f"{w}x{h}",
                                 "runtime": "official TF1 graph", "median_ms": round(base, 1),
                                 "cpu_ms": round(times["official graph"][1], 1), "ratio_to_official": 1.0,
                                 "accuracy_db": _db(reference, official(x_float)) if arch == "v1" else None})
                measured = {}
                for name, (fn, to_float) in runners.items():
                    ms, cpu_ms = times[name]
                    row = {"case": f"{arch} {name} {w}x{h}", "arch": arch, "size": f"{w}x{h}",
                           "runtime": name + (" f32" if name == "openvino" else ""),
                           "median_ms": round(ms, 1), "cpu_ms": round(cpu_ms, 1)}
                    if base:
                        row["ratio_to_official"] = round(ms / base, 3)
                    db = None
                    if name == "tensorflow":
                        row["accuracy_db"] = "reference"
                    elif to_float is not None:
                        db = row["accuracy_db"] = _db(reference, to_float(x))
                    else:  # uint8 out only: the agreement in levels with our uint8 output
                        theirs = fn(x).astype(int)
                        row["uint8_vs_ours"] = (f"max {int(np.abs(theirs - ours_uint8).max())} levels, "
                                                f"{100 * np.mean(theirs == ours_uint8):.2f}% equal")
                    if arch == "v2" and base:
                        row["note"] = "ratio to the official v1 graph (there is no official v2 graph here)"
                    rows.append(row)
                    measured[name] = {"ms": round(ms, 1), "db": db}
                largest[arch] = (f"{w}x{h}", measured)
                runners.pop("litert", None)
                gc.collect()
            del runners
            gc.collect()
    for arch, (size, measured) in largest.items():
        entry = runtimes.record(arch, measured, "bench", size=size)
        rows.append({"case": f"auto table {arch}", "arch": arch, "size": entry["size"],
                     "runtime": f"auto -> {runtimes.fastest(entry, list(measured))}",
                     "note": f"written to {runtimes.table_path()}"})
    for note in notes:
        rows.append({"case": "note", "note": note})
    if official is not None:
        official.close()
    else:
        rows.append({"case": "official graph", "note": f"skipped: {OFFICIAL_META} not found"})
    return [{"section": "runtimes", **r} for r in rows]


def _db(reference, y):
    from anime_gan.inference.runtimes import psnr_db

    return round(min(psnr_db(reference, y), 999.0), 1)


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=1))
