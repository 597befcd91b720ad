"""The page's live camera (`anime_gan.web.live`): its routes over plain HTTP (the one-sentence answers to
a bad frame, a missing stream and a second stream; the lease; keep-alive), and the page in headless
Chromium with its fake camera (Debian's /usr/bin/chromium through Playwright): frames come back stylized
(one compared with `anime_gan.stylize` of the frame the server received), the rate is on screen, a
second page is told the camera is in use and can still upload, and stopping releases the camera. With the
maintainers' AnimeGANv2 reference (references/v2_reference.py), a slow test screenshots the live mode to
/tmp/live_screenshot.png and prints the page's per-frame times."""

import base64
import http.client
import json
import os
import re
import time
import uuid

import cv2
import numpy as np
import pytest

pytest.importorskip("flask")

from anime_gan import constants as C  # noqa: E402
from anime_gan.web import choices, live  # noqa: E402
from anime_gan.web import server as web_server  # noqa: E402
from helpers import max_diff, read_rgb, seeded_generator, textured, write_rgb  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SIZE = 128  # the browser test's stream (the smallest offered: the seeded v1 generator is slow)


@pytest.fixture(scope="module")
def generator():
    return seeded_generator(12)


@pytest.fixture(scope="module")
def models(weights_dir, tmp_path_factory):
    return choices.Models(choices.find_models([str(weights_dir)], directory=tmp_path_factory.mktemp("no_models")))


@pytest.fixture(scope="module")
def stylizer(models):
    with models.lock:
        return models.get("m0")


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    return web_server.create_app(models, tmp_path_factory.mktemp("live_app"), 2**20)


@pytest.fixture(scope="module")
def server(app):
    server = web_server.Server(app, "127.0.0.1", 0).start()
    yield server
    server.stop()


@pytest.fixture()
def streams(app):
    streams = app.extensions["anime_gan"]["live"]
    yield streams
    streams.active = None  # each test starts with the camera free


def jpeg(rgb, quality=90):
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def decode(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


class Client:
    """One keep-alive HTTP/1.1 connection to the server, as a browser keeps one."""

    def __init__(self, server):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def post(self, path, body=b"", content_type="image/jpeg", form=None):
        if form is not None:
            body, content_type = "&".join(f"{k}={v}" for k, v in form.items()).encode(), \
                "application/x-www-form-urlencoded"
        self.connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self.connection.getresponse()
        data = response.read()
        return response, data

    def get(self, path):
        self.connection.request("GET", path)
        return json.loads(self.connection.getresponse().read())

    def start(self, **form):
        response, data = self.post("/api/live/start", form={"model": "m0", **form})
        return response.status, json.loads(data)


def as_sent_back(image):
    """image through the JPEG the server answers with (its quality, OpenCV's codec)."""
    return decode(jpeg(image, live.JPEG_QUALITY))


def differences(got, frame, stylizer):
    """The largest difference of a returned frame from `anime_gan.stylize` of the frame the server received
    (both through the answer's JPEG), and the mean one from the frame itself (where an unstylized answer
    would be)."""
    import anime_gan

    expected = as_sent_back(anime_gan.stylize(frame, model=stylizer))
    return max_diff(got, expected), float(np.abs(got.astype(np.int16) - as_sent_back(frame)).mean())


# --------------------------------------------------------------------------------------------
# The routes over HTTP


def test_frames_over_http_are_stylized_on_one_kept_alive_connection(server, streams, stylizer):
    client = Client(server)
    status, started = client.start(size=SIZE)
    assert status == 200 and (started["size"], started["precision"]) == (SIZE, "float32")
    sid = started["session"]
    sockets = set()
    for seed in (1, 2):
        sent = jpeg(textured((SIZE, SIZE, 3), seed=seed))
        response, data = client.post(f"/api/live/{sid}/frame", sent)
        sockets.add(id(client.connection.sock))
        assert (response.status, response.version, response.getheader("Content-Type")) == (200, 11, "image/jpeg")
        number = int(response.getheader("X-Frame"))
        assert number == seed
        times = dict(re.findall(r"(\w+);dur=([\d.]+)", response.getheader("Server-Timing")))
        assert set(times) == {"decode", "wait", "model", "encode"} and float(times["model"]) > 0
        received = dict(streams.active.received)[number]  # the frame as the server decoded it
        assert np.array_equal(received, decode(sent))  # the frame sent, decoded, nothing else
        largest, from_photo = differences(decode(data), received, stylizer)
        assert largest <= 1 and from_photo > 10, (largest, from_photo)
    assert len(sockets) == 1  # HTTP/1.1 keep-alive: one connection for every frame
    assert client.post(f"/api/live/{sid}/stop")[1] == b'{"stopped":true}\n'
    assert streams.active is None


def test_bad_frames_and_streams_get_one_sentence(server, streams):
    client = Client(server)
    assert client.start(size=300) == (400, {"error": "the live size must be one of 128, 192, 256, 384, 512 pixels, "
                                                     "not '300'."})
    assert client.start(precision="bfloat16") == (400, {"error": "no precision 'bfloat16' on this page; pick one of "
                                                              f"{', '.join(C.PRECISIONS)}."})
    assert client.start(model="m7")[1]["error"].startswith("no model 'm7' on this page; pick one of the list")
    assert streams.active is None  # none of them holds the camera

    status, started = client.start(size=SIZE)
    sid = started["session"]
    response, data = client.post(f"/api/live/{sid}/frame", b"not a picture")
    assert (response.status, json.loads(data)) == (400, {
        "error": "the frame is not a JPEG or PNG picture (13 bytes); send the camera frame as image/jpeg."})
    response, data = client.post(f"/api/live/{sid}/frame", jpeg(textured((SIZE, 200, 3), seed=3)))
    assert (response.status, json.loads(data)) == (400, {
        "error": f"the frame is 200×{SIZE} pixels, not the {SIZE}×{SIZE} this stream was started with; send "
                 "frames of that size or start the stream again at the size you want."})
    other = uuid.uuid4().hex[:16]
    response, data = client.post(f"/api/live/{other}/frame", jpeg(textured((SIZE, SIZE, 3), seed=4)))
    assert (response.status, json.loads(data)) == (404, {
        "error": f"there is no live stream '{other}' on this server (it was stopped, or no frame came for 5 s); "
                 "start the camera again."})
    assert client.start(size=SIZE) == (409, {"error": live.busy_message()})  # a second stream
    assert client.get("/api/live") == {"busy": True, "message": live.busy_message()}  # asked before the camera
    assert "another page is using the live camera (this server runs one stream at a time)" in live.busy_message()
    response, _ = client.post(f"/api/live/{sid}/frame", jpeg(textured((SIZE, SIZE, 3), seed=5)))
    assert response.status == 200  # the bad frames did not end the stream
    client.post(f"/api/live/{sid}/stop")
    assert client.get("/api/live") == {"busy": False, "message": None}


def test_the_lease_ends_a_stream_that_sends_nothing(server, streams, monkeypatch):
    monkeypatch.setattr(live, "LEASE_SECONDS", 0.5)
    client = Client(server)
    first = client.start(size=SIZE)[1]["session"]
    assert client.start(size=SIZE)[0] == 409
    time.sleep(0.6)  # a closed tab: no frame, no stop
    status, second = client.start(size=SIZE)
    assert status == 200
    response, data = client.post(f"/api/live/{first}/frame", jpeg(textured((SIZE, SIZE, 3), seed=6)))
    assert response.status == 404 and "there is no live stream" in json.loads(data)["error"]
    assert streams.active.sid == second["session"]


# --------------------------------------------------------------------------------------------
# The page in a browser with a fake camera


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FAKE_CAMERA)
        yield browser
        browser.close()


SHOWN = """() => {
    const canvas = document.getElementById("live_result");
    return [Number(canvas.dataset.frame), canvas.toDataURL("image/png")];
}"""


def shown_frame(page):
    """(the server's number of the frame on screen, its RGB pixels as the page drew them)."""
    number, url = page.evaluate(SHOWN)
    return number, decode(base64.b64decode(url.split(",", 1)[1]))


def wait_for_frames(page, count, timeout=120_000):
    page.wait_for_function(f"Number(document.getElementById('live_result').dataset.frame) >= {count}",
                           timeout=timeout)


def open_live(page, url):
    page.goto(url)
    page.wait_for_function("document.body.dataset.state === 'idle'")
    page.click("#mode_live")


def test_the_page_streams_the_camera_stylized(server, streams, browser, stylizer, tmp_path):
    import anime_gan

    page = browser.new_page()
    open_live(page, server.url)
    assert (page.input_value("#live_size"), page.input_value("#live_precision")) == ("256", "float32")
    page.select_option("#live_size", str(SIZE))
    page.click("#live_start")
    wait_for_frames(page, 3)
    assert page.evaluate("document.body.dataset.live") == "on"

    number, got = shown_frame(page)
    received = dict(streams.active.received)[number]  # what the server got from the camera
    assert got.shape == (SIZE, SIZE, 3) and received.std() > 5  # the fake camera's picture, not a blank
    largest, from_photo = differences(got, received, stylizer)  # decoded by Chromium, not OpenCV
    assert largest <= 1 and from_photo > 10, (largest, from_photo)

    page.wait_for_function("/^[\\d.]+ frames\\/s$/.test(document.getElementById('live_fps').textContent)")
    fps = float(page.inner_text("#live_fps").split()[0])
    assert fps > 0
    assert page.inner_text("#live_timing").startswith("Per frame: model ")

    # A second page: told in one sentence, its camera left closed; its upload still runs.
    other = browser.new_page()
    open_live(other, server.url)
    other.click("#live_start")
    other.wait_for_function("document.body.dataset.live === 'error'")
    assert other.inner_text("#error") == live.busy_message()
    assert other.evaluate("document.getElementById('live_camera').srcObject") is None
    other.click("#mode_upload")
    photo = textured((40, 52, 3), seed=31)
    write_rgb(tmp_path / "photo.png", photo)
    before = page.evaluate("Number(document.getElementById('live_result').dataset.frame)")
    other.set_input_files("#file", str(tmp_path / "photo.png"))
    other.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    assert other.evaluate("document.body.dataset.state") == "done"
    with other.expect_download() as info:
        other.click("#download")
    info.value.save_as(str(tmp_path / "got.png"))
    assert max_diff(read_rgb(tmp_path / "got.png"), anime_gan.stylize(photo, model=stylizer)) <= 1
    wait_for_frames(page, before + 2)  # the stream went on

    # Stop: every camera track ended, the server's stream released, the camera free for the other page.
    page.evaluate("window.tracks = document.getElementById('live_camera').srcObject.getTracks()")
    page.click("#live_stop")
    page.wait_for_function("window.tracks.length > 0 && window.tracks.every((t) => t.readyState === 'ended')")
    page.wait_for_function("document.body.dataset.live === 'off'")
    deadline = time.monotonic() + 10
    while streams.active is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams.active is None
    other.click("#mode_live")
    other.click("#live_start")
    other.wait_for_function("document.body.dataset.live === 'on'", timeout=60_000)
    sid = streams.active.sid
    other.close(run_before_unload=True)  # a closed tab ends its stream at once
    deadline = time.monotonic() + 10
    while streams.active is not None and streams.active.sid == sid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams.active is None
    page.close()


@pytest.mark.slow  # builds the v2 generator and streams for several seconds
def test_screenshot_of_the_live_mode_with_the_v2_reference_weights(browser, tmp_path, tmp_path_factory):
    from references import v2_reference as R

    if not os.path.isfile(R.REFERENCE_V2):
        pytest.skip(R.SKIP_REASON)
    from anime_gan import save_generator

    g = R.official_generator()
    model = tmp_path / "hayao-v2-reference"
    save_generator(g, model)
    models = choices.Models(choices.find_models([str(model)], directory=tmp_path_factory.mktemp("none")))
    server = web_server.Server(web_server.create_app(models, tmp_path_factory.mktemp("live_v2")), "127.0.0.1",
                               0).start()
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        open_live(page, server.url)
        page.click("#live_start")
        wait_for_frames(page, 40)
        print(f"\n{page.inner_text('#live_fps')}: {page.inner_text('#live_timing')}")
        page.screenshot(path="/tmp/live_screenshot.png", full_page=True)
        page.click("#live_stop")
        page.close()
    finally:
        server.stop()
    assert os.path.getsize("/tmp/live_screenshot.png") > 10_000
