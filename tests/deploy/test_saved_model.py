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

from anime_gan.nets.generator import Generator
from references.official_graph import OfficialGenerator
from anime_gan.deploy.saved_model import StylizeModule, export_saved_model
from helpers import ENV, REPO, black_png, header_only_png, max_diff, reference_stylize, seeded_generator, textured, to_uint8

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
        ("bytes", [b"this is not an image"],
         "an element of image_bytes is not a JPEG, PNG, GIF, BMP or WebP file (its first bytes say so); "
         "send the bytes of the image file as they are on disk."),
        ("bytes", [b""], "is empty (0 bytes)"),
        ("bytes", "one_by_one_png", "each side must be at least 8 pixels"),
        ("bytes", "over_cap_png", f"each side must be at most {MAX_SIDE} pixels"),
        # The signature declares no shape and servers enforce none: the graph answers in one sentence.
        ("images", np.zeros((16, 16, 3), np.uint8),
         "images must be a batch of shape [N, H, W, 3] (rank 4), not rank 3; send one image as [1, H, W, 3]."),
        ("images", np.zeros((1, 1, 16, 16, 3), np.uint8), "images must be a batch of shape [N, H, W, 3] (rank 4), not rank 5"),
        ("images", np.zeros((1, 16, 16, 4), np.uint8),
         "images must have 3 channels (RGB) in their last dimension, not 4; convert gray or RGBA images to RGB."),
        ("images", np.zeros((0, 4, 16, 3), np.uint8), "image is 4x16 pixels"),  # the size rule holds for N = 0
        # Refused from the header: the file has no pixel data, so a decoder could not have read the size.
        ("bytes", [header_only_png(20000, 20000)],
         f"image is 20000x20000 pixels (height x width); each side must be at most {MAX_SIDE} pixels"),
        ("bytes", "good_then_huge", "image is 20000x20000 pixels"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_model_keeps_serving(loaded, request_kind, payload, message):
    from anime_gan.inference import model_error_message

    if isinstance(payload, str) and payload == "one_by_one_png":
        payload = [encode(np.zeros((1, 1, 3), np.uint8), ".png")]
    elif isinstance(payload, str) and payload == "over_cap_png":
        payload = [encode(np.zeros((MAX_SIDE + 1, 8, 3), np.uint8), ".png")]
    elif isinstance(payload, str) and payload == "good_then_huge":
        payload = [encode(textured((12, 16, 3), seed=3), ".png"), header_only_png(20000, 20000)]
    call = serve if request_kind == "images" else serve_bytes
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)) as caught:
        call(loaded, payload)
    sentence = model_error_message(caught.value)  # what `anime_gan.stylize` shows of it
    assert message in sentence and sentence.endswith(".") and not re.search(r"\.\s+[A-Z]", sentence), sentence
    good = textured((1, 12, 16, 3), seed=12)
    first, again = serve(loaded, good), serve(loaded, good)
    assert first.shape == good.shape and np.array_equal(first, again)


def test_an_empty_batch_gives_an_empty_batch_of_the_same_size(loaded, generator):
    from anime_gan import inference

    out = serve(loaded, np.zeros((0, 12, 17, 3), np.uint8))
    assert out.shape == (0, 12, 17, 3) and out.dtype == np.uint8
    assert inference.stylize(np.zeros((0, 12, 17, 3), np.uint8), model=generator).shape == (0, 12, 17, 3)
    good = textured((1, 12, 16, 3), seed=13)
    assert max_diff(serve(loaded, good), reference_stylize(generator, good)) <= 1


def with_size(blob, fmt, height, width):
    """An encoded image whose header says height x width (its pixel data unchanged)."""
    import struct
    import zlib

    data = bytearray(blob)
    if fmt == "PNG":  # the IHDR chunk's width and height, and its CRC
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt == "GIF":
        data[6:10] = struct.pack("<HH", width, height)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", width, height)
    elif fmt == "WEBP":  # lossy VP8: 14-bit width and height after the start code
        assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
        data[26:30] = struct.pack("<HH", width, height)
    elif fmt == "JPEG":  # the baseline start-of-frame segment: FFC0, length, precision, height, width
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
        # Cut after the start-of-scan header: libjpeg would otherwise decode the few pixels there
        # are into a 9000x7000 image; now a decoder fails, and only the header says the size.
        sos = data.index(b"\xff\xda")
        del data[sos + 2 + struct.unpack(">H", data[sos + 2:sos + 4])[0]:]
    return bytes(data)


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}),
                                          ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True}),
                                          ("WEBP", {"mode": "RGBA"})])
def test_the_graph_reads_the_size_from_the_header(fmt, options):
    """`encoded_image_size` against Pillow and `data_prep.image_header` on real files, without decoding."""
    from PIL import Image

    from anime_gan.deploy.saved_model import encoded_image_size
    from data_prep.image_header import image_size

    image = Image.fromarray(textured((37, 53, 4 if options.get("mode") == "RGBA" else 3), seed=19))
    buf = io.BytesIO()
    image.save(buf, fmt, **{k: v for k, v in options.items() if k != "mode"})
    blob = buf.getvalue()
    size = tuple(int(v) for v in encoded_image_size(tf.constant(blob)))
    assert size == (37, 53) == image_size(blob) == Image.open(io.BytesIO(blob)).size[::-1]
    assert tuple(int(v) for v in encoded_image_size(tf.constant(b"not an image at all, no"))) == (-1, -1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_huge_headers_of_every_format_are_refused_before_decoding(loaded, fmt):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(textured((16, 24, 3), seed=20)).save(buf, fmt)
    blob = with_size(buf.getvalue(), fmt, 9000, 7000)
    assert Image.open(io.BytesIO(blob)).size == (7000, 9000)  # what the file now claims, read by Pillow
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"image is 9000x7000 pixels (height x width); each side must be at most {MAX_SIDE} pixels")):
        serve_bytes(loaded, [blob])


def test_a_huge_png_request_is_refused_without_decoding_it(saved_model_dir, tmp_path):
    """A real 20000x20000 PNG (1.2 MB, all black; 1.2 GB of pixels) sent to `stylize_bytes`: refused
    with the size sentence, and the process's peak RSS does not grow (a decode would add >= 1.2 GB)."""
    (tmp_path / "huge.png").write_bytes(black_png(20000, 20000))
    (tmp_path / "small.png").write_bytes(encode(textured((12, 16, 3), seed=21), ".png"))
    script = textwrap.dedent(
        f"""
        import resource
        import tensorflow as tf
        fn = tf.saved_model.load({str(saved_model_dir)!r}).signatures["stylize_bytes"]
        def send(name):
            return fn(image_bytes=tf.constant([open(name, "rb").read()]))
        send("small.png")  # traced, warmed up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            send("huge.png")
        except tf.errors.InvalidArgumentError as e:
            print("refused:", e.message)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("peak grew by KiB:", after - before)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"image is 20000x20000 pixels (height x width); each side must be at most {MAX_SIDE} pixels" in proc.stdout
    grew_kib = int(re.search(r"peak grew by KiB: (\d+)", proc.stdout).group(1))
    assert grew_kib < 50 * 1024, proc.stdout


def test_float16_policy_generator_is_served_in_float32(generator):
    from anime_gan.nets import build_generator

    images = textured((1, 24, 20, 3), seed=13)
    half = build_generator("mixed_float16")
    half.set_weights(generator.get_weights())
    assert half.compute_dtype == "float16"
    out = StylizeModule(half)(images).numpy()
    assert max_diff(out, reference_stylize(generator, images)) <= 1


def test_export_refuses_to_overwrite_without_the_flag(saved_model_dir, weights_dir, tmp_path):
    from anime_gan.deploy.export import export

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
