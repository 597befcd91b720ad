"""The Flask application of the page (`create_app`) and a werkzeug server for it (`Server`).

Routes: `/` the page (static/index.html), `/static/*` its CSS and JS, `/api/config` the models and
controls, `/api/stylize` an upload (an image is answered at once, a video starts a job),
`/api/jobs/<id>` a video job's state, `/api/files/<id>/<name>` a kept result (`?download=1`),
`/api/live/...` the live camera (`anime_gan.web.live`: start, one frame, stop).
Every error is `{"error": sentence}`; a bug is logged with its traceback and the server goes on.
"""

from __future__ import annotations

import logging
import mimetypes
import pathlib
import threading
import time

from flask import Flask, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import make_server
from werkzeug.utils import secure_filename

from anime_gan import constants as C
from anime_gan import image_io, inference
from anime_gan.errors import USER_ERRORS, ConfigError
from anime_gan.web import DEFAULT_PORT, DEFAULT_UPLOAD_MB
from anime_gan.web import live, uploads
from anime_gan.web.uploads import Results, VideoJob

log = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).with_name("static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # any other address opens the page to the network


def error(message, status=400):
    """The JSON answer of every error: {"error": message}."""
    return jsonify({"error": message}), status


class Page:
    """The page's routes over `models` (a `choices.Models`), the kept results and the video jobs."""

    def __init__(self, models, work_dir, max_upload_bytes):
        self.models = models
        self.max_upload_bytes = max_upload_bytes
        self.results = Results(work_dir)
        self.jobs = {}  # result id -> VideoJob
        self.live = live.LiveStreams(models)

    def register(self, app):
        app.register_error_handler(RequestEntityTooLarge, self.too_large)
        app.register_error_handler(HTTPException, self.http_error)
        app.register_error_handler(Exception, self.unexpected)
        app.add_url_rule("/", view_func=self.index, methods=["GET"])
        app.add_url_rule("/api/config", view_func=self.config, methods=["GET"])
        app.add_url_rule("/api/stylize", view_func=self.stylize_upload, methods=["POST"])
        app.add_url_rule("/api/jobs/<rid>", view_func=self.job_state, methods=["GET"])
        app.add_url_rule("/api/files/<rid>/<filename>", view_func=self.files, methods=["GET"])
        routes = live.LiveRoutes(self.live)
        app.add_url_rule("/api/live", view_func=routes.state, methods=["GET"])
        app.add_url_rule("/api/live/start", view_func=routes.start, methods=["POST"])
        app.add_url_rule("/api/live/<sid>/frame", view_func=routes.frame, methods=["POST"])
        app.add_url_rule("/api/live/<sid>/stop", view_func=routes.stop, methods=["POST"])

    # ---- errors

    def too_large(self, _):
        size = request.content_length or 0
        return error(uploads.upload_too_large_message("the upload", size, self.max_upload_bytes), 413)

    def http_error(self, e):
        return error(f"{e.name}: {e.description}", e.code)

    def unexpected(self, e):  # a bug: logged with its traceback, told in one sentence, the server goes on
        log.exception("request failed")
        return error(f"the request failed unexpectedly ({type(e).__name__}: {e}); the server log has the details.",
                     500)

    # ---- routes

    def index(self):
        return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)

    def config(self):
        return jsonify({
            "models": [c.as_json() for c in self.models.choices.values()],
            "brightness_modes": list(inference.BRIGHTNESS_MODES),
            "precisions": list(C.PRECISIONS),
            "max_side": self.models.max_side,
            "min_side": C.MIN_SIDE,
            "max_upload_bytes": self.max_upload_bytes,
            "image_suffixes": list(image_io.IMAGE_SUFFIXES),
            "video_suffixes": list(image_io.VIDEO_SUFFIXES),
            "live": live.offered(),
        })

    def stylize_upload(self):
        upload = request.files.get("file")
        if upload is None:
            return error("no file in the request; choose, drop or paste an image or a video.")
        name = uploads.display_name(upload.filename, "the upload")
        form = request.form
        key, adjust, cap = form.get("model", ""), form.get("adjust", "none"), form.get("max_side")
        faces = form.get("faces") == "1"  # face mode (stylize --faces)
        precision = form.get("precision") or "float32"
        try:
            self.models.choice(key)
            self.models.runtime_for(precision)
            inference.brightness_mode(adjust)
            if image_io.is_video_path(name):
                return self.start_video(upload, name, key, adjust, cap, faces, precision)
            started = time.monotonic()
            photo, result, loaded, said = uploads.stylize_image(self.models, key, upload.read(), name, adjust, cap,
                                                                faces, precision)
        except USER_ERRORS as e:
            return error(str(e))
        seconds = time.monotonic() - started
        rid, _ = self.results.new()
        stem = pathlib.PurePath(name).stem or "image"
        return jsonify({
            "kind": "image", "id": rid, "name": name, "height": int(photo.shape[0]), "width": int(photo.shape[1]),
            "seconds": round(seconds, 3), "model_loaded": loaded, "faces": said, "precision": precision,
            "photo": self.results.add(rid, "photo.jpg", uploads.photo_preview(photo), "image/jpeg"),
            "result": self.results.add(rid, "anime.png", uploads.encode(result, ".png"), "image/png",
                                       f"{stem}_anime.png"),
            "download_name": f"{stem}_anime.png",
        })

    def start_video(self, upload, name, key, adjust, cap, faces=False, precision="float32"):
        """Saves the uploaded video and stylizes it in a background thread; answers with its job."""
        rid, folder = self.results.new()
        suffix = pathlib.PurePath(name).suffix.lower()
        source = folder / "in" / (secure_filename(name) or "upload")  # messages name it as the user did
        if not image_io.is_video_path(source):
            source = source.with_suffix(suffix)
        source.parent.mkdir()
        upload.save(source)
        stem = pathlib.PurePath(name).stem or "video"
        destination = folder / "out" / f"{stem}_anime.mp4"
        job = VideoJob(name=name, frames=uploads.frame_count(source))
        self.jobs[rid] = job
        threading.Thread(target=self.video_work,
                         args=(rid, job, key, source, destination, suffix, adjust, cap, faces, precision),
                         name=f"video-{rid}", daemon=True).start()
        return jsonify({"kind": "video", "job": rid, "name": name, "frames": job.frames})

    def video_work(self, rid, job, key, source, destination, suffix, adjust, cap, faces=False, precision="float32"):
        """The background thread of a video job: stylize, then keep the files to show."""
        try:
            uploads.run_video_job(self.models, key, job, source, destination, adjust, cap, faces, precision)
            if not job.error:
                job.result = self.video_result(rid, source, destination, suffix)
        except Exception as e:  # noqa: BLE001 - a bug: logged, said in the page, the server lives on
            log.exception("showing the result of %s failed", job.name)
            job.error = f"the result of {job.name} could not be shown ({type(e).__name__}: {e}); see the server log."
        finally:
            # "done" only once the result is there to show: the page reads it on its next poll.
            job.finished = time.monotonic()
            job.state = "failed" if job.error else "done"

    def video_result(self, rid, source, destination, suffix):
        """The files the page shows for a finished video: both videos and their first frames."""
        def poster(video, filename):
            frame = uploads.first_frame(video)
            return None if frame is None else self.results.add(rid, filename, uploads.encode(frame, ".jpg"),
                                                               "image/jpeg")

        return {
            "id": rid,
            "photo_poster": poster(source, "photo.jpg"),
            "poster": poster(destination, "anime.jpg"),
            "video": self.results.add(rid, "anime.mp4", destination, "video/mp4", destination.name),
            "photo_video": self.results.add(rid, f"photo{suffix}", source,
                                            mimetypes.guess_type(source.name)[0] or "video/mp4"),
            "download_name": destination.name,
        }

    def job_state(self, rid):
        job = self.jobs.get(rid)
        if job is None:
            return error("no such video job (the server was restarted or the job is too old); upload it again.",
                         404)
        return jsonify(job.as_json())

    def files(self, rid, filename):
        item = self.results.get(rid, filename)
        if item is None:
            return error("this result is no longer kept (only the last few are); stylize the file again.", 404)
        path, mimetype, download_name = item
        return send_file(path, mimetype=mimetype, as_attachment=request.args.get("download") == "1",
                         download_name=download_name, max_age=0)


def create_app(models, work_dir, max_upload_bytes=DEFAULT_UPLOAD_MB * 2**20):
    """The Flask application over `models` (a `choices.Models`), keeping results under work_dir."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    page = Page(models, work_dir, max_upload_bytes)
    page.register(app)
    app.extensions["anime_gan"] = {"models": models, "results": page.results, "jobs": page.jobs, "live": page.live}
    return app


class Server:
    """The app on a werkzeug server in a thread (the command serves it in the main thread)."""

    def __init__(self, app, host="127.0.0.1", port=DEFAULT_PORT):
        try:
            self.server = make_server(host, port, app, threaded=True)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port "
                              "(0 picks a free one) or --host.") from None
        self.host, self.port = host, self.server.server_port
        self._thread = None

    def warn_if_reachable(self):
        """Logs a warning when listening beyond LOCAL_HOSTS: the page has no login."""
        if self.host not in LOCAL_HOSTS:
            log.warning("listening on %s: anyone who can reach this machine can use the page (it has no login).",
                        self.host)

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        """Serves in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="anime_gan.app", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def serve_until_interrupted(self):
        """Serves in this thread until Ctrl-C (werkzeug's serve_forever returns on it), then closes;
        werkzeug logs no line per request."""
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server.server_close()
