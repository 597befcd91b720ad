"""A local web page to try a model: drop a photo or a short clip, get the anime version beside it.

    python -m anime_gan.app --model=checkpoints/demo [--model=hayao-v2 ...] [--port=7860] [--host=127.0.0.1]
                            [--max_side=4096] [--max_upload_mb=50]

The page lists the models found (every --model, the official weights downloaded with
`anime_gan.pretrained`, the training runs in the weights folder) with the architecture and style
each holds; takes an image (file, drag and drop, paste, webcam) or a video; shows photo and result
side by side with a download (PNG, MP4); and offers --adjust_brightness and the size cap as controls.

It is a thin layer over the command's own functions, never a second path: images are decoded by
`anime_gan.image_io.decode_image` (size checked from the header first) and run through the same
`Stylizer` (`anime_gan.stylize.load_model`) and `adjust_brightness`; videos go through
`anime_gan.stylize.run` (its progress bar in the page is an estimate from the model's load and
first-frame times: `run` reports no progress to its caller). So a bad upload gets the command line's
one-sentence message, shown in the page, and the server keeps serving. Models load on first use and
stay loaded; one request at a time runs through the models (a lock), the others wait their turn.

Why Flask and not Gradio, the usual choice for ML demos: Gradio brings a far larger stack (FastAPI,
pandas, its own front end) and its page loads fonts from the internet and sends usage analytics by
default, while this page (plain HTML and JS in `anime_gan/app_static/`, no CDN, no build step) works
offline over Flask (5.5 MB installed, with its dependencies). Bound to 127.0.0.1 by default: the
page has no login, so --host=0.0.0.0 opens it to the network.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import mimetypes
import os
import pathlib
import shutil
import tempfile
import threading
import time
import uuid

import numpy as np

from anime_gan import constants as C
from anime_gan.errors import USER_ERRORS, ConfigError

# Named, not __name__: run as `python -m anime_gan.app` this module is "__main__".
log = logging.getLogger("anime_gan.app")

STATIC = pathlib.Path(__file__).with_name("app_static")
DEFAULT_PORT = 7860
DEFAULT_UPLOAD_MB = 50
KEEP_RESULTS = 32  # results (and their files) kept for download; older ones are deleted
PHOTO_PREVIEW_QUALITY = 92  # the photo is shown as a JPEG; the result is always a lossless PNG


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One model the page offers: `path` is what `anime_gan.stylize.load_model` is given."""

    key: str  # its id in the page
    path: str
    name: str  # shown in the list
    arch: str  # "v1" | "v2" | "" (unknown)
    style: str  # what it holds, in words
    origin: str  # "--model" | "official weights" | "training run"

    def as_json(self):
        from anime_gan.pretrained import CATALOGUE
        from anime_gan.weights.loading import ARCH_LABEL

        arch = ARCH_LABEL.get(self.arch, "architecture unknown")
        short = f"{self.name} · {self.style}" if self.name in CATALOGUE else f"{self.style} · {arch}"
        return {"key": self.key, "name": self.name, "label": short, "arch": self.arch, "arch_label": arch,
                "style": self.style, "origin": self.origin, "path": self.path}


def _arch_of(source):
    """"v1" / "v2" of what resolve_model found, read from its files without building a model."""
    from anime_gan.weights.loading import source_spec

    if source.kind == "torch":
        return "v2"  # the PyTorch port's weights are AnimeGANv2 (anime_gan.weights.torch_port)
    return source_spec(source)[0]


def _style_of(path, source):
    """The catalogue title of official weights, else the run's or file's name."""
    from anime_gan import pretrained

    name = pathlib.Path(path).name
    if name in pretrained.CATALOGUE:
        return pretrained.CATALOGUE[name].title
    manifest = pretrained.read_manifest(path) if pathlib.Path(path).is_dir() else None
    if manifest and manifest.get("title"):
        return manifest["title"]
    folder = source.path if source.path.is_dir() else source.path.parent
    # A run's final weights sit in RUN/generator/, a SavedModel may be RUN/saved_model/.
    while folder.name in ("generator", "saved_model") and folder.parent != folder:
        folder = folder.parent
    return folder.name or str(path)


def find_models(paths=(), directory=None):
    """[ModelChoice]: each of `paths` (a user error, in one sentence, if one is not a model), then the
    official weights downloaded into the weights folder (`anime_gan.pretrained.weights_dir`), then the
    other models in it (training runs, converted weights). Each model once, in that order."""
    from anime_gan import pretrained
    from anime_gan.weights.loading import resolve_model

    choices, seen = [], set()

    def add(path, name, origin, strict):
        try:
            source = resolve_model(path)
            arch = _arch_of(source)
        except USER_ERRORS as e:
            if strict:
                raise ConfigError(f"--model={path}: {str(e)[:1].lower()}{str(e)[1:]}") from None
            log.info("not listing %s: %s", path, e)
            return
        identity = os.path.realpath(source.path)
        if identity in seen:
            return
        seen.add(identity)
        choices.append(ModelChoice(f"m{len(choices)}", os.fspath(path), name, arch, _style_of(path, source), origin))

    for path in paths:
        add(path, os.fspath(path), "--model", strict=True)
    folder = pretrained.weights_dir(directory)
    for name in pretrained.CATALOGUE:
        if (folder / name).is_dir() and pretrained.read_manifest(folder / name):
            add(str(folder / name), name, "official weights", strict=False)
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name not in pretrained.CATALOGUE and not child.name.startswith("."):
                if not child.name.endswith(pretrained.STAGING_SUFFIX):
                    add(str(child), str(child), "training run", strict=False)
    return choices


def no_model_message(directory=None):
    from anime_gan import pretrained

    return (f"no model to offer: none was passed and {pretrained.weights_dir(directory)} holds none; pass "
            "--model=PATH, download official weights (python -m anime_gan.pretrained download hayao-v2) or "
            "train the demo (make train).")


class Models:
    """The Stylizers, loaded on first use and kept; `lock` lets one request at a time use them."""

    def __init__(self, choices, max_side=None):
        self.choices = {c.key: c for c in choices}
        self.max_side = int(max_side or C.DEFAULT_MAX_SIDE)
        self.lock = threading.Lock()
        self._loaded = {}
        self.load_seconds = {}  # key -> seconds its loading took
        self.first_call_seconds = {}  # key -> seconds of its first call (which traces the graph)

    def choice(self, key):
        if key not in self.choices:
            names = ", ".join(c.name for c in self.choices.values())
            raise ConfigError(f"no model {key!r} on this page; pick one of the list ({names}).")
        return self.choices[key]

    def is_loaded(self, key):
        return key in self._loaded

    def get(self, key):
        """The Stylizer of a model; call with `lock` held (loading runs TensorFlow too)."""
        choice = self.choice(key)
        if key not in self._loaded:
            from anime_gan import stylize

            started = time.monotonic()
            self._loaded[key] = stylize.load_model(choice.path, max_side=self.max_side)
            self.load_seconds[key] = time.monotonic() - started
            log.info("loaded %s in %.1f s", choice.name, self.load_seconds[key])
        return self._loaded[key]

    def run(self, key, images):
        """The Stylizer of key on uint8 [N, H, W, 3]; call with `lock` held. Returns (result, seconds)."""
        stylizer = self.get(key)
        started = time.monotonic()
        result = stylizer(images)
        seconds = time.monotonic() - started
        self.first_call_seconds.setdefault(key, seconds)
        return result, seconds


# ---------------------------------------------------------------------------------------------
# Requests


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
    from anime_gan.image_io import ImageError
    from anime_gan.deploy.saved_model import size_error

    def check(height, width, name="image"):
        problem = size_error(height, width, cap, name)
        if problem:
            raise ImageError(problem)

    return check


def _encode(image_rgb, suffix, *params):
    import cv2

    ok, data = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[..., ::-1]), list(params))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError(f"OpenCV could not encode a {image_rgb.shape} image as {suffix}")
    return data.tobytes()


def _display_name(filename, fallback):
    """The upload's own file name (no folders), as the messages name it."""
    name = pathlib.PurePath(str(filename or "").replace("\\", "/")).name
    return name or fallback


def _safe_filename(name):
    from werkzeug.utils import secure_filename

    return secure_filename(name) or "upload"


def _first_frame(path):
    """The first frame of a video as RGB, or None."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    return frame[..., ::-1] if ok else None


def _frame_count(path):
    import cv2

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
        with self._lock:
            return self._items.get(rid, {}).get(filename)


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


def stylize_image(models, key, data, filename, adjust="none", cap=None):
    """Encoded bytes -> (photo RGB, result RGB, whether the model was loaded for it) as the command does
    it; ImageError / ConfigError in one sentence (the command's own) for anything the user can fix."""
    from anime_gan import image_io, stylize

    mode = stylize.brightness_mode(adjust)
    name = _display_name(filename, "the image")
    with models.lock:
        loading = not models.is_loaded(key)
        stylizer = models.get(key)
    check = size_checker(parse_cap(cap, stylizer.max_side))
    image = image_io.decode_image(data, name, check_size=check)  # the size in the header first
    check(image.shape[0], image.shape[1], name)  # the EXIF orientation may have turned it
    with models.lock:
        result = models.run(key, image[None])[0][0]
    if mode != "none":
        result = stylize.adjust_brightness(result, image, mode)
    return image, result, loading


def run_video_job(models, key, job, source, destination, adjust="none", cap=None):
    """Runs `anime_gan.stylize.run` on one uploaded video for job (in a background thread); sets
    job.error (the command's sentence) or job.warning, not job.state."""
    from anime_gan import stylize

    try:
        mode = stylize.brightness_mode(adjust)
        with models.lock:
            job.state, job.running_since = "running", time.monotonic()
            stylizer = models.get(key)
            cap = parse_cap(cap, stylizer.max_side)
            first = _first_frame(source)
            if first is not None:
                size_checker(cap)(*first.shape[:2], job.name)
                # The progress estimate: run() loads the model and traces its graph again (as long as
                # they took here), then runs each frame (timed on the first, once traced).
                models.run(key, first[None])
                per_frame = models.run(key, first[None])[1]
                job.expected_seconds = (models.load_seconds.get(key, 0.0) + models.first_call_seconds[key]
                                        + per_frame * max(job.frames, 1))
            summary = stylize.run(models.choice(key).path, str(source), str(destination), adjust=mode,
                                  max_side=cap, show_progress=False)
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


def create_app(models, work_dir, max_upload_bytes=DEFAULT_UPLOAD_MB * 2**20):
    """The Flask application over `models` (a Models), keeping results under work_dir."""
    from flask import Flask, jsonify, request, send_file
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    from anime_gan import image_io, stylize

    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    results = Results(work_dir)
    jobs = {}

    def error(message, status=400):
        return jsonify({"error": message}), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return error(upload_too_large_message("the upload", request.content_length or 0, max_upload_bytes), 413)

    @app.errorhandler(HTTPException)
    def http_error(e):
        return error(f"{e.name}: {e.description}", e.code)

    @app.errorhandler(Exception)
    def unexpected(e):  # a bug: logged with its traceback, told in one sentence, the server goes on
        log.exception("request failed")
        return error(f"the request failed unexpectedly ({type(e).__name__}: {e}); the server log has the details.",
                     500)

    @app.get("/")
    def index():
        return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)

    @app.get("/api/config")
    def config():
        return jsonify({
            "models": [c.as_json() for c in models.choices.values()],
            "brightness_modes": list(stylize.BRIGHTNESS_MODES),
            "max_side": models.max_side,
            "min_side": C.MIN_SIDE,
            "max_upload_bytes": max_upload_bytes,
            "image_suffixes": list(image_io.IMAGE_SUFFIXES),
            "video_suffixes": list(image_io.VIDEO_SUFFIXES),
        })

    @app.post("/api/stylize")
    def stylize_upload():
        upload = request.files.get("file")
        if upload is None:
            return error("no file in the request; choose, drop or paste an image or a video.")
        name = _display_name(upload.filename, "the upload")
        form = request.form
        key, adjust, cap = form.get("model", ""), form.get("adjust", "none"), form.get("max_side")
        try:
            models.choice(key)
            stylize.brightness_mode(adjust)
            if image_io.is_video_path(name):
                return start_video(upload, name, key, adjust, cap)
            started = time.monotonic()
            photo, result, loaded = stylize_image(models, key, upload.read(), name, adjust, cap)
        except USER_ERRORS as e:
            return error(str(e))
        seconds = time.monotonic() - started
        rid, _ = results.new()
        stem = pathlib.PurePath(name).stem or "image"
        return jsonify({
            "kind": "image", "id": rid, "name": name, "height": int(photo.shape[0]), "width": int(photo.shape[1]),
            "seconds": round(seconds, 3), "model_loaded": loaded,
            "photo": results.add(rid, "photo.jpg", _encode(photo, ".jpg", 1, PHOTO_PREVIEW_QUALITY), "image/jpeg"),
            "result": results.add(rid, "anime.png", _encode(result, ".png"), "image/png", f"{stem}_anime.png"),
            "download_name": f"{stem}_anime.png",
        })

    def start_video(upload, name, key, adjust, cap):
        rid, folder = results.new()
        suffix = pathlib.PurePath(name).suffix.lower()
        source = folder / "in" / _safe_filename(name)  # messages name it as the user did (job.name)
        if not image_io.is_video_path(source):
            source = source.with_suffix(suffix)
        source.parent.mkdir()
        upload.save(source)
        stem = pathlib.PurePath(name).stem or "video"
        destination = folder / "out" / f"{stem}_anime.mp4"
        job = VideoJob(name=name, frames=_frame_count(source))
        jobs[rid] = job

        def work():
            try:
                run_video_job(models, key, job, source, destination, adjust, cap)
                if not job.error:
                    job.result = video_result(rid, source, destination, suffix)
            except Exception as e:  # noqa: BLE001 - a bug: logged, said in the page, the server lives on
                log.exception("showing the result of %s failed", name)
                job.error = f"the result of {name} could not be shown ({type(e).__name__}: {e}); see the server log."
            finally:
                # "done" only once the result is there to show: the page reads it on its next poll.
                job.finished = time.monotonic()
                job.state = "failed" if job.error else "done"

        threading.Thread(target=work, name=f"video-{rid}", daemon=True).start()
        return jsonify({"kind": "video", "job": rid, "name": name, "frames": job.frames})

    def video_result(rid, source, destination, suffix):
        """The files the page shows for a finished video: both videos and their first frames."""
        def poster(video, filename):
            frame = _first_frame(video)
            return None if frame is None else results.add(rid, filename, _encode(frame, ".jpg"), "image/jpeg")

        return {
            "id": rid,
            "photo_poster": poster(source, "photo.jpg"),
            "poster": poster(destination, "anime.jpg"),
            "video": results.add(rid, "anime.mp4", destination, "video/mp4", destination.name),
            "photo_video": results.add(rid, f"photo{suffix}", source,
                                       mimetypes.guess_type(source.name)[0] or "video/mp4"),
            "download_name": destination.name,
        }

    @app.get("/api/jobs/<rid>")
    def job_state(rid):
        job = jobs.get(rid)
        if job is None:
            return error("no such video job (the server was restarted or the job is too old); upload it again.",
                         404)
        return jsonify(job.as_json())

    @app.get("/api/files/<rid>/<filename>")
    def files(rid, filename):
        item = results.get(rid, filename)
        if item is None:
            return error("this result is no longer kept (only the last few are); stylize the file again.", 404)
        path, mimetype, download_name = item
        return send_file(path, mimetype=mimetype, as_attachment=request.args.get("download") == "1",
                         download_name=download_name, max_age=0)

    app.extensions["anime_gan"] = {"models": models, "results": results, "jobs": jobs}
    return app


# ---------------------------------------------------------------------------------------------
# Serving


class Server:
    """The app on a werkzeug server in a thread (the command serves it in the main thread)."""

    def __init__(self, app, host="127.0.0.1", port=DEFAULT_PORT):
        from werkzeug.serving import make_server

        try:
            self.server = make_server(host, port, app, threaded=True)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port "
                              "(0 picks a free one) or --host.") from None
        self.host, self.port = host, self.server.server_port
        self._thread = None

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        self._thread = threading.Thread(target=self.server.serve_forever, name="anime_gan.app", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_multi_string(
        "model", [],
        "A model to offer (repeat for several): any path stylize --model takes, or a downloaded official name "
        "(hayao-v2). The official weights and training runs in the weights folder (./checkpoints or "
        "$ANIME_GAN_WEIGHTS_DIR) are listed too.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; the page has no login, so 0.0.0.0 opens "
                        "it to every machine that can reach this one.")
    flags.DEFINE_integer("port", DEFAULT_PORT, "Port to listen on (0: a free one).", lower_bound=0,
                         upper_bound=65535)
    flags.DEFINE_integer(
        "max_side", None,
        f"Largest image side accepted when a model is weights (default {C.DEFAULT_MAX_SIDE}); a SavedModel keeps "
        "the cap it was exported with. The page can set a lower cap.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_integer("max_upload_mb", DEFAULT_UPLOAD_MB, "Largest upload (image or video) in MB.",
                         lower_bound=1)


def main(argv):
    """The command (run by `anime_gan.cli.run`): serves until Ctrl-C, then exits 0."""
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    choices = find_models(FLAGS.model)
    if not choices:
        raise ConfigError(no_model_message())
    models = Models(choices, FLAGS.max_side)
    with tempfile.TemporaryDirectory(prefix="anime_gan_app-") as work_dir:
        server = Server(create_app(models, work_dir, FLAGS.max_upload_mb * 2**20), FLAGS.host, FLAGS.port)
        listed = "; ".join(f"{c.name} ({c.style})" for c in choices)
        print(f"models: {listed}", flush=True)
        if FLAGS.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: anyone who can reach this machine can use the page (it has no login).",
                        FLAGS.host)
        print(f"open {server.url} in a browser (Ctrl-C stops)", flush=True)
        try:
            server.server.serve_forever()  # werkzeug's returns on Ctrl-C
        except KeyboardInterrupt:
            pass
        finally:
            server.server.server_close()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
