"""`anime_gan.inference.runtimes` and `runners`: a TensorFlow model converted once to ONNX and cached, AnimeGANv2 in ONNX Runtime and
OpenVINO within 1e-4 of ours, `auto` following this machine's measured table (and measuring it when
there is none), and one-sentence errors."""

import logging

import keras
import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from anime_gan.inference import runners, runtimes  # noqa: E402
from anime_gan.errors import ConfigError  # noqa: E402
from anime_gan.image_io import images_to_unit_range, unit_range_to_images  # noqa: E402
from anime_gan.deploy.saved_model import generate  # noqa: E402

SIZES = [(256, 256), (75, 131)]


def v2_generator(seed=3, **options):
    """An AnimeGANv2 generator with seeded random weights, norms' gamma and beta included."""
    from anime_gan.nets import build_generator

    keras.utils.set_random_seed(seed)
    g = build_generator("float32", arch="v2", **options)
    rng = np.random.default_rng(seed)
    for w in g.weights:
        if "gamma" in w.path or "beta" in w.path:
            w.assign(rng.normal(1.0 if "gamma" in w.path else 0.0, 0.2, w.shape).astype(np.float32))
    return g


@pytest.fixture(scope="module")
def generator():
    return v2_generator()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """$XDG_CACHE_HOME for this module (the conversion cache and the runtime table live there)."""
    mp = pytest.MonkeyPatch()
    directory = tmp_path_factory.mktemp("xdg_cache")
    mp.setenv("XDG_CACHE_HOME", str(directory))
    yield directory
    mp.undo()


@pytest.fixture(scope="module")
def converted(weights_dir, cache):
    """The first load of a TensorFlow model in onnxruntime: (stylizer, log text)."""
    handler = _Capture()
    runners.log.addHandler(handler)
    runners.log.setLevel(logging.INFO)
    try:
        stylizer = runtimes.load_model(weights_dir, runtime="onnxruntime")
    finally:
        runners.log.removeHandler(handler)
    return stylizer, "\n".join(handler.lines)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def onnx_file(cache):
    (path,) = (cache / "anime_gan" / "onnx").glob("v2-*.onnx")
    return path


def test_first_load_converts_and_the_second_reuses_the_cache(converted, weights_dir, cache, monkeypatch):
    stylizer, log_text = converted
    assert "converting the model to ONNX once" in log_text
    assert stylizer.runtime == "onnxruntime" and stylizer.source == str(weights_dir)
    path = onnx_file(cache)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("anime_gan.deploy.onnx.to_onnx", no_conversion)
    again = runtimes.load_model(weights_dir, runtime="onnxruntime")
    assert onnx_file(cache) == path
    x = np.random.default_rng(1).integers(0, 256, (1, 32, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(again(x), stylizer(x))


@pytest.fixture(scope="module")
def reference(generator):
    """{size: (x, our float32 output, its uint8 mapping)}, computed once."""
    out = {}
    for size in SIZES:
        x = np.random.default_rng(2).integers(0, 256, (1, *size, 3), dtype=np.uint8)
        y = generate(generator, images_to_unit_range(x))
        out[size] = x, y.numpy(), unit_range_to_images(y).numpy()
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_v2_in_each_runtime_matches_our_generator(converted, reference, cache, runtime, size):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    runner = runners.make_runner(runtime, onnx_file(cache))
    x, y_float, y_uint8 = reference[size]
    assert np.abs(runner.unit_range(x) - y_float).max() < 1e-4
    y = runner(x)
    assert y.shape == x.shape
    assert np.abs(y.astype(int) - y_uint8).max() <= 1


def _entry(ms_db):
    return {name: {"ms": ms, "db": db} for name, (ms, db) in ms_db.items()}


def test_auto_follows_the_table(converted, cache, tmp_path):
    pytest.importorskip("openvino")
    table = tmp_path / "runtimes.json"
    onnx = onnx_file(cache)
    runtimes.record("v2", _entry({"tensorflow": (400, None), "onnxruntime": (350, 90), "openvino": (250, 95)}),
                    "test", path=table)
    assert runtimes.choose("v2", onnx_path=onnx, path=table) == "openvino"
    assert runtimes.choose("v2", generator=object(), path=table) == "openvino"
    runtimes.record("v2", _entry({"tensorflow": (400, None), "onnxruntime": (200, 90), "openvino": (250, 95)}),
                    "test", path=table)
    assert runtimes.choose("v2", onnx_path=onnx, path=table) == "onnxruntime"
    # The fastest is not float-accurate (bf16-like 30 dB): the next one is chosen.
    runtimes.record("v2", _entry({"tensorflow": (400, None), "onnxruntime": (500, 90), "openvino": (100, 30)}),
                    "test", path=table)
    assert runtimes.choose("v2", generator=object(), path=table) == "tensorflow"
    assert runtimes.choose("v2", onnx_path=onnx, path=table) == "onnxruntime"
    # The default table (in the cache folder) drives load_model.
    runtimes.record("v2", _entry({"tensorflow": (400, None), "onnxruntime": (300, 90), "openvino": (250, 95)}),
                    "test")
    assert runtimes.load_model(onnx, runtime="auto").runtime == "openvino"
    assert "<- auto" in runtimes.format_table(runtimes.read_table())


def test_without_a_table_auto_measures_once_and_picks_the_fastest(converted, cache, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(runtimes, "CALIBRATION_SIZE", 64)
    table = tmp_path / "runtimes.json"
    choice = runtimes.choose("v2", onnx_path=onnx_file(cache), path=table)
    entry = runtimes.read_table(table)[runtimes.machine_key("v2")]
    measured = entry["runtimes"]
    assert entry["source"] == "calibration" and entry["size"] == "64x64"
    assert set(measured) == {"onnxruntime", "openvino"}
    assert measured["openvino"]["db"] >= 60  # float32 for real (its bf16 default gives ~30 dB)
    assert choice == min(measured, key=lambda name: measured[name]["ms"])
    # A second choice reads the table: no new measurement.
    monkeypatch.setattr(runtimes, "calibrate", lambda *a, **k: pytest.fail("measured again"))
    assert runtimes.choose("v2", onnx_path=onnx_file(cache), path=table) == choice


def test_errors_are_one_sentence(converted, cache, monkeypatch):
    onnx = onnx_file(cache)
    with pytest.raises(ConfigError, match=r"^--runtime=fast is not one of auto, tensorflow"):
        runtimes.load_model(onnx, runtime="fast")
    with pytest.raises(ConfigError, match="is an ONNX model: run it with --runtime=onnxruntime, openvino or auto"):
        runtimes.load_model(onnx, runtime="litert")  # runtime="tensorflow" runs an .onnx model in auto
    monkeypatch.setattr(runners, "installed", lambda runtime: runtime == "tensorflow")
    with pytest.raises(ConfigError) as e:
        runtimes.load_model(onnx, runtime="onnxruntime")
    assert str(e.value) == ("onnxruntime is not installed; pip install 'anime-gan-tf2[onnx]' or use "
                            "--runtime=tensorflow.")


@pytest.mark.slow
def test_v2_align_corners_runs_unpadded_at_any_size(tmp_path):
    from anime_gan.deploy.onnx import read_metadata, to_onnx

    ort = pytest.importorskip("onnxruntime")
    g = v2_generator(seed=4, resize="align_corners")
    model = to_onnx(g)
    assert read_metadata(model)["padding"] == "none"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).integers(0, 256, (1, 75, 131, 3), dtype=np.uint8)
    (y,) = session.run(["stylized_unit_range"], {"images": x})
    assert np.abs(y - g(images_to_unit_range(x)).numpy()).max() < 1e-4
