"""--precision: int8 (convolutions quantised by `anime_gan.deploy.quantize`, norms in float) against our
float32 on the real AnimeGANv2 Hayao weights, at any size, in folders and videos; the (runtime,
precision) pairs that cannot work, in one sentence; `auto` picking per precision from the table.

The quantised models are made once per test session (in one $XDG_CACHE_HOME) and reused."""

import logging
import os

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from anime_gan import constants as C  # noqa: E402
from anime_gan.deploy.tflite import fit_photo  # noqa: E402
from anime_gan.errors import ConfigError  # noqa: E402
from anime_gan.image_io import ImageError  # noqa: E402
from anime_gan.inference import runners, runtimes  # noqa: E402
from helpers import seeded_generator  # noqa: E402

# Non-square, neither side a multiple of 4 (nor 32): the pad to a multiple of 4 and the crop run.
SIZE = (250, 383)
MIN_INT8_DB = 35.0


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One $XDG_CACHE_HOME for the session: each quantised model is made once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_int8")))
    yield
    mp.undo()


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def held_out_photos(height, width):
    """Real photos not among the calibration photos (scikit-image's), fitted to height x width."""
    from references import v2_reference as R

    return np.stack([fit_photo(p, height, width) for p in R.photos(size=512, names=("motorcycle_left.png",
                                                                                       "hubble_deep_field.jpg"))])


@pytest.fixture(scope="session")
def hayao_v2(tmp_path_factory):
    """The real AnimeGANv2 Hayao weights (the maintainers' reference, dequantised) saved as a model path."""
    from references import v2_reference as R

    if not os.path.isfile(R.REFERENCE_V2):
        pytest.skip(R.SKIP_REASON)
    pytest.importorskip("skimage")
    from anime_gan import save_generator

    g = R.official_generator()
    path = tmp_path_factory.mktemp("hayao_v2")
    save_generator(g, path)
    return path


# --------------------------------------------------------------------------------------------
# Quick: what cannot work is one sentence; auto reads the table per precision; the size bound


@pytest.mark.parametrize("runtime, precision, sentence", [
    ("tensorflow", "int8", "--runtime=tensorflow runs float32 only; int8 runs in onnxruntime or openvino "
                           "(or --runtime=auto)."),
    ("litert", "int8", "--runtime=litert runs float32 and float16 only; int8 runs in onnxruntime or openvino "
                       "(or --runtime=auto)."),
    ("onnxruntime", "float16", "--runtime=onnxruntime runs float32 and int8 only; float16 runs in openvino or "
                               "litert (or --runtime=auto)."),
    ("auto", "int4", "--precision=int4 is not one of float32, float16, int8."),
])
def test_a_pair_that_cannot_work_is_one_sentence_before_loading(tmp_path, runtime, precision, sentence):
    # The model path does not exist: the pair is refused before anything is loaded.
    with pytest.raises(ConfigError) as e:
        runtimes.load_model(tmp_path / "nothing_here", runtime=runtime, precision=precision)
    assert str(e.value) == sentence
    assert precision not in C.RUNTIME_PRECISIONS.get(runtime, ())


def test_export_and_api_refuse_a_precision_their_format_lacks(tmp_path):
    import anime_gan
    from anime_gan.deploy.export import export

    with pytest.raises(ConfigError) as e:
        export(str(tmp_path / "none"), str(tmp_path / "out"), format="saved_model", precision="int8")
    assert str(e.value) == ("--format=saved_model is written in float32 only; --precision=int8 is for onnx "
                            "(float32 int8), tflite (float32 float16 int8 int8_full).")
    with pytest.raises(ConfigError, match="need a model path"):
        anime_gan.stylize(np.zeros((16, 16, 3), np.uint8), model=seeded_generator(0), precision="int8")


def _entry(ms_db):
    return {name: {"ms": ms, "db": db} for name, (ms, db) in ms_db.items()}


def test_auto_with_a_precision_picks_from_that_precisions_measurements(tmp_path, cache):
    pytest.importorskip("openvino")
    table = tmp_path / "runtimes.json"
    runtimes.record("v2", _entry({"tensorflow": (400, None), "onnxruntime": (300, 90), "openvino": (350, 95)}),
                    "test", path=table)
    runtimes.record("v2", _entry({"onnxruntime": (250, 36.0), "openvino": (120, 36.5)}), "test", path=table,
                    precision="int8")
    assert runtimes.choose("v2", generator=object(), path=table) == "onnxruntime"
    assert runtimes.choose("v2", generator=object(), path=table, precision="int8") == "openvino"
    runtimes.record("v2", _entry({"onnxruntime": (100, 36.0), "openvino": (120, 36.5)}), "test", path=table,
                    precision="int8")
    assert runtimes.choose("v2", generator=object(), path=table, precision="int8") == "onnxruntime"
    # float16 has one candidate that auto may pick (litert is never picked): no table needed.
    assert runtimes.choose("v2", generator=object(), path=tmp_path / "none.json", precision="float16") == "openvino"
    text = runtimes.format_table(runtimes.read_table(table))
    assert "auto at int8 picks onnxruntime: the fastest that runs int8" in text
    assert "auto at float32 picks onnxruntime: the fastest at >= 60 dB from TensorFlow float32" in text


def test_int8_refuses_images_beyond_its_bound_in_one_sentence():
    stylizer = runners.RuntimeStylizer(lambda x: x, 8192, "test", "onnxruntime", precision="int8")
    side = int(np.sqrt(runners.INT8_MAX_PIXELS)) + 1
    with pytest.raises(ImageError) as e:
        stylizer.check_size(side, side, "big.png")
    assert str(e.value).startswith(f"big.png is {side}x{side}, more than the {runners.INT8_MAX_PIXELS // 2**20} "
                                   "megapixels int8 runs whole; stylize it with --precision=float32")
    stylizer.check_size(1080, 1920)  # full HD runs
    stylizer.check_size(side - 1, side - 1)  # within the bound: no error
    float_stylizer = runners.RuntimeStylizer(lambda x: x, 8192, "test", "onnxruntime")
    float_stylizer.check_size(side, side)


# --------------------------------------------------------------------------------------------
# Slow: the quantised models themselves


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_is_within_35_db_of_float32_on_the_real_v2_weights(hayao_v2, cache, runtime):
    pytest.importorskip(runtime)
    from anime_gan.inference import load_model

    photos = held_out_photos(*SIZE)
    expected = load_model(hayao_v2)(photos)
    out = load_model(hayao_v2, runtime=runtime, precision="int8")(photos)
    assert out.shape == photos.shape and out.dtype == np.uint8
    scores = [psnr(a, b) for a, b in zip(out, expected)]
    assert min(scores) >= MIN_INT8_DB, scores
    assert max(scores) < 60, scores  # int8 for real (float32 in these runtimes is 75 dB and more)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_int8_on_random_weights_runs_at_any_size_and_keeps_it(tmp_path, cache, arch):
    from anime_gan import save_generator
    from anime_gan.inference import load_model
    from anime_gan.nets import build_generator

    pytest.importorskip("skimage")
    g = seeded_generator(5) if arch == "v1" else build_generator("float32", arch="v2")
    save_generator(g, tmp_path / "model")
    stylizer = load_model(tmp_path / "model", runtime="onnxruntime", precision="int8")
    for size in [(37, 53), (64, 64), (90, 161)]:
        x = np.random.default_rng(0).integers(0, 256, (2, *size, 3), np.uint8)
        y = stylizer(x)
        assert y.shape == x.shape and y.dtype == np.uint8


@pytest.mark.slow
def test_int8_video_keeps_its_audio_frames_and_timestamps(hayao_v2, cache, tmp_path):
    from test_video import audio_packets, make_video, streams

    from anime_gan import inference
    from helpers import textured

    frames = [textured((72, 128, 3), seed=600 + i) for i in range(6)]
    clip, out = tmp_path / "clip.mp4", tmp_path / "anime.mp4"
    make_video(clip, frames, rate=12, audio="aac")
    summary = inference.run(str(hayao_v2), str(clip), str(out), batch_size=4, runtime="auto", precision="int8",
                            show_progress=False)
    assert summary.ok, summary
    before, after = streams(clip), streams(out)
    assert after["video"][:5] == before["video"][:5]  # codec, frames, fps, width, height
    assert after["audio"] == before["audio"]
    assert audio_packets(out) == audio_packets(clip)  # AAC copied packet for packet, timestamps included


@pytest.mark.slow
def test_int8_onnx_export_runs_like_load_model(hayao_v2, cache, tmp_path):
    from anime_gan.deploy.export import export
    from anime_gan.inference import load_model

    path = export(str(hayao_v2), str(tmp_path / "hayao-int8.onnx"), format="onnx", precision="int8")
    photos = held_out_photos(96, 140)
    with pytest.raises(ConfigError, match="is an int8 model; run it with --precision=int8"):
        load_model(path, runtime="onnxruntime")
    exported = load_model(path, runtime="onnxruntime", precision="int8")(photos)
    expected = load_model(hayao_v2)(photos)
    assert min(psnr(a, b) for a, b in zip(exported, expected)) >= MIN_INT8_DB - 2  # a small size: less margin
    logging.getLogger(__name__).info("exported %s", path)
