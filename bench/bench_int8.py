"""int8 against float32: the model alone and the 720p video pipeline end to end.

    python -m bench --sections=int8 [--quick]
    python -m bench.bench_int8          # prints JSON rows (quick)

Model rows, per architecture, at 720x1280 (--quick: 256x256), interleaved medians in one process, batch
1: TensorFlow float32 (what `stylize` runs by default) and int8 in ONNX Runtime and OpenVINO
(`load_model(..., precision="int8")`: the convolutions quantised by `anime_gan.deploy.quantize`,
calibrated on scikit-image's sample photos, cached like every conversion). db: PSNR of the float [-1, 1]
output against our float32 generator on real photos not used for calibration (motorcycle_left and
hubble_deep_field, fitted to the size). v2 runs the real AnimeGANv2 Hayao weights when the
maintainers' reference is here, else seeded random weights (the row says which); v1 always has
random weights, on which int8 scores far lower (nothing in them is smooth the way trained filters
are): judge accuracy on the real weights. The int8 entries of the `auto` table are written too.

Pipeline rows (full run only): frames/s of `stylize_video` on a 720p H.264 + AAC clip (decode ->
stylize -> encode) against the model alone on the same frames, for float32 and for the fastest int8.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

import numpy as np

from bench.common import interleaved_timings

SIZE = (720, 1280)
QUICK_SIZE = (256, 256)
VIDEO_FRAMES = 6
EVAL_PHOTOS = ("motorcycle_left.png", "hubble_deep_field.jpg")


def generators():
    """{arch: (generator, what its weights are)}."""
    import keras

    from anime_gan.nets import build_generator
    from references import v2_reference as R

    out = {}
    keras.utils.set_random_seed(0)
    out["v1"] = (build_generator("float32"), "random weights (seed 0)")
    if os.path.isfile(R.REFERENCE_V2):
        g = R.official_generator()
        out["v2"] = (g, "real AnimeGANv2 Hayao weights")
    else:
        out["v2"] = (build_generator("float32", arch="v2"), f"random weights (seed 0): {R.SKIP_REASON}")
    return out


def photos(height, width):
    """Real photos (scikit-image's, not the calibration ones) fitted to height x width, uint8 [N, H, W, 3]."""
    from anime_gan.deploy.tflite import fit_photo
    from references import v2_reference as R

    return np.stack([fit_photo(p, height, width) for p in R.photos(size=512, names=EVAL_PHOTOS)])


def stylizers(generator, workdir):
    """{name: Stylizer}: TensorFlow float32 and int8 in each installed ONNX runtime."""
    from anime_gan import save_generator
    from anime_gan.inference import load_model, runners

    path = pathlib.Path(workdir) / generator.arch
    save_generator(generator, path)
    out = {"tensorflow float32": load_model(path)}
    for runtime in ("onnxruntime", "openvino"):
        if runners.installed(runtime):
            out[f"{runtime} int8"] = load_model(path, runtime=runtime, precision="int8")
    return out


def model_rows(arch, generator, weights, size, repeats, workdir):
    """Rows of the model alone; returns (rows, {runtime: {"ms", "db"}} of int8 for the table)."""
    from anime_gan.deploy.saved_model import generate
    from anime_gan.image_io import images_to_unit_range
    from anime_gan.inference.runtimes import psnr_db

    h, w = size
    runs = stylizers(generator, workdir)
    x = photos(h, w)
    one = x[:1]
    if "openvino int8" in runs:
        runs["openvino int8"].runner.seen.add(one.shape)  # compiled for the shape from the first call, as a video runs
    times = interleaved_timings({name: (lambda s=s: s(one)) for name, s in runs.items()}, repeats=repeats,
                                warmup=1)
    reference = np.concatenate([generate(generator, images_to_unit_range(im[None])).numpy() for im in x])
    base = times["tensorflow float32"][0]
    rows, measured = [], {}
    for name, stylizer in runs.items():
        ms, cpu_ms = times[name]
        row = {"case": f"{arch} {name} {w}x{h}", "arch": arch, "size": f"{w}x{h}", "runtime": name,
               "weights": weights, "median_ms": round(ms, 1), "cpu_ms": round(cpu_ms, 1),
               "ratio_to_tf_float32": round(ms / base, 3)}
        if name == "tensorflow float32":
            row["db_vs_float32"] = "reference"
        else:
            unit = stylizer.runner.unit_range
            db = min(psnr_db(reference[i:i + 1], unit(x[i:i + 1])) for i in range(len(x)))
            row["db_vs_float32"] = round(db, 1)
            measured[name.split()[0]] = {"ms": round(ms, 1), "db": round(db, 1)}
        rows.append(row)
    return rows, measured, runs


def pipeline_rows(runs, size, workdir):
    """frames/s end to end (decode -> stylize -> encode) and of the model alone, float32 and the fastest int8."""
    from anime_gan import inference
    from bench.bench_serving import decoded_frames, noise_photos, write_video

    h, w = size
    clip = pathlib.Path(workdir) / "clip.mp4"
    write_video(clip, noise_photos(VIDEO_FRAMES, h, w, seed=1), 12, VIDEO_FRAMES / 12)
    frames = np.stack([f.to_ndarray(format="rgb24") for f in decoded_frames(clip)])
    rows = []
    for name, stylizer in runs.items():
        start = time.perf_counter()
        for frame in frames:
            stylizer(frame[None])
        model = len(frames) / (time.perf_counter() - start)
        start = time.perf_counter()
        inference.stylize_video(stylizer, clip, pathlib.Path(workdir) / f"{name.replace(' ', '_')}.mp4", batch_size=1)
        e2e = len(frames) / (time.perf_counter() - start)
        rows.append({"case": f"video {w}x{h} {VIDEO_FRAMES} frames, {name}", "runtime": name,
                     "frames_per_s": round(e2e, 3), "model_only_frames_per_s": round(model, 3),
                     "ratio": round(e2e / model, 3), "load_avg_1min": round(os.getloadavg()[0], 1)})
    return rows


def run(repeats=None, quick=False):
    import gc

    from anime_gan.inference import runtimes

    repeats = repeats or (2 if quick else 3)
    size = QUICK_SIZE if quick else SIZE
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as workdir:
        for arch, (generator, weights) in generators().items():
            arch_rows, measured, runs = model_rows(arch, generator, weights, size, repeats, workdir)
            rows += arch_rows
            if len(measured) > 1:
                entry = runtimes.record(arch, measured, "bench", size=f"{size[1]}x{size[0]}", precision="int8")
                rows.append({"case": f"auto table {arch} int8", "arch": arch,
                             "runtime": f"auto -> {runtimes.fastest(entry, list(measured))}"})
            if not quick and arch == "v2":
                fastest = min(measured, key=lambda r: measured[r]["ms"])
                rows += pipeline_rows({k: runs[k] for k in ("tensorflow float32", f"{fastest} int8")}, size, workdir)
            del runs
            gc.collect()
    return [{"section": "int8", **r} for r in rows]


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=1))
