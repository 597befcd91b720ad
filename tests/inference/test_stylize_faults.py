"""Never lose work: what `anime_gan.stylize` does when an input or the user gets in the way.

Each fault ends in one sentence, the other inputs are still stylized, and what was written before
the fault stays: a huge image refused from its header (item 8), inputs whose output names would
clash (11), a video with a corrupt frame (12), Ctrl-C in the middle of a folder (14)."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from anime_gan import image_io
from anime_gan.image_io import ImageError
from helpers import (ENV, REPO, black_png, header_only_png, logged, max_diff, read_rgb, read_video,
                     reference_stylize, seeded_generator, textured, write_rgb)

MAX_SIDE = 64


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(seed=31)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "anime_gan.stylize", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_sentence(text):
    """One line ending in a full stop, with no second sentence starting inside it."""
    assert "\n" not in text and text.endswith("."), text
    assert not re.search(r"\.\s+[A-Z]", text), text


def too_large(name, height, width, max_side=MAX_SIDE):
    """The size rule's sentence, written out here (not taken from `anime_gan.deploy.saved_model`)."""
    return (f"{name} is {height}x{width} pixels (height x width); each side must be at most {max_side} pixels "
            "(the size cap of this model); downscale it or use a model exported with a larger --max_side.")


# --------------------------------------------------------------------------------------------
# 8. Huge images are refused from their header, before they are decoded


def test_huge_png_is_refused_from_its_header_and_the_folder_goes_on(generator, weights_dir, tmp_path):
    from anime_gan import inference

    src, out = tmp_path / "photos", tmp_path / "anime"
    photos = {"a.png": textured((24, 32, 3), seed=1), "z.png": textured((24, 32, 3), seed=2)}
    for name, image in photos.items():
        write_rgb(src / name, image)
    # A decoder cannot read this file (no pixel data), so a refusal naming its size comes from the header.
    (src / "huge.png").write_bytes(header_only_png(20000, 20000))
    with logged("anime_gan.inference") as messages:
        summary = inference.run(weights_dir, src, out, batch_size=1, max_side=MAX_SIDE, show_progress=False)
    refusal = too_large(src / "huge.png", 20000, 20000)
    assert summary.failed == [(str(src / "huge.png"), refusal)]
    assert [m for m in messages if "huge.png" in m] == [refusal]
    assert_one_sentence(refusal)
    assert sorted(summary.written) == [str(out / "a.png"), str(out / "z.png")]
    for name, image in photos.items():  # the images before and after it are written
        assert max_diff(read_rgb(out / name), reference_stylize(generator, image)) <= 1
    assert not (out / "huge.png").exists()

    # Through the Python API's stylizer (default cap 4096): the same sentence, nothing written.
    with logged("anime_gan.inference") as messages:
        summary = inference.stylize_images(inference.get_model(generator), [(src / "huge.png", tmp_path / "one.png")])
    refusal = too_large(src / "huge.png", 20000, 20000, max_side=4096)
    assert summary.failed == [(str(src / "huge.png"), refusal)] and not summary.written
    assert [m for m in messages if "huge.png" in m] == [refusal]
    assert not (tmp_path / "one.png").exists()


def test_reading_a_huge_png_with_a_size_check_does_not_decode_it(tmp_path):
    """In a fresh process (no TensorFlow), the peak RSS while a real 20000x20000 PNG (1.2 MB, all
    black) is refused stays where it was: decoding it would take 1.2 GB (OpenCV peaks at 2.3 GB)."""
    path = tmp_path / "huge.png"
    path.write_bytes(black_png(20000, 20000))
    script = textwrap.dedent(
        f"""
        import resource
        from anime_gan import image_io
        from anime_gan.image_io import ImageError

        def check(height, width, name):
            if max(height, width) > {MAX_SIDE}:
                raise ImageError(f"{{name}} is {{height}}x{{width}}")

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            image_io.read_image({str(path)!r}, check_size=check)
        except ImageError as e:
            print("refused:", e)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("peak grew by KiB:", after - before)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"refused: {path} is 20000x20000" in proc.stdout
    grew_kib = int(re.search(r"peak grew by KiB: (\d+)", proc.stdout).group(1))
    assert grew_kib < 50 * 1024, proc.stdout  # the pixels alone are 1,200,000,000 bytes


# --------------------------------------------------------------------------------------------
# 11. Two inputs never share one output


def test_inputs_sharing_a_name_get_one_output_each(tmp_path):
    from anime_gan.inference import folder_jobs

    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "a.gif", "b.jpg", "b.JPG", "c.GIF", "c.PNG", "d.jpeg", "sub/clip.mov", "sub/clip.mp4"]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"")
    images, videos = folder_jobs(src, out)
    assert images == [
        (src / "a.gif", out / "a.gif.png"), (src / "a.png", out / "a.png"),
        (src / "b.JPG", out / "b.JPG.jpg"), (src / "b.jpg", out / "b.jpg"),
        (src / "c.GIF", out / "c.GIF.png"), (src / "c.PNG", out / "c.PNG.png"),  # neither is named c.png
        (src / "d.jpeg", out / "d.jpeg"),
    ]
    assert videos == [(src / "sub/clip.mov", out / "sub/clip.mov.mp4"), (src / "sub/clip.mp4", out / "sub/clip.mp4")]
    destinations = [d for _, d in images + videos]
    assert len(set(destinations)) == len(names)


def test_outputs_still_shared_are_refused_before_anything_is_written(weights_dir, tmp_path):
    from anime_gan import inference

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ["a.png", "a.gif.png", "ok.png"]:
        write_rgb(src / name, textured((16, 16, 3), seed=3))
    Image.fromarray(textured((16, 16, 3), seed=4)).save(src / "a.gif")
    with pytest.raises(ImageError) as caught:
        inference.run(weights_dir, src, out, show_progress=False)
    message = str(caught.value)
    assert message == (f"1 output name is shared by several inputs ({src / 'a.gif'} and {src / 'a.gif.png'} -> "
                       f"{out / 'a.gif.png'}); rename one of each so no output overwrites another (nothing was "
                       "written).")
    assert_one_sentence(message)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 12. A video with a corrupt frame


def write_mjpg_with_a_corrupt_frame(path, frames, bad):
    """An MJPG AVI (each frame its own JPEG) whose frame `bad` has its JPEG header zeroed."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", bytes(data))]
    assert len(starts) == len(frames)
    data[starts[bad]:starts[bad] + 300] = bytes(300)
    path.write_bytes(bytes(data))


def test_a_corrupt_frame_is_skipped_warned_and_counted(generator, weights_dir, tmp_path):
    from anime_gan import inference

    frames = [textured((48, 64, 3), seed=40 + i) for i in range(10)]
    clip, out = tmp_path / "clip.avi", tmp_path / "anime.mp4"
    write_mjpg_with_a_corrupt_frame(clip, frames, bad=5)
    with logged("anime_gan.inference") as messages:
        summary = inference.run(weights_dir, clip, out, batch_size=4, show_progress=False)
    reason = (f"{clip}: 1 of its 10 frames could not be decoded (corrupt or cut short); {out} has the other 9, "
              "so it is 1 frame short.")
    assert summary.written == [str(out)] and summary.incomplete == [(str(clip), reason)] and not summary.ok
    assert reason in messages
    assert_one_sentence(reason)
    assert summary.sentence() == (f"stylized 1 of 1 input; 1 video written with frames missing (listed above): "
                                  f"{clip}")
    # Every frame before and after the corrupt one is there, in order (mp4v is lossy: each output frame
    # is nearest to its own stylized source frame among all ten).
    _, result = read_video(out)
    assert len(result) == 9
    expected = [reference_stylize(generator, f).astype(int) for f in frames]
    nearest = [int(np.argmin([np.abs(r.astype(int) - e).mean() for e in expected])) for r in result]
    assert nearest == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_cli_folder_with_clashing_names_and_a_corrupt_video(generator, weights_dir, tmp_path):
    """Items 11 and 12 through the command: one output per input, and exit status 1 with a summary."""
    src, out = tmp_path / "photos", tmp_path / "anime"
    photos = {"a.png": textured((16, 24, 3), seed=50), "b.jpg": textured((16, 24, 3), seed=51),
              "b.JPG": textured((16, 24, 3), seed=52)}
    for name, image in photos.items():
        write_rgb(src / name, image)
    Image.fromarray(textured((16, 24, 3), seed=53)).save(src / "a.gif")
    (src / "sub").mkdir()
    frames = [textured((24, 32, 3), seed=60 + i) for i in range(6)]
    write_mjpg_with_a_corrupt_frame(src / "sub" / "clip.avi", frames, bad=2)

    proc = run_cli(f"--model={weights_dir}", f"--input={src}", f"--output={out}", "--batch_size=2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert lines[-1] == (f"warning: stylized 5 of 5 inputs; 1 video written with frames missing (listed above): "
                         f"{src / 'sub' / 'clip.avi'}.")
    assert f"warning: {src / 'sub' / 'clip.avi'}: 1 of its 6 frames could not be decoded" in proc.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.gif.png", "a.png", "b.JPG.jpg", "b.jpg", "sub/clip.mp4"]
    assert max_diff(read_rgb(out / "a.png"), reference_stylize(generator, photos["a.png"])) <= 1
    gif = image_io.read_image(src / "a.gif")
    assert max_diff(read_rgb(out / "a.gif.png"), reference_stylize(generator, gif)) <= 1
    # JPEG is lossy: each of b.jpg and b.JPG is much nearer its own photo's stylization than the other's.
    refs = {n: reference_stylize(generator, image_io.read_image(src / n)).astype(int) for n in ("b.jpg", "b.JPG")}
    for name, other in [("b.jpg", "b.JPG"), ("b.JPG", "b.jpg")]:
        result = read_rgb(out / (name if name == "b.jpg" else "b.JPG.jpg")).astype(int)
        assert np.abs(result - refs[name]).mean() < 0.5 * np.abs(result - refs[other]).mean()
    assert len(read_video(out / "sub" / "clip.mp4")[1]) == 5


# --------------------------------------------------------------------------------------------
# 14. Ctrl-C in the middle of a folder


def test_ctrl_c_stops_after_the_batch_in_hand_and_names_what_was_written(generator, weights_dir, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "anime"
    n = 60
    photos = {f"p{i:03d}.png": textured((64, 64, 3), seed=100 + i) for i in range(n)}
    for name, image in photos.items():
        write_rgb(src / name, image)
    proc = subprocess.Popen(
        [sys.executable, "-m", "anime_gan.stylize", f"--model={weights_dir}", f"--input={src}",
         f"--output={out}", "--batch_size=1"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and any(p.name.endswith(".png") and not p.name.startswith(".tmp-")
                                        for p in out.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "no output appeared"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    written = sorted(p.name for p in out.iterdir())
    k = len(written)
    assert 1 <= k < n, written
    lines = stderr.splitlines()
    assert "warning: Ctrl-C: stopping once the batch in hand is written; press Ctrl-C again to stop at once." in lines
    summary = f"stopped by Ctrl-C: stylized {k} of {n} inputs; the other {n - k} inputs were not written."
    assert lines[-2:] == [f"warning: {summary}", "error: interrupted (Ctrl-C)."], lines[-5:]
    assert_one_sentence(summary)
    # Everything written is complete and right, and it is the first k photos (in order).
    assert written == sorted(photos)[:k]
    for name in written:
        assert max_diff(read_rgb(out / name), reference_stylize(generator, photos[name])) <= 1


def test_stop_check_leaves_no_partial_video_and_names_what_was_written(weights_dir, tmp_path):
    """A stop while a video is being written (in-process, through `StopOnCtrlC.check`): the images
    already written stay, the half-done video leaves nothing behind, and `Interrupted` says so."""
    from anime_gan import inference

    src, out = tmp_path / "in", tmp_path / "out"
    write_rgb(src / "a.png", textured((16, 16, 3), seed=70))
    clip = src / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (16, 16))
    for i in range(8):
        writer.write(textured((16, 16, 3), seed=71 + i))
    writer.release()

    calls = {"n": 0}
    real_check = inference.StopOnCtrlC.check

    def check(self):  # as if Ctrl-C came while the video's second batch was being read
        calls["n"] += 1
        if calls["n"] == 5:  # checks: the image's read, its batch, the video's 1st, 2nd and 3rd frames batch
            self.requested = True
        real_check(self)

    inference.StopOnCtrlC.check = check
    try:
        with pytest.raises(inference.Interrupted) as caught:
            inference.run(weights_dir, src, out, batch_size=2, show_progress=False)
    finally:
        inference.StopOnCtrlC.check = real_check
    assert caught.value.summary.written == [str(out / "a.png")]
    assert caught.value.sentence() == ("stopped by Ctrl-C: stylized 1 of 2 inputs; the other 1 input was not "
                                       "written.")
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no clip.mp4, no .tmp-* file
    assert read_rgb(out / "a.png").shape == (16, 16, 3)
