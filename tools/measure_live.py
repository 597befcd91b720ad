"""Maintainers: the page's live camera, timed per frame with the official AnimeGANv2 Hayao weights.

usage: .venv/bin/python tools/measure_live.py [--size=256] [--precision=float32] [--frames=60] [--seconds=20]

Serves the Hayao weights (the maintainers' reference, dequantised; see tools/make_docs_pictures.py) with
the page's own app on 127.0.0.1, then
1. posts --frames camera-like JPEGs to /api/live/<id>/frame over one keep-alive connection from Python
   and prints the medians of the server's decode, wait (for the model's lock), model and encode times
   (its Server-Timing header), of the rest of the round trip (HTTP: werkzeug, Flask, the socket, this
   client in the same process), and of a plain Stylizer call; then the same with a stand-in model that
   returns its frame at once, and one that first sleeps as long as the model took (what the page costs
   around any model, and how much of it is waiting itself);
2. streams Chromium's fake camera through the page for --seconds (Debian's headless Chromium through
   Playwright; skipped without it) and prints the frames/s and per-frame times the page shows.
docs/deploy.md's page section holds the results.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def camera_like(size, i):
    """A smooth picture that moves from frame to frame (a JPEG of noise would time the codec, not a camera)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([np.sin(6 * x + i / 5), np.cos(5 * y - i / 7), np.sin(4 * (x + y) + i / 3)], -1)
    return ((rgb + 1) * 127.5).astype(np.uint8)


def over_http(port, size, precision, frames):
    import cv2

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(path, body, content_type):
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response, response.read()

    response, data = post("/api/live/start", f"model=m0&size={size}&precision={precision}".encode(),
                          "application/x-www-form-urlencoded")
    if response.status != 200:
        sys.exit(f"error: {json.loads(data)['error']}")
    sid = json.loads(data)["session"]
    rows = []
    for i in range(frames):
        body = cv2.imencode(".jpg", camera_like(size, i), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        started = time.perf_counter()
        response, _ = post(f"/api/live/{sid}/frame", body, "image/jpeg")
        round_trip = (time.perf_counter() - started) * 1000
        times = {k: float(v) for k, v in re.findall(r"(\w+);dur=([\d.]+)", response.getheader("Server-Timing"))}
        rows.append({**times, "HTTP": round_trip - sum(times.values()), "round trip": round_trip})
    post(f"/api/live/{sid}/stop", b"", "text/plain")
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def stand_in_models(choices, seconds):
    """Models whose one model returns its frame after `seconds`: the route's own cost."""

    def stand_in(images):
        time.sleep(seconds)
        return images.copy()

    class StandIn(choices.Models):
        def get(self, key, precision="float32"):
            self.choice(key)
            return stand_in

    return StandIn([choices.ModelChoice("m0", "stand-in", "stand-in", "", "returns its frame", "--model")])


def in_chromium(url, size, precision, seconds):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.body.dataset.state === 'idle'")
        page.click("#mode_live")
        page.select_option("#live_size", str(size))
        page.select_option("#live_precision", precision)
        page.click("#live_start")
        page.wait_for_function("document.body.dataset.live === 'on' || document.body.dataset.live === 'error'",
                               timeout=300_000)
        if page.evaluate("document.body.dataset.live") == "error":
            sys.exit(f"error: {page.inner_text('#error')}")
        shown_frame = "Number(document.getElementById('live_result').dataset.frame || 0)"
        page.wait_for_function(f"{shown_frame} >= 2", timeout=300_000)
        first, started = page.evaluate(shown_frame), time.monotonic()
        time.sleep(seconds)
        counted = (page.evaluate(shown_frame) - first) / (time.monotonic() - started)
        shown = (f"{page.inner_text('#live_fps')} ({counted:.2f} frames/s counted over {seconds:.0f} s); "
                 f"{page.inner_text('#live_timing')}")
        page.click("#live_stop")
        browser.close()
    return shown


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per frame

    import anime_gan
    from make_docs_pictures import hayao_v2_generator

    from anime_gan.web import choices, server

    with tempfile.TemporaryDirectory(prefix="measure_live-") as folder:
        model = os.path.join(folder, "hayao-v2")
        anime_gan.save_generator(hayao_v2_generator(), model)
        models = choices.Models(choices.find_models([model], directory=folder))
        page = server.Server(server.create_app(models, os.path.join(folder, "work")), "127.0.0.1", 0).start()
        try:
            medians = over_http(page.port, args.size, args.precision, args.frames)
            with models.lock:
                stylizer = models.get("m0", precision=args.precision)
            image = camera_like(args.size, 0)[None]
            calls = []
            for _ in range(10):
                started = time.perf_counter()
                stylizer(image)
                calls.append((time.perf_counter() - started) * 1000)
            print(f"{args.size}x{args.size} {args.precision}, load average {os.getloadavg()[0]:.1f}, medians of "
                  f"{args.frames} frames (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
                  + f"; a plain Stylizer call {statistics.median(calls):.1f}")
            for seconds in (0.0, medians["model"] / 1000):
                stand_in = server.Server(server.create_app(stand_in_models(choices, seconds),
                                                           os.path.join(folder, f"work{seconds}")), "127.0.0.1", 0)
                try:
                    found = over_http(stand_in.start().port, args.size, args.precision, min(args.frames, 20))
                finally:
                    stand_in.stop()
                print(f"with a stand-in model sleeping {seconds * 1000:.0f} ms (ms): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in found.items()))
            if os.path.exists(CHROMIUM):
                print("page:", in_chromium(page.url, args.size, args.precision, args.seconds))
        finally:
            page.stop()


if __name__ == "__main__":
    main()
