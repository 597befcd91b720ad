"""Maintainers: write docs/app.png, the README's screenshot of the web page with a real result.

usage: .venv/bin/python tools/make_app_screenshot.py [--output=docs/app.png] [--photo=chelsea] [--width=1280]

Writes the official AnimeGANv2 Hayao weights (the maintainers' full-integer TFLite conversion read by
references/v2_reference.py, dequantised; see tools/make_docs_pictures.py) as generator.weights.h5 in a
temporary folder's checkpoints/hayao-v2 (where `python -m anime_gan.pretrained download hayao-v2` puts
them), starts `python -m anime_gan.app --model=checkpoints/hayao-v2` there on 127.0.0.1, drives the page in Debian's headless Chromium (/usr/bin/chromium, or $CHROMIUM) through
Playwright, uploads a scikit-image sample photo, waits for the result and screenshots the whole page.
Only the picture is committed, never the model.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PHOTOS = ("chelsea", "astronaut", "coffee")  # scikit-image's sample photos (skimage.data.<name>())
MODEL = os.path.join("checkpoints", "hayao-v2")  # a catalogue name: the page titles it as the official weights


def write_hayao_weights(folder):
    """The official Hayao weights into folder/MODEL/generator.weights.h5."""
    import anime_gan
    from make_docs_pictures import hayao_v2_generator

    anime_gan.save_generator(hayao_v2_generator(), os.path.join(folder, MODEL))


def sample_photo(name, path):
    """Writes scikit-image's sample photo `name` (RGB) to path as PNG."""
    import cv2
    import skimage.data

    image = getattr(skimage.data, name)()[..., :3]
    if not cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1])):
        sys.exit(f"error: could not write {path}")


class Page:
    """`python -m anime_gan.app` serving one model in a subprocess run in folder; `url` once it listens."""

    def __init__(self, folder, model, weights_dir):
        env = {**os.environ, "PYTHONPATH": ROOT, "ANIME_GAN_WEIGHTS_DIR": weights_dir}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anime_gan.app", f"--model={model}", "--host=127.0.0.1", "--port=0"],
            cwd=folder, env=env, stdout=subprocess.PIPE, text=True)
        self.url = None
        for line in self.proc.stdout:
            print(line, end="", flush=True)
            found = re.match(r"open (http://\S+) in a browser", line)
            if found:
                self.url = found.group(1)
                break
        if self.url is None:
            self.stop()
            sys.exit(f"error: the page did not start (exit status {self.proc.returncode})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the command stops on Ctrl-C
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def screenshot(url, photo, output, width):
    """Uploads photo in the page at url, waits for the result and writes a full-page PNG to output."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        sys.exit(f"error: no Chromium at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(url)
            page.wait_for_function("document.body.dataset.state === 'idle'")
            page.set_input_files("#file", photo)
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=300_000)
            if page.evaluate("document.body.dataset.state") != "done":
                sys.exit(f"error: the page said: {page.inner_text('#error')}")
            page.wait_for_function("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
            page.screenshot(path=output, full_page=True)
        finally:
            browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "app.png"))
    parser.add_argument("--photo", default="chelsea", choices=PHOTOS)
    parser.add_argument("--width", type=int, default=1280, help="browser viewport width in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="app_screenshot-") as folder:
        write_hayao_weights(folder)
        photo = os.path.join(folder, f"{args.photo}.png")
        sample_photo(args.photo, photo)
        empty = os.path.join(folder, "no_models")  # so that ./checkpoints is not listed
        os.mkdir(empty)
        page = Page(folder, MODEL, empty)
        try:
            screenshot(page.url, photo, args.output, args.width)
        finally:
            page.stop()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
