"""The exported SavedModel: exact sizes, agreement with the generator and the official graph,
clear InvalidArgument errors, and use without `anime_gan` (plain TF, saved_model_cli)."""

import io
import pathlib
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from anime_gan.generator import Generator
from anime_gan.official_graph import OfficialGenerator
from anime_gan.serving import StylizeModule, export_saved_model
from stylize_helpers import ENV, REPO, max_diff, reference_stylize, seeded_generator, textured, to_uint8

MAX_SIDE = 520  # below the default, so the cap is exercised with small requests


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(seed=11)


@pytest.fixture(scope="module")
def saved_model_dir(weights_dir, tmp_path_factory):
    """Exported once per module through the command line, as a user (or training) would."""
    out = tmp_path_factory.mktemp("export") / "anime_gan" / "1"
    proc = subprocess.run(
        [sys.executable, "-m", "anime_gan.export", f"--checkpoint_dir={weights_dir}", f"--output={out}",
         f"--max_side={MAX_SIDE}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "saved_model.pb").exists()
    return out


@pytest.fixture(scope="module")
def loaded(saved_model_dir):
    return tf.saved_model.load(str(saved_model_dir))


def serve(loaded, images):
    return loaded.signatures["serving_default"](images=tf.constant(images))["images"].numpy()


def serve_bytes(loaded, blobs):
    out = loaded.signatures["stylize_bytes"](image_bytes=tf.constant(blobs, tf.string))["image_bytes"]
    return [bytes(b) for b in out.numpy()]


def decode_png(blob):
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]


def encode(image_rgb, suffix):
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def test_multiples_of_4_match_the_generator(loaded, generator):
    images = textured((2, 64, 48, 3), seed=1)
    out = serve(loaded, images)
    y = generator(images.astype(np.float32) / 127.5 - 1.0).numpy()
    expected = to_uint8(y)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert expected.std() > 10  # a real picture, so the comparison below can fail
    assert max_diff(out, expected) <= 1


@pytest.mark.parametrize("size", [(37, 53), (301, 517), (8, 11)])
def test_odd_sizes_keep_the_exact_input_size(loaded, generator, size):
    images = textured((1, *size, 3), seed=sum(size))
    out = serve(loaded, images)
    assert out.shape == images.shape
    assert max_diff(out, reference_stylize(generator, images)) <= 1


def test_stylize_bytes_each_image_keeps_its_size(loaded, generator):
    from PIL import Image

    png_image = textured((1, 37, 53, 3), seed=2)[0]
    bmp_image = textured((1, 24, 17, 3), seed=3)[0]
    jpeg_image = textured((1, 40, 30, 3), seed=4)[0]
    gif_frames = [textured((1, 20, 28, 3), seed=s)[0] for s in (5, 6)]
    buf = io.BytesIO()
    Image.fromarray(gif_frames[0]).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(gif_frames[1])])
    gif = buf.getvalue()
    blobs = [encode(png_image, ".png"), encode(bmp_image, ".bmp"), encode(jpeg_image, ".jpg"), gif]
    outs = [decode_png(b) for b in serve_bytes(loaded, blobs)]
    assert [o.shape for o in outs] == [(37, 53, 3), (24, 17, 3), (40, 30, 3), (20, 28, 3)]
    # Lossless inputs: the result equals serving_default on the same pixels, decoded elsewhere.
    assert max_diff(outs[0], reference_stylize(generator, png_image[None])[0]) <= 1
    assert max_diff(outs[1], reference_stylize(generator, bmp_image[None])[0]) <= 1
    with Image.open(io.BytesIO(gif)) as im:
        assert im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
    assert max_diff(outs[3], reference_stylize(generator, first[None])[0]) <= 1


def test_stylize_bytes_accepts_gray_rgba_and_16_bit(loaded, generator):
    gray = textured((1, 16, 20, 1), seed=7)[0]
    # TF's decoder drops alpha (documented): the colour under it is what gets stylized.
    rgba = textured((1, 16, 20, 4), seed=8)[0]
    deep = (textured((1, 16, 20, 3), seed=9)[0].astype(np.uint16) * 257)  # exact 8-bit values in 16 bits
    ok, bgra = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])
    assert ok
    blobs = [encode(gray, ".png"), bgra.tobytes(), encode(deep, ".png")]
    outs = [decode_png(b) for b in serve_bytes(loaded, blobs)]
    assert all(o.shape == (16, 20, 3) for o in outs)
    assert max_diff(outs[0], reference_stylize(generator, np.repeat(gray, 3, -1)[None])[0]) <= 1
    assert max_diff(outs[1], reference_stylize(generator, rgba[None, ..., :3])[0]) <= 1
    assert max_diff(outs[2], reference_stylize(generator, (deep // 257).astype(np.uint8)[None])[0]) <= 1


@pytest.mark.parametrize(
    "request_kind, payload, message",
    [
        ("images", np.zeros((1, 1, 1, 3), np.uint8), "each side must be at least 8 pixels"),
        ("images", np.zeros((2, 7, 40, 3), np.uint8), "image is 7x40"),
        ("images", np.zeros((1, 16, MAX_SIDE + 1, 3), np.uint8), f"each side must be at most {MAX_SIDE} pixels"),
        ("bytes", [b"this is not an image"], "Unknown image file format"),
        ("bytes", [b""], "is empty (0 bytes)"),
        ("bytes", "one_by_one_png", "each side must be at least 8 pixels"),
        ("bytes", "over_cap_png", f"each side must be at most {MAX_SIDE} pixels"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_model_keeps_serving(loaded, request_kind, payload, message):
    if isinstance(payload, str) and payload == "one_by_one_png":
        payload = [encode(np.zeros((1, 1, 3), np.uint8), ".png")]
    elif isinstance(payload, str) and payload == "over_cap_png":
        payload = [encode(np.zeros((MAX_SIDE + 1, 8, 3), np.uint8), ".png")]
    call = serve if request_kind == "images" else serve_bytes
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        call(loaded, payload)
    good = textured((1, 12, 16, 3), seed=12)
    first, again = serve(loaded, good), serve(loaded, good)
    assert first.shape == good.shape and np.array_equal(first, again)


def test_float16_policy_generator_is_served_in_float32(generator):
    from anime_gan.generator import build_generator

    images = textured((1, 24, 20, 3), seed=13)
    half = build_generator("mixed_float16")
    half.set_weights(generator.get_weights())
    assert half.compute_dtype == "float16"
    out = StylizeModule(half)(images).numpy()
    assert max_diff(out, reference_stylize(generator, images)) <= 1


def test_export_refuses_to_overwrite_without_the_flag(saved_model_dir, weights_dir, tmp_path):
    from anime_gan.export import export

    with pytest.raises(FileExistsError, match="--overwrite"):
        export(weights_dir, saved_model_dir)
    # A folder that is not a SavedModel is never replaced, even by the library function.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export_saved_model(Generator(), other)
    assert (other / "keep.txt").read_text() == "mine"


def test_runs_in_a_process_where_anime_gan_cannot_be_imported(saved_model_dir, generator, tmp_path):
    images = textured((1, 37, 53, 3), seed=14)
    np.save(tmp_path / "in.npy", images)
    png = encode(textured((1, 21, 30, 3), seed=15)[0], ".png")
    (tmp_path / "in.png").write_bytes(png)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["anime_gan"] = None  # any `import anime_gan` now raises ImportError
        sys.modules["keras"] = None  # and the SavedModel holds no Keras objects either
        sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        try:
            import anime_gan
        except ImportError:
            pass
        else:
            raise SystemExit("anime_gan is importable")
        try:
            import keras
        except ImportError:
            pass
        else:
            raise SystemExit("keras is importable")
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(saved_model_dir)!r})
        out = model.signatures["serving_default"](images=tf.constant(np.load("in.npy")))["images"]
        np.save("out.npy", out.numpy())
        png = open("in.png", "rb").read()
        res = model.signatures["stylize_bytes"](image_bytes=tf.constant([png]))["image_bytes"]
        open("out.png", "wb").write(res.numpy()[0])
        try:
            model.signatures["serving_default"](images=tf.zeros([1, 2, 2, 3], tf.uint8))
        except tf.errors.InvalidArgumentError as e:
            assert "at least 8 pixels" in str(e)
        print("served")
        """
    )
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "served" in proc.stdout, proc.stderr[-3000:]
    assert max_diff(np.load(tmp_path / "out.npy"), reference_stylize(generator, images)) <= 1
    out_png = decode_png((tmp_path / "out.png").read_bytes())
    assert max_diff(out_png, reference_stylize(generator, decode_png(png)[None])[0]) <= 1


def saved_model_cli():
    exe = pathlib.Path(sys.executable).with_name("saved_model_cli")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def cli_run(saved_model_dir, signature, inputs, outdir):
    """`saved_model_cli run` of one signature, written to outdir; fails the test if the command does."""
    run = subprocess.run(
        saved_model_cli() + ["run", "--dir", str(saved_model_dir), "--tag_set", "serve", "--signature_def",
                             signature, "--inputs", inputs, "--outdir", str(outdir)],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_saved_model_cli_show_and_run_both_signatures(saved_model_dir, generator, tmp_path):
    show = subprocess.run(saved_model_cli() + ["show", "--all", "--dir", str(saved_model_dir)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-3000:]
    for needle in ["signature_def['serving_default']", "signature_def['stylize_bytes']", "inputs['images']",
                   "outputs['images']", "inputs['image_bytes']", "outputs['image_bytes']", "DT_UINT8", "DT_STRING"]:
        assert needle in show.stdout, needle

    images = textured((2, 12, 19, 3), seed=16)
    np.save(tmp_path / "images.npy", images)
    cli_run(saved_model_dir, "serving_default", f"images={tmp_path / 'images.npy'}", tmp_path / "out1")
    assert max_diff(np.load(tmp_path / "out1" / "images.npy"), reference_stylize(generator, images)) <= 1

    photo = textured((1, 21, 30, 3), seed=17)[0]
    np.save(tmp_path / "bytes.npy", np.array([encode(photo, ".png")], dtype=object), allow_pickle=True)
    cli_run(saved_model_dir, "stylize_bytes", f"image_bytes={tmp_path / 'bytes.npy'}", tmp_path / "out2")
    result = np.load(tmp_path / "out2" / "image_bytes.npy", allow_pickle=True)
    assert result.shape == (1,)
    assert max_diff(decode_png(bytes(result[0])), reference_stylize(generator, photo[None])[0]) <= 1


def test_converted_official_checkpoint_serves_like_the_official_graph(official_meta, tmp_path):
    official = OfficialGenerator(official_meta)
    try:
        official.randomize(seed=5)
        prefix = official.save(tmp_path / "official" / "Hayao-60")
        photo = textured((1, 64, 96, 3), seed=18)
        expected = to_uint8(official(photo.astype(np.float32) / 127.5 - 1.0))
    finally:
        official.close()
    out_dir = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, "-m", "anime_gan.convert", f"--tf1_checkpoint={prefix}", f"--output={out_dir}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tf.saved_model.load(str(out_dir / "saved_model"))
    out = serve(model, photo)
    assert expected.std() > 10
    assert max_diff(out, expected) <= 1
