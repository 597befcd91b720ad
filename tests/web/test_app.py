"""The web page (`anime_gan.app`, its library `anime_gan.web`): the models it finds, its answers to good
and bad uploads (the command line's own sentences), a video with its progress, and the page itself
driven in headless Chromium (Debian's /usr/bin/chromium through Playwright; no browser is downloaded):
upload, result, download, error, a second upload. With the maintainers' AnimeGANv2 reference
(references/v2_reference.py), a screenshot of the page with a real result is written to a temporary folder
(and copied to /tmp/app_screenshot.png); tools/make_app_screenshot.py makes docs/app.png."""

import base64
import io
import os
import pathlib
import shutil
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("flask")

from anime_gan.errors import ConfigError  # noqa: E402
from anime_gan.web import choices, uploads  # noqa: E402
from anime_gan.web import server as web_server  # noqa: E402
from helpers import max_diff, read_rgb, read_video, seeded_generator, textured, write_rgb  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
UPLOAD_LIMIT = 2**20  # the test servers accept 1 MiB


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(11)


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("no_models")  # so that ./checkpoints of the checkout is not listed


def start(models, work_dir):
    return web_server.Server(web_server.create_app(models, work_dir, UPLOAD_LIMIT), "127.0.0.1", 0).start()


@pytest.fixture(scope="module")
def models(weights_dir, empty_dir):
    """One Models for the module's server and client: the model loads and traces once."""
    return choices.Models(choices.find_models([str(weights_dir)], directory=empty_dir))


@pytest.fixture(scope="module")
def stylizer(models):
    with models.lock:
        return models.get("m0")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    server = start(models, tmp_path_factory.mktemp("app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    return web_server.create_app(models, tmp_path_factory.mktemp("client"), UPLOAD_LIMIT).test_client()


@pytest.fixture(scope="module")
def bad_files(weights_dir, tmp_path_factory):
    """Bad uploads and what the command line says of each: {name: (bytes, the command's sentence)}.

    The sentences come from `anime_gan.inference.run` (what `python -m anime_gan.stylize` prints) on the
    same files in a folder, with their path cut to their name as the page names them. --max_side=64
    makes big.png too large."""
    from anime_gan import inference

    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.jpg").write_bytes(b"these are my notes, not a photo\n")
    write_rgb(folder / "dot.png", np.full((1, 1, 3), 200, np.uint8))
    write_rgb(folder / "big.png", textured((70, 90, 3), seed=5))
    (folder / "clip.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    summary = inference.run(str(weights_dir), str(folder), str(tmp_path_factory.mktemp("bad_out")), max_side=64,
                            show_progress=False)
    assert len(summary.failed) == 4, summary.failed
    said = {pathlib.Path(path).name: reason.replace(str(path), pathlib.Path(path).name)
            for path, reason in summary.failed}
    return {name: ((folder / name).read_bytes(), said[name]) for name in said}


def png_bytes(rgb):
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return data.tobytes()


def post(client, name, data, **form):
    form = {"model": "m0", "adjust": "none", **form, "file": (io.BytesIO(data), name)}
    return client.post("/api/stylize", data=form, content_type="multipart/form-data")


# --------------------------------------------------------------------------------------------
# The models it offers


def test_lists_given_official_and_trained_models_once_each(generator, weights_dir, tmp_path):
    from anime_gan import save_generator
    from anime_gan.nets import GeneratorV2

    folder = tmp_path / "checkpoints"
    official = folder / "paprika-v2"
    v2 = GeneratorV2()
    v2.build()
    save_generator(v2, official)
    (official / "SOURCE.json").write_text('{"name": "paprika-v2"}')
    run = folder / "my_run"
    (run / "generator").mkdir(parents=True)
    shutil.copy(weights_dir / "generator.weights.h5", run / "generator")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("not a model")
    (folder / "paprika-v2.download").mkdir()  # a download in progress is no model

    found = choices.find_models([str(run)], directory=folder)
    described = [(c.name, c.arch, c.style, c.origin) for c in found]
    assert described == [
        (str(run), "v1", "my_run", "--model"),  # given, so first; found again in the folder, not listed twice
        ("paprika-v2", "v2", "AnimeGANv2 Paprika, epoch 54", "official weights"),
    ]
    assert len({c.key for c in found}) == 2

    with pytest.raises(ConfigError, match=r"^--model=.*nowhere: no model at .*nowhere"):
        choices.find_models([str(tmp_path / "nowhere")], directory=folder)
    assert choices.find_models([], directory=tmp_path / "empty") == []
    assert "make train" in choices.no_model_message(tmp_path / "empty")


def test_the_command_serves_on_127_0_0_1_until_ctrl_c(weights_dir, empty_dir):
    import json
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    from helpers import ENV, REPO

    env = {**ENV, "ANIME_GAN_WEIGHTS_DIR": str(empty_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "anime_gan.app", f"--model={weights_dir}", "--port=0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0] == f"models: {weights_dir} ({weights_dir.name})\n", lines
        url = re.fullmatch(r"open (http://127\.0\.0\.1:\d+/) in a browser \(Ctrl-C stops\)\n", lines[1]).group(1)
        with urllib.request.urlopen(url + "api/config", timeout=30) as response:
            assert [m["path"] for m in json.load(response)["models"]] == [str(weights_dir)]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "stopped\n"), err[-2000:]


# --------------------------------------------------------------------------------------------
# Answers over HTTP


def test_image_result_equals_the_python_api(client, stylizer):
    import anime_gan

    photo = textured((45, 67, 3), seed=2)
    for adjust in ("none", "luma"):
        answer = post(client, "cat.png", png_bytes(photo), adjust=adjust)
        assert answer.status_code == 200, answer.json
        body = answer.json
        assert (body["kind"], body["width"], body["height"]) == ("image", 67, 45)
        result = client.get(body["result"] + "?download=1")
        assert result.headers["Content-Disposition"] == "attachment; filename=cat_anime.png"
        got = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        # The same loaded model (loading it again would trace its graph again, ~10 s).
        expected = anime_gan.stylize(photo, model=stylizer, adjust_brightness=adjust)
        assert got.shape == photo.shape and max_diff(got, expected) <= 1


def test_bad_uploads_get_the_command_lines_sentence_and_the_server_goes_on(client, bad_files):
    for name in ("notes.jpg", "dot.png"):
        data, sentence = bad_files[name]
        answer = post(client, name, data)
        assert (answer.status_code, answer.json) == (400, {"error": sentence})
    data, sentence = bad_files["big.png"]
    assert post(client, "big.png", data).status_code == 200  # within the server's cap (4096)
    assert post(client, "big.png", data, max_side="64").json == {"error": sentence}  # the page's cap control

    assert post(client, "x.png", data, max_side="9000").json["error"].startswith(
        "the size cap must be a whole number of pixels from 8 to 4096")
    assert "pick one of the list" in post(client, "x.png", data, model="m9").json["error"]
    assert post(client, "x.png", data, adjust="bgr").json["error"].startswith("adjust_brightness must be official")

    huge = post(client, "huge.png", b"\0" * (UPLOAD_LIMIT + 1))
    assert huge.status_code == 413
    assert "more than the 1 MB this page accepts; send a smaller file or start the app with a larger " \
           "--max_upload_mb." in huge.json["error"]
    assert post(client, "dot2.png", png_bytes(textured((16, 16, 3), seed=1))).status_code == 200


def wait_for_job(client, job, timeout=120):
    deadline = time.monotonic() + timeout
    states = []
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job}").json
        states.append(state)
        if state["state"] in ("done", "failed"):
            return state, states
        time.sleep(0.2)
    raise AssertionError(f"the video job did not finish in {timeout} s: {states[-1]}")


def test_a_corrupt_video_is_told_in_the_command_lines_sentence(client, bad_files):
    data, sentence = bad_files["clip.mp4"]
    answer = post(client, "clip.mp4", data)
    assert answer.status_code == 200 and answer.json["kind"] == "video"
    state, _ = wait_for_job(client, answer.json["job"])
    assert (state["state"], state["error"]) == ("failed", sentence)


@pytest.mark.slow  # inference.run loads and traces the model again, twice here
def test_video_is_stylized_as_the_command_does_with_a_progress_estimate(client, weights_dir, tmp_path):
    from anime_gan import inference

    clip = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (40, 32))
    for i in range(6):
        writer.write(np.ascontiguousarray(textured((32, 40, 3), seed=40 + i)[..., ::-1]))
    writer.release()
    answer = post(client, "walk.mp4", clip.read_bytes())
    assert answer.json["frames"] == 6
    state, states = wait_for_job(client, answer.json["job"])
    assert state["state"] == "done", state
    assert any(s["state"] == "running" for s in states)
    fractions = [s["estimated_fraction"] for s in states if s["estimated_fraction"] is not None]
    assert all(0 <= f <= 0.99 for f in fractions) and fractions == sorted(fractions)
    video = client.get(state["result"]["video"] + "?download=1")
    assert video.headers["Content-Disposition"] == "attachment; filename=walk_anime.mp4"
    (tmp_path / "page.mp4").write_bytes(video.data)

    reference = tmp_path / "cli.mp4"
    assert inference.run(str(weights_dir), str(clip), str(reference), show_progress=False).ok
    (_, page_frames), (_, cli_frames) = read_video(tmp_path / "page.mp4"), read_video(reference)
    assert len(page_frames) == len(cli_frames) == 6
    assert page_frames[0].shape == (32, 40, 3)
    assert max(max_diff(a, b) for a, b in zip(page_frames, cli_frames)) <= 1


# --------------------------------------------------------------------------------------------
# The page in a browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def upload(page, path, timeout=90_000):
    """Chooses path in the page's file input and waits until the page is done or shows an error."""
    page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=timeout)
    return page.evaluate("document.body.dataset.state")


SEND_AS = """([b64, name, how]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: "image/png" }));
    if (how === "paste") document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data }));
    else document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
}"""


def send(page, path, how):
    """Pastes (Ctrl+V) or drops path into the page, as a browser does, and waits for the answer."""
    page.evaluate(SEND_AS, [base64.b64encode(path.read_bytes()).decode(), path.name, how])
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    return page.evaluate("document.body.dataset.state")


def download(page, path):
    with page.expect_download() as info:
        page.click("#download")
    info.value.save_as(str(path))
    return read_rgb(path)


def test_page_upload_download_error_and_upload_again(server, browser, stylizer, weights_dir, bad_files, tmp_path):
    import anime_gan

    page = browser.new_page(accept_downloads=True)
    page.goto(server.url)
    page.wait_for_function("document.body.dataset.state === 'idle'")
    assert page.inner_text("#model option") == f"{weights_dir.name} · AnimeGAN (v1)"

    first = textured((90, 122, 3), seed=21)
    write_rgb(tmp_path / "street.png", first)
    assert upload(page, tmp_path / "street.png") == "done"
    got = download(page, tmp_path / "got.png")
    assert got.shape == first.shape
    assert max_diff(got, anime_gan.stylize(first, model=stylizer)) <= 1
    assert page.eval_on_selector("#result_img", "img => [img.naturalWidth, img.naturalHeight]") == [122, 90]
    assert pathlib.Path(page.eval_on_selector("#download", "a => a.download")).name == "street_anime.png"

    data, sentence = bad_files["notes.jpg"]
    (tmp_path / "notes.jpg").write_bytes(data)
    assert upload(page, tmp_path / "notes.jpg") == "error"
    assert page.inner_text("#error") == sentence
    assert page.is_hidden("#download")

    (tmp_path / "large.png").write_bytes(b"\0" * (UPLOAD_LIMIT + 10))  # refused by the page before sending
    assert upload(page, tmp_path / "large.png") == "error"
    assert page.inner_text("#error") == uploads.upload_too_large_message("large.png", UPLOAD_LIMIT + 10, UPLOAD_LIMIT)

    second = textured((41, 57, 3), seed=22)
    write_rgb(tmp_path / "second.png", second)
    assert upload(page, tmp_path / "second.png") == "done"
    assert page.is_hidden("#error")
    got = download(page, tmp_path / "got2.png")
    assert got.shape == second.shape
    assert max_diff(got, anime_gan.stylize(second, model=stylizer)) <= 1

    page.select_option("#adjust", "luma")  # a control changed: the last image runs again
    page.wait_for_function("document.body.dataset.state === 'done'")
    got = download(page, tmp_path / "got2_luma.png")
    assert max_diff(got, anime_gan.stylize(second, model=stylizer, adjust_brightness="luma")) <= 1

    for how, seed in (("paste", 23), ("drop", 24)):
        photo = textured((33, 48, 3), seed=seed)
        write_rgb(tmp_path / f"{how}.png", photo)
        assert send(page, tmp_path / f"{how}.png", how) == "done"
        got = download(page, tmp_path / f"got_{how}.png")
        assert max_diff(got, anime_gan.stylize(photo, model=stylizer, adjust_brightness="luma")) <= 1
    page.close()


def test_screenshot_with_the_v2_reference_weights(browser, tmp_path, tmp_path_factory, empty_dir):
    from references import v2_reference as R

    if not os.path.isfile(R.REFERENCE_V2):
        pytest.skip(R.SKIP_REASON)
    skimage = pytest.importorskip("skimage")
    from anime_gan import save_generator

    g = R.official_generator()
    model = tmp_path / "hayao-v2-reference"
    save_generator(g, model)
    photo = cv2.imread(os.path.join(os.path.dirname(skimage.__file__), "data", "coffee.png"))[..., ::-1]
    photo = cv2.resize(photo, (480, 320), interpolation=cv2.INTER_AREA)
    write_rgb(tmp_path / "coffee.png", photo)

    server = start(choices.Models(choices.find_models([str(model)], directory=empty_dir)),
                   tmp_path_factory.mktemp("app_v2"))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(server.url)
        page.wait_for_function("document.body.dataset.state === 'idle'")
        assert upload(page, tmp_path / "coffee.png") == "done"
        assert page.eval_on_selector("#result_img", "img => [img.naturalWidth, img.naturalHeight]") == [480, 320]
        page.wait_for_function("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    finally:
        server.stop()
    shutil.copy(shot, "/tmp/app_screenshot.png")
    print(f"screenshot of the page: {shot} (copied to /tmp/app_screenshot.png)")
    assert shot.stat().st_size > 10_000
