"""The page's precision choice: listed from constants.PRECISIONS, refused in one sentence when unknown,
each (model, precision) loaded once in its runtime, and an int8 upload equal to the Python API's."""

import io

import cv2
import numpy as np
import pytest

pytest.importorskip("flask")

from anime_gan import constants as C  # noqa: E402
from anime_gan import inference  # noqa: E402
from anime_gan.web import choices  # noqa: E402
from anime_gan.web import server as web_server  # noqa: E402
from helpers import seeded_generator, textured  # noqa: E402


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(13)


@pytest.fixture(scope="module")
def models(weights_dir, tmp_path_factory):
    return choices.Models(choices.find_models([str(weights_dir)], directory=tmp_path_factory.mktemp("none")))


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    return web_server.create_app(models, tmp_path_factory.mktemp("client"), 2**20).test_client()


def post(client, rgb, **form):
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    form = {"model": "m0", "adjust": "none", **form, "file": (io.BytesIO(data.tobytes()), "photo.png")}
    return client.post("/api/stylize", data=form, content_type="multipart/form-data")


def test_the_page_offers_the_precisions_and_refuses_others_in_one_sentence(client):
    assert client.get("/api/config").get_json()["precisions"] == list(C.PRECISIONS)
    answer = post(client, textured((20, 24, 3), seed=1), precision="int4")
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "no precision 'int4' on this page; pick one of float32, float16, int8."}


def test_each_model_and_precision_is_loaded_once_in_its_runtime(weights_dir, tmp_path, monkeypatch):
    loads = []

    def load_model(path, max_side=None, runtime="tensorflow", precision="float32"):
        loads.append((path, runtime, precision))
        return object()

    monkeypatch.setattr(inference, "load_model", load_model)
    models = choices.Models(choices.find_models([str(weights_dir)], directory=tmp_path))
    first = models.get("m0", "int8")
    assert models.get("m0", precision="int8") is first and models.is_loaded("m0", "int8")
    assert not models.is_loaded("m0")
    assert models.get("m0") is not first
    assert loads == [(str(weights_dir), "auto", "int8"), (str(weights_dir), "tensorflow", "float32")]


@pytest.mark.slow
def test_an_int8_upload_is_the_python_apis_int8_result(client, weights_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("skimage")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    photo = textured((60, 90, 3), seed=2)
    answer = post(client, photo, precision="int8").get_json()
    assert answer["precision"] == "int8", answer
    result = cv2.imdecode(np.frombuffer(client.get(answer["result"]).data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    import anime_gan

    expected = anime_gan.stylize(photo, model=str(weights_dir), runtime="auto", precision="int8")
    np.testing.assert_array_equal(result, expected)
    float32 = anime_gan.stylize(photo, model=str(weights_dir))
    assert np.abs(result.astype(int) - float32).max() > 0  # int8 for real, not the float32 model
