"""`python -m anime_gan.export --format=onnx`: the file runs in ONNX Runtime and OpenVINO and agrees with our
generator in the same process (float output within 1e-4, uint8 within one level), keeps any size, and
carries the architecture in its metadata; a bad file or an existing --output is one sentence."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from anime_gan.errors import ModelError, OutputExistsError  # noqa: E402
from anime_gan.image_io import images_to_unit_range  # noqa: E402
from anime_gan.deploy.saved_model import generate  # noqa: E402
from helpers import ENV, REPO, seeded_generator  # noqa: E402

SIZES = [(256, 256), (75, 131)]  # (height, width); 75x131: neither side a multiple of 4


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(seed=5)


@pytest.fixture(scope="module")
def onnx_file(weights_dir, tmp_path_factory):
    """Exported once through the command line, as a user would (v1)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "anime_gan.export", "--format=onnx", f"--checkpoint_dir={weights_dir}",
         f"--output={out}", "--max_side=600"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    # Written through a temporary file (mkstemp makes it 0600): the model is readable as any new file.
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    return out


def photos(height, width, count=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(generator):
    """{(height, width): (x, TF float32 [-1, 1] output, the SavedModel's uint8 mapping of it)}, computed once."""
    from anime_gan.image_io import unit_range_to_images

    out = {}
    for height, width in SIZES:
        x = photos(height, width)
        y = generate(generator, images_to_unit_range(x))
        out[height, width] = x, y.numpy(), unit_range_to_images(y).numpy()
    return out


def assert_matches(reference, y_float, y):
    x, ref_float, ref_uint8 = reference
    assert y.shape == x.shape and y.dtype == np.uint8
    assert np.abs(y_float - ref_float).max() < 1e-4
    assert np.abs(y.astype(int) - ref_uint8).max() <= 1
    assert (y == ref_uint8).mean() >= 0.995


@pytest.mark.parametrize("size", SIZES)
def test_onnx_runtime_matches_our_generator(onnx_file, reference, size):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    y, y_float = session.run(["stylized", "stylized_unit_range"], {"images": reference[size][0]})
    assert_matches(reference[size], y_float, y)


@pytest.mark.parametrize("size", SIZES)
def test_openvino_f32_matches_our_generator(onnx_file, reference, size):
    pytest.importorskip("openvino")
    from anime_gan.inference.runners import OpenVinoRunner

    runner = OpenVinoRunner(onnx_file)
    x = reference[size][0]
    out = runner.compiled(x.shape)(x)
    y, y_float = np.asarray(out["stylized"]), np.asarray(out["stylized_unit_range"])
    assert_matches(reference[size], y_float, y)
    if size != (256, 256):
        # A repeated size runs a model compiled for that shape (its kernels round differently in the
        # last bit): as close to ours.
        assert_matches(reference[size], runner.unit_range(x), runner(x))
        assert x.shape in runner.static


def test_metadata_names_the_architecture_and_cap(onnx_file):
    from anime_gan.deploy.onnx import read_metadata

    meta = read_metadata(onnx.load(str(onnx_file)))
    assert meta["arch"] == "v1" and meta["options"] == "{}" and meta["max_side"] == "600"
    assert meta["padding"].startswith("reflect")


def test_existing_output_is_refused_before_loading(onnx_file, tmp_path):
    from anime_gan.deploy.export import export

    before = onnx_file.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        export(str(tmp_path / "no such model"), str(onnx_file), format="onnx")
    assert onnx_file.read_bytes() == before


def test_a_bad_onnx_file_is_one_sentence(tmp_path):
    from anime_gan.inference import load_model

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelError) as e:
        load_model(bad, runtime="onnxruntime")
    message = str(e.value)
    assert "is not a readable ONNX model" in message and "\n" not in message
    assert message.endswith("--format=onnx.")


def test_the_runtime_stylizer_checks_sizes_and_empty_batches(onnx_file):
    from anime_gan.image_io import ImageError
    from anime_gan.inference import load_model

    stylizer = load_model(onnx_file, runtime="onnxruntime")
    assert stylizer.max_side == 600 and stylizer.runtime == "onnxruntime"
    assert stylizer(np.zeros((0, 16, 24, 3), np.uint8)).shape == (0, 16, 24, 3)
    with pytest.raises(ImageError, match="at most 600 pixels"):
        stylizer(np.zeros((1, 8, 601, 3), np.uint8))
    with pytest.raises(ImageError, match="at least 8 pixels"):
        stylizer(np.zeros((1, 7, 64, 3), np.uint8))
