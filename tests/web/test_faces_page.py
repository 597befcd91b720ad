"""The page's "Faces" toggle (stylize --faces) in headless Chromium: the result equals the Python API's face
mode, the caption says what was found, and unticking it gives the plain result again."""

import os

import pytest

pytest.importorskip("flask")
pytest.importorskip("mtcnn")
skimage_data = pytest.importorskip("skimage.data")

import anime_gan  # noqa: E402
from anime_gan.web import choices  # noqa: E402
from helpers import max_diff, read_rgb, seeded_generator, write_rgb  # noqa: E402
from test_app import browser, download, start, upload  # noqa: E402,F401 - `browser` is a fixture


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(12)


@pytest.mark.slow
def test_faces_toggle_pastes_the_faces(weights_dir, browser, tmp_path):  # noqa: F811
    models = choices.Models(choices.find_models([str(weights_dir)], directory=tmp_path / "none"))
    server = start(models, tmp_path / "work")
    try:
        with models.lock:
            stylizer = models.get("m0")
        photo = skimage_data.astronaut()[:320, 64:384]
        write_rgb(tmp_path / "astronaut.png", photo)
        page = browser.new_page(accept_downloads=True)
        page.goto(server.url)
        page.wait_for_function("document.body.dataset.state === 'idle'")
        page.check("#faces")
        assert upload(page, tmp_path / "astronaut.png") == "done"
        assert page.inner_text("#result_caption").endswith("· 1 face")
        got = download(page, tmp_path / "faces.png")
        assert max_diff(got, anime_gan.stylize(photo, model=stylizer, faces=True)) <= 1
        plain = anime_gan.stylize(photo, model=stylizer)
        assert max_diff(got, plain) > 50

        page.uncheck("#faces")  # a control changed: the image runs again, plainly
        page.wait_for_function("document.body.dataset.state === 'done' && !document.querySelector("
                               "'#result_caption').textContent.includes('face')")
        assert max_diff(download(page, tmp_path / "plain.png"), plain) <= 1
        page.close()
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "plain.png") and read_rgb(tmp_path / "plain.png").shape == photo.shape
