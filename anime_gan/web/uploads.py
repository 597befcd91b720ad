"""One upload through the command line's own functions, and the results kept for download.

Images are decoded by `anime_gan.image_io.decode_image` (size checked from the header first) and run
through the same Stylizer (`anime_gan.inference.load_model`) and `adjust_brightness` as the command;
videos go through `anime_gan.inference.run`. A user's mistake is the command line's own sentence.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import shutil
import threading
import time
import uuid

import cv2
import numpy as np

from anime_gan import constants as C
from anime_gan import image_io, inference
from anime_gan.deploy.saved_model import size_error
from anime_gan.errors import USER_ERRORS, ConfigError
from anime_gan.image_io import ImageError
from anime_gan.inference import faces as face_mode

log = logging.getLogger(__name__)

KEEP_RESULTS = 32  # results (and their files) kept for download; older ones are deleted
PHOTO_PREVIEW_QUALITY = 92  # the photo is shown as a JPEG; the result is always a lossless PNG


# ---------------------------------------------------------------------------------------------
# Checks and files


def upload_too_large_message(name, size, limit):
    """The sentence for an upload over the limit (the page says the same before sending)."""
    return (f"{name} is {size / 2**20:.1f} MB, more than the {limit / 2**20:.0f} MB this page accepts; send a "
            "smaller file or start the app with a larger --max_upload_mb.")


def parse_cap(value, model_cap):
    """The size cap asked for in the page: a whole number from MIN_SIDE to model_cap (blank: model_cap)."""
    text = str(value or "").strip()
    if not text:
        return model_cap
    try:
        cap = int(text)
    except ValueError:
        cap = None
    if cap is None or not C.MIN_SIDE <= cap <= model_cap:
        raise ConfigError(f"the size cap must be a whole number of pixels from {C.MIN_SIDE} to {model_cap}, "
                          f"not {text!r}.")
    return cap


def size_checker(cap):
    """check_size(height, width, name) raising the command line's ImageError for sides over cap."""

    def check(height, width, name="image"):
        problem = size_error(height, width, cap, name)
        if problem:
            raise ImageError(problem)

    return check


def encode(image_rgb, suffix, *params):
    """An RGB uint8 image as the bytes of a `suffix` file (".png", ".jpg"), OpenCV `params` passed on."""
    ok, data = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[..., ::-1]), list(params))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError(f"OpenCV could not encode a {image_rgb.shape} image as {suffix}")
    return data.tobytes()


def photo_preview(image_rgb):
    """The JPEG the page shows of the photo (PHOTO_PREVIEW_QUALITY)."""
    return encode(image_rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, PHOTO_PREVIEW_QUALITY)


def display_name(filename, fallback):
    """The upload's own file name (no folders), as the messages name it."""
    name = pathlib.PurePath(str(filename or "").replace("\\", "/")).name
    return name or fallback


def first_frame(path):
    """The first frame of a video as RGB, or None."""
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    return frame[..., ::-1] if ok else None


def frame_count(path):
    """The frame count a video's container announces (0: unknown)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


class Results:
    """Files of the last KEEP_RESULTS results under a temporary folder, by id."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self._items = collections.OrderedDict()  # id -> {filename: (path, mimetype, download name)}
        self._lock = threading.Lock()

    def new(self):
        """(id, folder) of a new result; the oldest beyond KEEP_RESULTS is deleted."""
        rid = uuid.uuid4().hex[:12]
        folder = self.root / rid
        folder.mkdir(parents=True)
        with self._lock:
            self._items[rid] = {}
            while len(self._items) > KEEP_RESULTS:
                old, _ = self._items.popitem(last=False)
                shutil.rmtree(self.root / old, ignore_errors=True)
        return rid, folder

    def add(self, rid, filename, data_or_path, mimetype, download_name=None):
        """Keeps bytes (written) or a file (moved) as result rid's filename; returns its URL."""
        path = self.root / rid / filename
        if isinstance(data_or_path, bytes):
            path.write_bytes(data_or_path)
        elif pathlib.Path(data_or_path) != path:
            os.replace(data_or_path, path)
        with self._lock:
            if rid in self._items:
                self._items[rid][filename] = (path, mimetype, download_name or filename)
        return f"/api/files/{rid}/{filename}"

    def get(self, rid, filename):
        """(path, mimetype, download name) of a kept file, or None."""
        with self._lock:
            return self._items.get(rid, {}).get(filename)


# ---------------------------------------------------------------------------------------------
# Stylizing


@dataclasses.dataclass
class VideoJob:
    """A video being stylized in the background; the page polls it (`as_json`)."""

    name: str
    frames: int  # announced by the container (0: unknown)
    state: str = "queued"  # queued | running | done | failed
    started: float = dataclasses.field(default_factory=time.monotonic)
    running_since: float | None = None
    expected_seconds: float | None = None  # estimated from the first frame (see run_video_job)
    finished: float | None = None
    error: str | None = None
    warning: str | None = None
    result: dict | None = None

    def as_json(self):
        now = self.finished or time.monotonic()
        out = {"state": self.state, "name": self.name, "frames": self.frames,
               "elapsed": round(now - self.started, 1), "error": self.error, "warning": self.warning,
               "result": self.result, "estimated_fraction": None}
        if self.state == "running" and self.expected_seconds and self.running_since:
            # An estimate, not a count: the command's run() reports no progress to its caller.
            out["estimated_fraction"] = round(min(0.99, (now - self.running_since) / self.expected_seconds), 3)
        return out


def stylize_image(models, key, data, filename, adjust="none", cap=None, faces=False, precision="float32"):
    """Encoded bytes -> (photo RGB, result RGB, whether the model was loaded for it, face mode's sentence
    or None) as the command does it (faces: `stylize --faces`, the model's own faces pasted over its
    result; precision: one of constants.PRECISIONS); ImageError / ConfigError in one sentence (the
    command's own) for anything the user can fix."""
    mode = inference.brightness_mode(adjust)
    if faces:
        face_mode.require_detector()
    name = display_name(filename, "the image")
    with models.lock:
        loading = not models.is_loaded(key, precision)
        stylizer = models.get(key, precision)
    check = size_checker(parse_cap(cap, stylizer.max_side))
    image = image_io.decode_image(data, name, check_size=check)  # the size in the header first
    check(image.shape[0], image.shape[1], name)  # the EXIF orientation may have turned it
    with models.lock:
        result = models.run(key, image[None], precision)[0][0]
        said = None
        if faces:
            result, count = face_mode.FaceMode(stylizer).apply(image, result)
            said = count.sentence()
    if mode != "none":
        result = inference.adjust_brightness(result, image, mode)
    return image, result, loading, said


def estimate_video_seconds(models, key, job, first, precision="float32"):
    """Sets job.expected_seconds: run() loads the model and traces its graph again (as long as they
    took here), then runs each frame (timed on the first, once traced). Call with `models.lock` held."""
    models.run(key, first[None], precision)
    per_frame = models.run(key, first[None], precision)[1]
    job.expected_seconds = (models.load_seconds.get((key, precision), 0.0) + models.first_call_seconds[key, precision]
                            + per_frame * max(job.frames, 1))


def run_video_job(models, key, job, source, destination, adjust="none", cap=None, faces=False, precision="float32"):
    """Runs `anime_gan.inference.run` on one uploaded video for job (in a background thread); sets
    job.error (the command's sentence) or job.warning, not job.state."""
    try:
        mode = inference.brightness_mode(adjust)
        with models.lock:
            job.state, job.running_since = "running", time.monotonic()
            stylizer = models.get(key, precision)
            cap = parse_cap(cap, stylizer.max_side)
            first = first_frame(source)
            if first is not None:
                size_checker(cap)(*first.shape[:2], job.name)
                estimate_video_seconds(models, key, job, first, precision)
            summary = inference.run(models.choice(key).path, str(source), str(destination), adjust=mode,
                                    max_side=cap, show_progress=False, runtime=models.runtime_for(precision),
                                    precision=precision, faces=faces)
    except USER_ERRORS as e:
        job.error = str(e).replace(str(source), job.name)
    except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, said in the page, server lives on
        log.exception("stylizing %s failed", job.name)
        job.error = f"stylizing {job.name} failed unexpectedly ({type(e).__name__}: {e}); the log has the details."
    else:
        if summary.failed:
            job.error = summary.failed[0][1].replace(str(source), job.name)
        elif summary.incomplete:
            job.warning = summary.incomplete[0][1].replace(str(source), job.name).replace(
                str(destination), pathlib.Path(destination).name)
