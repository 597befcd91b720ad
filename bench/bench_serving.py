"""Latency of the exported SavedModel's `serving_default` (uint8 in, uint8 out, one image per call).

    python -m bench.bench_serving          # prints JSON

`bench_serving()` returns {"serving_default_256x256_ms": median, "serving_default_1280x720_ms": median}
measured on a SavedModel exported from a randomly initialised generator (weights do not change the
cost) and loaded back with plain `tf.saved_model.load`, as TF Serving would run it.

`bench_pipelines()` times `python -m anime_gan.stylize` end to end on a folder of PNG photos and on
a video with a sound track (H.264 + AAC, made here with PyAV), each against the model alone on the
same pixels in the same process (the same Stylizer, batches of the same size), interleaved:
end-to-end images/s over model-only images/s is the share of the model's speed a user gets.
"""

from __future__ import annotations

import json
import os
import tempfile

from bench.common import median_ms

SIZES = {"256x256": (256, 256), "1280x720": (720, 1280)}  # name: (height, width)


def bench_serving(repeats=5, large_repeats=3, saved_model_dir=None):
    """Median milliseconds per call of serving_default at 256x256 and 1280x720 (batch 1)."""
    import numpy as np
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        if saved_model_dir is None:
            from anime_gan.nets.generator import Generator
            from anime_gan.deploy.saved_model import export_saved_model

            generator = Generator()
            generator.build()
            saved_model_dir = export_saved_model(generator, f"{tmp}/saved_model")
        model = tf.saved_model.load(str(saved_model_dir))
        serve = model.signatures["serving_default"]
        rng = np.random.default_rng(0)
        results = {}
        for name, (h, w) in SIZES.items():
            images = tf.constant(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
            n = repeats if h * w <= 256 * 256 else large_repeats
            # One warm-up call: the first call at a new shape builds its kernels.
            ms = median_ms(lambda: serve(images=images)["images"].numpy(), repeats=n, warmup=1)
            results[f"serving_default_{name}_ms"] = round(ms, 1)
    return results


FOLDER = {"photos": 24, "size": (512, 512)}  # quick: 8 photos of 256x256
VIDEO = {"frames": 60, "size": (256, 256), "fps": 24}  # quick: 16 frames
BATCH_SIZE = 4


def noise_photos(count, height, width, seed=0):
    """Smooth random pictures plus pixel noise (a photo compresses like this, not like white noise)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3)).astype(np.float32)
        fine = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(np.clip(fine + rng.normal(0, 12, fine.shape), 0, 255).astype(np.uint8))
    return out


def write_video(path, frames, fps, seconds_of_sound):
    """frames at fps in H.264 with an AAC sine track, in MP4."""
    import av
    import numpy as np

    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=fps)
    video.height, video.width = frames[0].shape[:2]
    video.pix_fmt = "yuv420p"
    audio = out.add_stream("aac", rate=44100)
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    t = np.arange(int(seconds_of_sound * 44100)) / 44100
    sine = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    for start in range(0, sine.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(sine[:, start:start + 1024]), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts = 44100, start
        out.mux(audio.encode(frame))
    out.mux(audio.encode(None))
    out.close()


def bench_pipelines(repeats=2, quick=False):
    """[{case, images_per_s, model_only_images_per_s, ratio}] for a folder and a video (medians of
    `repeats` interleaved runs after one warm-up batch), with the load average while they ran."""
    import pathlib
    import statistics
    import time

    import keras
    import numpy as np

    from anime_gan import image_io, inference
    from anime_gan.nets.generator import Generator

    keras.utils.set_random_seed(0)  # seeded weights (the cost does not depend on them)
    generator = Generator()
    generator.build()
    stylizer = inference.get_model(generator)
    folder = dict(FOLDER, photos=8, size=(256, 256)) if quick else FOLDER
    clip = dict(VIDEO, frames=16) if quick else VIDEO
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        photos = noise_photos(folder["photos"], *folder["size"])
        for i, photo in enumerate(photos):
            image_io.write_image(tmp / "photos" / f"p{i:03d}.png", photo)
        frames = noise_photos(clip["frames"], *clip["size"], seed=1)
        write_video(tmp / "clip.mp4", frames, clip["fps"], clip["frames"] / clip["fps"])
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in decoded_frames(tmp / "clip.mp4")])
        cases = {
            f"folder: {folder['photos']} PNG photos {folder['size'][1]}x{folder['size'][0]}": (
                np.stack(photos), lambda: inference.stylize_images(
                    stylizer, inference.folder_jobs(tmp / "photos", tmp / "out")[0], BATCH_SIZE)),
            f"video: {clip['frames']} frames {clip['size'][1]}x{clip['size'][0]} H.264 + AAC, {clip['fps']} fps": (
                decoded, lambda: inference.stylize_video(stylizer, tmp / "clip.mp4", tmp / "anime.mp4", BATCH_SIZE)),
        }
        for case, (pixels, end_to_end) in cases.items():
            def model_only(pixels=pixels):
                for start in range(0, len(pixels), BATCH_SIZE):
                    stylizer(pixels[start:start + BATCH_SIZE])

            stylizer(pixels[:BATCH_SIZE])  # warm-up: the first call at a shape builds its kernels
            times = {"model": [], "end_to_end": []}
            load = []
            for _ in range(repeats):
                for name, fn in (("model", model_only), ("end_to_end", end_to_end)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
                load.append(os.getloadavg()[0])
            model_rate = len(pixels) / statistics.median(times["model"])
            e2e_rate = len(pixels) / statistics.median(times["end_to_end"])
            rows.append({"case": case + f", batch {BATCH_SIZE}", "images_per_s": round(e2e_rate, 3),
                         "model_only_images_per_s": round(model_rate, 3), "ratio": round(e2e_rate / model_rate, 3),
                         "load_avg_1min": round(statistics.median(load), 1)})
    return rows


def decoded_frames(path):
    import av

    with av.open(str(path)) as container:
        yield from container.decode(video=0)


def run(repeats=None, quick=False):
    """Rows for `python -m bench` (quick: 3 repeats; the folder and video rows: smaller inputs, 1 repeat)."""
    results = bench_serving(repeats=repeats or (3 if quick else 5))
    rows = [
        {"section": "serving", "case": f"SavedModel serving_default {name} (uint8, batch 1)",
         "ms": results[f"serving_default_{name}_ms"]}
        for name in SIZES
    ]
    return rows + bench_pipelines(repeats=1 if quick else min(repeats or 2, 3), quick=quick)


if __name__ == "__main__":
    import sys

    if "--pipelines" in sys.argv:  # only the folder and video rows (--quick: the small ones)
        print(json.dumps(bench_pipelines(quick="--quick" in sys.argv), indent=2))
    else:
        print(json.dumps(bench_serving(), indent=2))
