"""`anime_gan.stylize`: robust image reading, the Python API, the CLI on folders and videos."""

import importlib
import io
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from anime_gan import image_io
from anime_gan.image_io import ImageError
from helpers import (ENV, REPO, max_diff, read_rgb, read_video, reference_stylize, seeded_generator, textured,
                     write_rgb)


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(seed=21)


# --------------------------------------------------------------------------------------------
# Reading images


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    from PIL import Image, ImageOps

    stored = textured((12, 20, 3), seed=orientation)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[image_io.EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())  # lossless, so Pillow's pixels are ours exactly
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    decoded = image_io.decode_image(buf.getvalue())
    assert decoded.shape == upright.shape
    assert np.array_equal(decoded, upright)


def test_camera_jpeg_rotated_by_exif(tmp_path):
    from PIL import Image

    stored = textured((24, 40, 3), seed=30)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[image_io.EXIF_ORIENTATION] = 6  # "rotate 90 clockwise to view", as phones write
    path = tmp_path / "phone.jpg"
    im.save(path, "JPEG", quality=98, exif=exif.tobytes())
    decoded = image_io.read_image(path)
    assert decoded.shape == (40, 24, 3)
    # JPEG is lossy: the right turn is near, the opposite turn is far.
    right = np.abs(decoded.astype(int) - np.rot90(stored, k=-1)).mean()
    wrong = np.abs(decoded.astype(int) - np.rot90(stored, k=1)).mean()
    assert right < 15 and right < 0.5 * wrong


def test_16_bit_gray_and_rgba_become_8_bit_rgb(tmp_path):
    deep = np.random.default_rng(1).integers(0, 65536, (9, 10, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", deep[..., ::-1])
    assert ok
    expected = np.floor(deep / 257.0 + 0.5).astype(np.uint8)
    assert np.array_equal(image_io.decode_image(buf.tobytes()), expected)

    gray = textured((9, 10, 1), seed=2)[..., 0]
    ok, buf = cv2.imencode(".png", gray)
    assert np.array_equal(image_io.decode_image(buf.tobytes()), np.stack([gray] * 3, -1))

    rgba = np.array([[[200, 100, 0, 128], [10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    ok, buf = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])
    a = 128 / 255.0
    first = [round(200 * a + 255 * (1 - a)), round(100 * a + 255 * (1 - a)), round(255 * (1 - a))]
    expected = np.array([[first, [10, 20, 30], [255, 255, 255]]], np.uint8)
    assert np.array_equal(image_io.decode_image(buf.tobytes()), expected)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty (0 bytes)"), (b"GIF89a but not really", "is not a readable image"),
     (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not a readable image")],
)
def test_unreadable_files_name_themselves(tmp_path, content, message):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=re.escape(message)) as info:
        image_io.read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# The original's image path weights R and B as 0.114 and 0.299 (its helper reads RGB as BGR);
# "luma" is true luma.
WEIGHTINGS = [("official", 0.114, 0.299), ("luma", 0.299, 0.114)]


@pytest.mark.parametrize("mode, w_red, w_blue", WEIGHTINGS)
def test_adjust_brightness_against_hand_values(mode, w_red, w_blue):
    from anime_gan.inference import adjust_brightness

    photo = np.zeros((2, 2, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = 100, 50, 200  # brightness w_red*100+0.587*50+w_blue*200
    result = np.full((2, 2, 3), 40, np.uint8)                     # brightness 40
    result[0, 0] = (250, 40, 40)  # brightness of the means: 40 + w_red * 210 / 4
    b_photo = w_red * 100 + 0.587 * 50 + w_blue * 200
    b_result = 40 + w_red * 210 / 4
    scale = b_photo / b_result
    out = adjust_brightness(result, photo, mode)
    assert out[1, 1, 0] == int(40 * scale)          # truncated, not rounded
    assert out[0, 0, 0] == 255                      # 250 * 1.46 clipped
    assert out[0, 0, 1] == int(40 * scale)
    assert np.array_equal(adjust_brightness(np.zeros_like(result), photo, mode), np.zeros_like(result))


@pytest.mark.parametrize("mode, w_red, w_blue", WEIGHTINGS)
def test_adjust_brightness_weightings_against_numpy(mode, w_red, w_blue):
    from anime_gan.inference import adjust_brightness, brightness_mode

    photo = textured((30, 40, 3), seed=40)
    photo[..., 0] //= 3                                          # a blue photo: mean R << mean B
    result = textured((30, 40, 3), seed=41)
    result[..., 2] //= 2                                         # a red result
    def brightness(im):
        m = im.reshape(-1, 3).astype(np.float64).mean(axis=0)
        return w_red * m[0] + 0.587 * m[1] + w_blue * m[2]
    expected = np.clip(result.astype(np.float64) * (brightness(photo) / brightness(result)), 0, 255).astype(np.uint8)
    out = adjust_brightness(result, photo, mode)
    assert np.array_equal(out, expected)
    other = adjust_brightness(result, photo, "luma" if mode == "official" else "official")
    assert max_diff(out, other) >= 10  # the two weightings differ on this pair
    if mode == "official":  # the default, as the original's option; True means it too
        assert np.array_equal(adjust_brightness(result, photo), out)
        assert brightness_mode(True) == brightness_mode("official") == "official"
    assert brightness_mode(False) == brightness_mode(None) == brightness_mode("none") == "none"
    with pytest.raises(ValueError, match="must be official .* luma .* or none, not 'bgr'"):
        brightness_mode("bgr")


# --------------------------------------------------------------------------------------------
# Python API


def test_python_api_keeps_size_and_matches_the_generator(generator, weights_dir):
    import anime_gan

    importlib.import_module("anime_gan.stylize")  # the command module, imported: still callable
    from anime_gan import inference as stylize_module
    photo = textured((37, 53, 3), seed=3)
    out = anime_gan.stylize(photo, model=weights_dir)  # the module is callable: anime_gan.stylize(...)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert max_diff(out, reference_stylize(generator, photo)) <= 1
    batch = np.stack([photo, textured((37, 53, 3), seed=4)])
    outs = stylize_module.stylize(batch, model=weights_dir)
    assert outs.shape == batch.shape
    assert max_diff(outs[1], reference_stylize(generator, batch[1])) <= 1
    # RGBA and gray arrays are converted like files are.
    gray = photo[..., 0]
    assert max_diff(anime_gan.stylize(gray, model=weights_dir), reference_stylize(generator, np.stack([gray] * 3, -1))) <= 1
    bright = stylize_module.stylize(photo, model=weights_dir, adjust_brightness=True)
    assert max_diff(bright, stylize_module.adjust_brightness(out, photo, "official")) <= 1
    luma = stylize_module.stylize(photo, model=weights_dir, adjust_brightness="luma")
    assert max_diff(luma, stylize_module.adjust_brightness(out, photo, "luma")) <= 1
    with pytest.raises(ImageError, match="at least 8 pixels"):
        anime_gan.stylize(np.zeros((1, 1, 3), np.uint8), model=weights_dir)


def test_model_may_be_a_saved_model_or_a_tf1_checkpoint(generator, weights_dir, tmp_path, official_meta):
    from references.official_graph import OfficialGenerator
    from anime_gan.deploy.saved_model import export_saved_model
    from anime_gan.inference import load_model
    from anime_gan.weights import generator_to_tf1

    photo = textured((21, 30, 3), seed=5)[None]
    expected = reference_stylize(generator, photo[0])
    saved = export_saved_model(generator, tmp_path / "saved_model", max_side=300)
    from_saved = load_model(saved)
    assert from_saved.max_side == 300
    assert max_diff(from_saved(photo)[0], expected) <= 1
    official = OfficialGenerator(official_meta)
    try:
        official.assign(generator_to_tf1(generator))
        prefix = official.save(tmp_path / "tf1" / "Hayao-60")
    finally:
        official.close()
    assert max_diff(load_model(prefix)(photo)[0], expected) <= 1
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_model(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# Command line


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "anime_gan.stylize", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_folder_mirrors_reports_bad_files_and_carries_on(generator, weights_dir, tmp_path):
    from PIL import Image

    src, out = tmp_path / "photos", tmp_path / "anime"
    good = {
        "a.png": textured((32, 40, 3), seed=6),
        "sub/b.png": textured((37, 53, 3), seed=7),
        "sub/deeper/c.bmp": textured((32, 40, 3), seed=8),  # batched with a.png (same size)
        "sub/d.jpg": textured((20, 24, 3), seed=9),
    }
    for name, image in good.items():
        write_rgb(src / name, image)
    gray = textured((16, 18, 1), seed=10)[..., 0]
    cv2.imwrite(str(src / "gray.png"), gray)
    deep = (textured((16, 18, 3), seed=11).astype(np.uint16) * 257)
    cv2.imwrite(str(src / "sub" / "deep16.png"), deep[..., ::-1])
    rgba = np.concatenate([textured((16, 18, 3), seed=12), np.full((16, 18, 1), 255, np.uint8)], -1)
    cv2.imwrite(str(src / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    phone = Image.fromarray(textured((16, 24, 3), seed=13))
    exif = phone.getexif()
    exif[image_io.EXIF_ORIENTATION] = 8
    phone.save(src / "phone.png", exif=exif.tobytes())
    anim = [Image.fromarray(textured((16, 18, 3), seed=s)) for s in (14, 15)]
    anim[0].save(src / "anim.gif", save_all=True, append_images=anim[1:])
    bad = {
        "notes.png": b"shopping list",
        "sub/empty.jpg": b"",
        "dot.png": cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(),
        "wide.png": cv2.imencode(".png", np.zeros((16, 65, 3), np.uint8))[1].tobytes(),
    }
    for name, content in bad.items():
        (src / name).write_bytes(content)
    (src / "readme.txt").write_text("not an image; ignored")

    proc = run_cli(f"--model={weights_dir}", f"--input={src}", f"--output={out}", "--batch_size=2",
                   "--max_side=64")
    assert proc.returncode == 1, proc.stderr[-3000:]
    error_lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(error_lines) == len(bad), proc.stderr
    for name in bad:
        assert sum(str(src / name) in l for l in error_lines) == 1, (name, error_lines)
    assert f"stylized 9 of 13 inputs; 4 failed" in proc.stderr

    for name, image in good.items():
        dst = out / name
        assert dst.exists(), dst
        result = read_rgb(dst)
        assert result.shape == image.shape
        if dst.suffix != ".jpg":  # lossless outputs compare exactly
            assert max_diff(result, reference_stylize(generator, image)) <= 1
    assert max_diff(read_rgb(out / "gray.png"), reference_stylize(generator, np.stack([gray] * 3, -1))) <= 1
    assert max_diff(read_rgb(out / "sub" / "deep16.png"),
                    reference_stylize(generator, (deep // 257).astype(np.uint8))) <= 1
    assert max_diff(read_rgb(out / "rgba.png"), reference_stylize(generator, rgba[..., :3])) <= 1
    assert read_rgb(out / "phone.png").shape == (24, 16, 3)  # orientation 8: stored 16x24 shown 24x16
    assert read_rgb(out / "anim.png").shape == (16, 18, 3)
    assert not (out / "notes.png").exists() and not (out / "readme.txt").exists()
    assert not list(out.rglob(".tmp-*"))


def test_cli_single_image_and_bad_arguments(generator, weights_dir, tmp_path):
    from anime_gan.inference import adjust_brightness

    photo = textured((24, 20, 3), seed=16)
    write_rgb(tmp_path / "photo.jpg", photo)
    proc = run_cli(f"--model={weights_dir}", f"--input={tmp_path / 'photo.jpg'}",
                   f"--output={tmp_path / 'out' / 'anime.png'}", "--adjust_brightness")  # bare: official
    assert proc.returncode == 0, proc.stderr[-3000:]
    decoded = image_io.read_image(tmp_path / "photo.jpg")
    expected = adjust_brightness(reference_stylize(generator, decoded), decoded, "official")
    assert max_diff(read_rgb(tmp_path / "out" / "anime.png"), expected) <= 2

    proc = run_cli(f"--model={weights_dir}", f"--input={tmp_path / 'nothing.jpg'}", f"--output={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --input={tmp_path / 'nothing.jpg'} does not exist; pass an image, a folder or a video.")
    proc = run_cli(f"--model={tmp_path / 'no_model'}", f"--input={tmp_path / 'photo.jpg'}", f"--output={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --output must differ from --input: the photo would be overwritten.")
    proc = run_cli(f"--model={tmp_path / 'no_model'}", f"--input={tmp_path / 'photo.jpg'}", f"--output={tmp_path / 'o'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: no model at {tmp_path}")
    assert "Traceback" not in proc.stderr


def test_cli_help_lists_the_flags():
    proc = run_cli("--help")  # absl exits with status 1 after printing help
    assert "Traceback" not in proc.stderr
    for flag in ["--model", "--input", "--output", "--batch_size", "--[no]adjust_brightness", "--max_side"]:
        assert flag in proc.stdout, flag
    for text in ["=official", "0.114R+0.587G+0.299B", "=luma", "0.299R+0.587G+0.114B", "=none", "training run"]:
        assert text in proc.stdout, text


def write_video(path, frames, fps=5.0, fourcc="mp4v"):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def test_video_round_trip_keeps_frames_fps_and_size(generator, weights_dir, tmp_path):
    fps, size, n_frames = 10.0, (64, 48), 20  # 2 seconds
    clip = tmp_path / "clip.mp4"
    frames = [textured((48, 64, 3), seed=100 + i) for i in range(n_frames)]
    write_video(clip, frames, fps)

    out = tmp_path / "anime.mp4"
    proc = run_cli(f"--model={weights_dir}", f"--input={clip}", f"--output={out}", "--batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {n_frames} frames to {out} (no audio track)" in proc.stderr

    (in_fps, in_w, in_h), source_frames = read_video(clip)
    (out_fps, out_w, out_h), result_frames = read_video(out)
    assert (out_fps, out_w, out_h) == (fps, *size) == (in_fps, in_w, in_h)
    assert len(result_frames) == len(source_frames) == n_frames
    # Frame order and colour order survive. mp4v is lossy (twice here), so each frame is compared
    # with the stylized decoded source frame and must be much nearer to it than to the stylized
    # next frame or to its own colour-swapped (BGR) version.
    for i in (0, n_frames - 1):
        expected = reference_stylize(generator, source_frames[i])
        other = reference_stylize(generator, source_frames[(i + 1) % n_frames])
        result = result_frames[i].astype(int)
        err = np.abs(result - expected).mean()
        assert err < 0.5 * np.abs(result - other).mean()
        assert err < 0.5 * np.abs(result - expected[..., ::-1]).mean()


def test_folder_jobs_mirror_videos_as_mp4(tmp_path):
    from anime_gan.inference import folder_jobs

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ["a.png", "b.gif", "sub/clip.mp4", "sub/clip.mov", "sub/talk.AVI", "sub/notes.txt"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"")
    images, videos = folder_jobs(src, out)
    assert images == [(src / "a.png", out / "a.png"), (src / "b.gif", out / "b.png")]
    assert videos == [(src / "sub/clip.mov", out / "sub/clip.mov.mp4"), (src / "sub/clip.mp4", out / "sub/clip.mp4"),
                      (src / "sub/talk.AVI", out / "sub/talk.mp4")]


def test_cli_folder_stylizes_the_videos_in_it(generator, weights_dir, tmp_path):
    from anime_gan.inference import adjust_brightness

    src, out = tmp_path / "photos", tmp_path / "anime"
    photo = textured((24, 32, 3), seed=50)
    photo[..., 2] //= 3  # unequal R and B means: luma and the original's weights differ
    write_rgb(src / "a.png", photo)
    (src / "sub").mkdir()
    clips = {"sub/clip.avi": [textured((24, 32, 3), seed=60 + i) for i in range(3)],
             "sub/walk.mp4": [textured((32, 40, 3), seed=70 + i) for i in range(4)]}
    for name, frames in clips.items():
        write_video(src / name, frames)
    (src / "sub" / "broken.mkv").write_bytes(b"not a video")

    proc = run_cli(f"--model={weights_dir}", f"--input={src}", f"--output={out}", "--batch_size=2",
                   "--adjust_brightness=luma")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "stylized 3 of 4 inputs; 1 failed" in proc.stderr
    assert f"error: {src / 'sub' / 'broken.mkv'} is not a readable video" in proc.stderr
    for name, frames in clips.items():
        dst = (out / name).with_suffix(".mp4")
        assert f"wrote {len(frames)} frames to {dst} (no audio track)" in proc.stderr
        (fps, w, h), result = read_video(dst)
        (_, _, _), source = read_video(src / name)
        assert (fps, h, w) == (5.0, *frames[0].shape[:2]) and len(result) == len(frames) == len(source)
        # mp4v is lossy: the first frame is much nearer its own stylized, brightness-matched source
        # frame than the next one's.
        expected = adjust_brightness(reference_stylize(generator, source[0]), source[0], "luma").astype(int)
        other = adjust_brightness(reference_stylize(generator, source[1]), source[1], "luma").astype(int)
        assert np.abs(result[0] - expected).mean() < 0.5 * np.abs(result[0] - other).mean()
    luma = adjust_brightness(reference_stylize(generator, photo), photo, "luma")
    official = adjust_brightness(reference_stylize(generator, photo), photo, "official")
    assert max_diff(luma, official) >= 5
    assert max_diff(read_rgb(out / "a.png"), luma) <= 2
    assert not list(out.rglob(".tmp-*"))
