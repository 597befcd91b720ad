"""`anime_gan.inference.video` and the pipelined folder path of `anime_gan.stylize`: videos keep their sound,
timing, frame count and size; folders give the same files as the one-step-after-the-other path, with
decoding and writing overlapping the model.

Most tests use a NumPy stand-in for the model (any callable uint8 [N,H,W,3] -> uint8 with
check_size / max_side / source is a Stylizer), so they take seconds."""

import fractions
import re
import threading
import time

import numpy as np
import pytest

from anime_gan import image_io
from anime_gan import inference
from anime_gan.inference import pipeline
from anime_gan.inference import video
from anime_gan.image_io import ImageError
from helpers import logged, textured, write_rgb

av = pytest.importorskip("av")

SAMPLE_RATE = 44100
AUDIO_SECONDS = 1.2
# Measured on these noisy test frames (pixel noise of sigma 20, the stand-in swapping R and B, so
# 4:2:0 chroma is subsampled anew): 33-34 dB from the stand-in applied to the decoded input frames
# (H.264 and MJPEG inputs at even sizes 31-34 dB, at 63x95 29.6-31 dB); the neighbouring frame's
# result, or the channels swapped, give about 10 dB.
MIN_PSNR_DB = 28.0
FAR_DB = 18.0


class FakeStylizer:
    """A model stand-in: inverts and reverses the channels (so a swapped colour order shows), records
    the batch shapes, and sleeps `seconds_per_image` per image (as a model would take its time)."""

    max_side, source = 4096, "fake"

    def __init__(self, seconds_per_image=0.0):
        self.seconds_per_image = seconds_per_image
        self.shapes = []
        self.lock = threading.Lock()

    def check_size(self, height, width, name="image"):
        if max(height, width) > self.max_side or min(height, width) < 8:
            raise ImageError(f"{name} is {height}x{width} pixels; no.")

    def __call__(self, images):
        images = np.asarray(images)
        with self.lock:
            self.shapes.append(images.shape)
        time.sleep(self.seconds_per_image * len(images))
        return 255 - images[..., ::-1]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def make_video(path, frames, rate=fractions.Fraction(25, 2), codec="libx264", audio="aac", container_format=None,
               faststart=False):
    """frames (uint8 RGB) at `rate` fps, with AUDIO_SECONDS of a 440 Hz sine (mono, SAMPLE_RATE) in
    `audio` (None: no audio stream)."""
    h, w = frames[0].shape[:2]
    options = {"movflags": "faststart"} if faststart else {}
    out = av.open(str(path), "w", format=container_format, options=options)
    vs = out.add_stream(codec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if audio:
        a = out.add_stream(audio, rate=SAMPLE_RATE)
        a.codec_context.layout = "mono"
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        out.mux(vs.encode(frame))
    out.mux(vs.encode(None))
    if audio:
        t = np.arange(int(AUDIO_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
        signal = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        fmt = a.codec_context.format.name
        step = a.codec_context.frame_size or 1024
        for start in range(0, len(signal), step):
            chunk = signal[start:start + step]
            samples = (chunk * 32767).astype(np.int16)[None] if fmt == "s16" else chunk[None]
            frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            out.mux(a.encode(frame))
        out.mux(a.encode(None))
    out.close()


def decoded_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def audio_packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.duration) for p in c.demux(c.streams.audio[0]) if p.size]


def streams(path):
    """{"video": (codec, frames, rate, width, height, pix_fmt), "audio": (codec, rate, seconds) or None}."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        video = (v.codec_context.name, sum(1 for _ in c.demux(v) if _.size), v.average_rate, v.codec_context.width,
                 v.codec_context.height, v.codec_context.pix_fmt)
    with av.open(str(path)) as c:
        audio = None
        if c.streams.audio:
            a = c.streams.audio[0]
            audio = (a.codec_context.name, a.codec_context.sample_rate, float(a.duration * a.time_base))
    return {"video": video, "audio": audio}


def test_video_keeps_its_sound_frames_fps_and_size(tmp_path):
    frames = [textured((64, 96, 3), seed=200 + i) for i in range(30)]
    clip, out = tmp_path / "clip.mp4", tmp_path / "anime.mp4"
    make_video(clip, frames)
    fake = FakeStylizer()
    with logged("anime_gan.inference") as messages:
        summary = inference.Summary(inputs=1)
        inference.video_job(fake, clip, out, 4, "none", summary, None)
    assert summary.ok and summary.written == [str(out)]
    assert f"wrote 30 frames to {out} (aac audio copied)" in messages

    source, result = streams(clip), streams(out)
    assert result["video"] == ("h264", 30, fractions.Fraction(25, 2), 96, 64, "yuv420p") == source["video"]
    codec, rate, seconds = result["audio"]
    assert (codec, rate) == ("aac", SAMPLE_RATE)
    assert abs(seconds - source["audio"][2]) <= 1024 / SAMPLE_RATE  # one AAC packet
    assert abs(seconds - AUDIO_SECONDS) <= 1024 / SAMPLE_RATE
    assert audio_packets(out) == audio_packets(clip)  # remuxed: the same bytes and timestamps

    inputs, outputs = decoded_frames(clip), decoded_frames(out)
    assert len(outputs) == len(inputs) == 30
    expected = fake(np.stack(inputs))
    assert len(fake.shapes) == 1 + 8  # the call just made, and 8 batches (7 of 4, one of 2)
    scores = [psnr(o, e) for o, e in zip(outputs, expected)]
    assert min(scores) >= MIN_PSNR_DB, scores
    # In order and in RGB order: each frame is far from the next frame's result and from its own
    # result with the channels swapped.
    assert max(psnr(o, e) for o, e in zip(outputs, np.roll(expected, 1, axis=0))) < FAR_DB
    assert max(psnr(o, e[..., ::-1]) for o, e in zip(outputs, expected)) < FAR_DB


def test_other_audio_is_reencoded_to_aac_and_odd_sizes_padded_to_even(tmp_path):
    """PCM in Matroska (no frame count announced, millisecond timestamps at 24 fps), 63x95 pixels."""
    frames = [textured((63, 95, 3), seed=300 + i) for i in range(12)]
    clip, out = tmp_path / "clip.mkv", tmp_path / "anime.mp4"
    make_video(clip, frames, rate=24, codec="mjpeg", audio="pcm_s16le")
    fake = FakeStylizer()
    with logged("anime_gan.inference") as messages:
        summary = inference.Summary(inputs=1)
        inference.video_job(fake, clip, out, 5, "none", summary, None)
    assert summary.ok, summary
    assert (f"wrote 12 frames to {out} (pcm_s16le audio re-encoded to AAC; 63x95 written as 64x96: "
            f"{video.ODD_SIZE_NOTE})") in messages
    result = streams(out)
    assert result["video"] == ("h264", 12, fractions.Fraction(24), 96, 64, "yuv420p")  # exact 24 fps, not ~24.006
    codec, rate, seconds = result["audio"]
    assert (codec, rate) == ("aac", SAMPLE_RATE)
    assert abs(seconds - AUDIO_SECONDS) <= 1024 / SAMPLE_RATE + 1e-9  # the encoder pads the last packet
    outputs = decoded_frames(out)
    expected = fake(np.stack(decoded_frames(clip)))
    for o, e in zip(outputs, expected):
        assert psnr(o[:63, :95], e) >= MIN_PSNR_DB
        # The padding repeats the last row and column.
        assert psnr(o[63], o[62]) >= MIN_PSNR_DB - 3 and psnr(o[:, 95], o[:, 94]) >= MIN_PSNR_DB - 3


def test_video_without_sound(tmp_path):
    frames = [textured((32, 48, 3), seed=400 + i) for i in range(7)]
    clip, out = tmp_path / "clip.mp4", tmp_path / "anime.mov"
    make_video(clip, frames, rate=10, audio=None)
    assert inference.stylize_video(FakeStylizer(), clip, out, batch_size=3) == (7, 7)
    result = streams(out)
    assert result["audio"] is None and result["video"] == ("h264", 7, fractions.Fraction(10), 48, 32, "yuv420p")
    assert not list(tmp_path.glob(".tmp-*"))


def test_cut_short_and_unreadable_videos_are_counted_in_one_sentence(tmp_path):
    frames = [textured((32, 48, 3), seed=500 + i) for i in range(30)]
    whole = tmp_path / "whole.mp4"
    make_video(whole, frames, faststart=True)  # the index first: a cut file still opens
    data = whole.read_bytes()
    cut, out = tmp_path / "cut.mp4", tmp_path / "anime.mp4"
    cut.write_bytes(data[:len(data) * 6 // 10])
    summary = inference.Summary(inputs=1)
    inference.video_job(FakeStylizer(), cut, out, 4, "none", summary, None)
    assert summary.written == [str(out)] and len(summary.incomplete) == 1
    reason = summary.incomplete[0][1]
    written = streams(out)["video"][1]
    assert 0 < written < 30
    assert reason == (f"{cut}: {30 - written} of its 30 frames could not be decoded (corrupt or cut short); "
                      f"{out} has the other {written}, so it is {30 - written} frames short.")

    # The index last (the default): a cut file does not open at all.
    make_video(whole, frames)
    cut.write_bytes(whole.read_bytes()[:len(data) // 2])
    summary = inference.Summary(inputs=1)
    out.unlink()
    inference.video_job(FakeStylizer(), cut, out, 4, "none", summary, None)
    assert summary.failed and not summary.written and not out.exists()
    message = summary.failed[0][1]
    assert message.startswith(f"{cut} is not a readable video (FFmpeg cannot open it") and "\n" not in message
    assert not re.search(r"\.\s+[A-Z]", message) and message.endswith("check the file.")
    assert not list(tmp_path.glob(".tmp-*"))


def test_video_output_suffix_without_h264_container_is_refused(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    with pytest.raises(ImageError, match=re.escape(f"--output={tmp_path / 'a.webm'}: videos are written as H.264")):
        inference.plan_output(clip, tmp_path / "a.webm")


# --------------------------------------------------------------------------------------------
# Folders


def write_folder(src, n, bad=()):
    for i in range(n):
        shape = (24, 32, 3) if i % 3 else (20, 28, 3)  # two sizes, interleaved
        write_rgb(src / f"p{i:02d}.png", textured(shape, seed=600 + i))
    for name in bad:
        (src / name).write_bytes(b"not an image")


def test_folder_pipeline_writes_the_same_files_as_the_sequential_path(tmp_path):
    """workers=0 is the path before the pipeline (everything in the calling thread, in turn). The
    stand-in model keeps this fast; test_stylize.py runs the real one through the pipeline."""
    src = tmp_path / "in"
    write_folder(src, 11, bad=("p03x.png", "p07x.png"))
    model = FakeStylizer(seconds_per_image=0.002)
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        jobs, _ = inference.folder_jobs(src, out)
        with logged("anime_gan.inference") as messages:
            summary = inference.stylize_images(model, jobs, batch_size=3, adjust="luma", workers=workers)
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        results[workers] = (files, [m.replace(str(out), "OUT") for m in messages],
                            [w.replace(str(out), "OUT") for w in summary.written], summary.failed)
    assert len(results[2][0]) == 11
    assert results[2][0] == results[0][0]  # bit-equal PNGs
    assert results[2][1:] == results[0][1:]  # the same error lines, in the same order, and the same summary
    assert results[2][1] == [f"{src / 'p03x.png'} is not a readable image (OpenCV cannot decode it); check that "
                             "it is a JPEG, PNG, BMP, GIF, WebP or TIFF file, or remove it.",
                             f"{src / 'p07x.png'} is not a readable image (OpenCV cannot decode it); check that "
                             "it is a JPEG, PNG, BMP, GIF, WebP or TIFF file, or remove it."]


def test_folder_pipeline_overlaps_reading_the_model_and_writing(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    n, delay = 16, 0.04
    for i in range(n):
        write_rgb(src / f"p{i:02d}.png", textured((16, 16, 3), seed=700 + i))
    real_read, real_write = image_io.read_image, image_io.write_image

    def slow_read(path, check_size=None):
        time.sleep(delay)
        return real_read(path, check_size)

    def slow_write(path, image):
        time.sleep(delay)
        return real_write(path, image)

    monkeypatch.setattr(image_io, "read_image", slow_read)
    monkeypatch.setattr(image_io, "write_image", slow_write)
    jobs, _ = inference.folder_jobs(src, out)
    times = {}
    for workers in (0, 2):
        fake = FakeStylizer(seconds_per_image=delay)
        start = time.perf_counter()
        summary = inference.stylize_images(fake, jobs, batch_size=4, workers=workers)
        times[workers] = time.perf_counter() - start
        assert len(summary.written) == n and summary.ok
    serial = 3 * n * delay  # read, model and write one after the other
    assert times[0] >= serial
    # Overlapped: about the model's n * delay plus the first reads and the last writes.
    assert times[2] < 0.6 * serial, times


def test_large_images_run_alone(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_rgb(src / f"big{i}.png", textured((40, 40, 3), seed=800 + i))
        write_rgb(src / f"small{i}.png", textured((20, 20, 3), seed=810 + i))
    monkeypatch.setattr(pipeline, "SINGLE_IMAGE_PIXELS", 30 * 30)
    fake = FakeStylizer()
    jobs, _ = inference.folder_jobs(src, out)
    summary = inference.stylize_images(fake, jobs, batch_size=4)
    assert summary.ok and len(summary.written) == 6
    assert sorted(fake.shapes) == sorted([(1, 40, 40, 3)] * 3 + [(3, 20, 20, 3)])
    # Video frames too.
    frames = np.stack([textured((40, 40, 3), seed=820 + i) for i in range(3)])
    fake.shapes.clear()
    result = inference.video_frames_fn(fake, "none")(frames)
    assert np.array_equal(result, 255 - frames[..., ::-1]) and fake.shapes == [(1, 40, 40, 3)] * 3
