"""The page's live camera: the browser POSTs one camera frame (a JPEG of the stream's size) and gets the
stylized frame back (a JPEG), then sends the next; it never has more than one frame in flight, so the
frames the model has no time for are skipped in the browser, never queued here.

`LiveStreams` holds the one stream the server runs at a time (the model is the bottleneck: a second
stream would halve both): its session, the lease that ends it LEASE_SECONDS after its last frame (a
closed tab does not keep the camera), and the per-frame call. `LiveRoutes` are its Flask views, which
`anime_gan.web.server` registers. Frames take `Models.lock` only around the model call, so an upload
runs between two frames.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import uuid

import cv2
import numpy as np
from flask import Response, jsonify, request

from anime_gan import constants as C
from anime_gan.errors import USER_ERRORS, ConfigError, UserError
from anime_gan.image_io import ImageError
from anime_gan.web import uploads

SIZES = (128, 192, 256, 384, 512)  # square frames (the camera picture's centre), in pixels
DEFAULT_SIZE = 256
LEASE_SECONDS = 5.0  # a stream ends this long after its last frame
JPEG_QUALITY = 85  # of the frames sent back (the page sends its own at the same quality)
KEEP_RECEIVED = 8  # frames a stream keeps as received, for tests and debugging


class StreamBusy(UserError):
    """Another page holds the live camera stream."""


class NoStream(UserError):
    """A frame or stop for a stream this server does not run (stopped, expired or never started)."""


def busy_message():
    """The one sentence a second page gets while a stream runs."""
    return ("another page is using the live camera (this server runs one stream at a time); stop it there, or "
            f"close that page and start again {LEASE_SECONDS:.0f} s later.")


def no_stream_message(sid):
    return (f"there is no live stream {sid!r} on this server (it was stopped, or no frame came for "
            f"{LEASE_SECONDS:.0f} s); start the camera again.")


def parse_size(value):
    """A side from SIZES (blank: DEFAULT_SIZE), or a ConfigError naming them."""
    text = str(value if value is not None else "").strip()
    if not text:
        return DEFAULT_SIZE
    if text.isdigit() and int(text) in SIZES:
        return int(text)
    raise ConfigError(f"the live size must be one of {', '.join(map(str, SIZES))} pixels, not {text!r}.")


def decode_frame(data, size):
    """The RGB frame in a JPEG or PNG body; ImageError unless it is a size x size picture."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ImageError(f"the frame is not a JPEG or PNG picture ({len(data)} bytes); send the camera frame "
                          "as image/jpeg.")
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        raise ImageError(f"the frame is {width}×{height} pixels, not the {size}×{size} this stream was started "
                          "with; send frames of that size or start the stream again at the size you want.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclasses.dataclass
class Session:
    """The stream a page runs: what it asked for and what it received."""

    sid: str
    key: str  # the model's key in the page
    size: int
    precision: str
    last_seen: float = dataclasses.field(default_factory=time.monotonic)
    in_flight: int = 0  # frames being answered: the lease does not run out under them
    frames: int = 0
    # The last KEEP_RECEIVED frames as the server decoded them: (frame number, RGB uint8 array).
    received: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=KEEP_RECEIVED))

    def expired(self, now):
        return self.in_flight == 0 and now - self.last_seen >= LEASE_SECONDS


@dataclasses.dataclass
class Frame:
    """One answered frame: the stylized JPEG, its number in the stream, and the server's times in ms."""

    jpeg: bytes
    number: int
    times: dict  # decode, wait (for an upload to leave the model), model, encode


class LiveStreams:
    """One live stream at a time over `models` (a `choices.Models`)."""

    def __init__(self, models):
        self.models = models
        self.active = None  # the Session, or None
        self._lock = threading.RLock()  # guards `active` and in_flight (the model has its own lock)

    def start(self, key, size=None, precision=C.DEFAULT_PRECISION):
        """A new Session (StreamBusy while another one holds its lease). Loads the model and runs it once
        at the stream's size, so the first frame is not slowed by loading and tracing."""
        self.models.choice(key)
        size = parse_size(size)
        now = time.monotonic()
        with self._lock:
            if self.active is not None and not self.active.expired(now):
                raise StreamBusy(busy_message())
            session = Session(uuid.uuid4().hex[:16], key, size, precision, in_flight=1)  # held while it loads
            self.active = session
        try:
            self.run(session, np.zeros((size, size, 3), np.uint8))
        except BaseException:
            self.release(session.sid)
            raise
        finally:
            self._use(session, -1)
        return session

    def busy(self):
        """Whether a stream holds the camera (a page asks before it opens its own camera)."""
        with self._lock:
            return self.active is not None and not self.active.expired(time.monotonic())

    def session(self, sid):
        """The running Session with this id, or NoStream (an expired one is released here)."""
        with self._lock:
            session = self.active
            if session is None or session.sid != sid:
                raise NoStream(no_stream_message(sid))
            if session.expired(time.monotonic()):
                self.active = None
                raise NoStream(no_stream_message(sid))
            return session

    def _use(self, session, count):
        with self._lock:
            session.in_flight += count
            session.last_seen = time.monotonic()

    def release(self, sid):
        """Ends the stream sid (True), or says it was not running (False)."""
        with self._lock:
            if self.active is not None and self.active.sid == sid:
                self.active = None
                return True
            return False

    def run(self, session, image):
        """(the stylized RGB image, seconds waited for the models' lock): the model of session, at its
        precision, under that lock (an upload holds it while it runs)."""
        asked = time.perf_counter()
        with self.models.lock:
            waited = time.perf_counter() - asked
            stylizer = self.models.get(session.key, precision=session.precision)
            return stylizer(image[None])[0], waited

    def frame(self, sid, data):
        """One frame of stream sid: encoded bytes -> Frame. UserError in one sentence for a bad frame."""
        with self._lock:
            session = self.session(sid)
            session.in_flight += 1
        try:
            started = time.perf_counter()
            image = decode_frame(data, session.size)
            decoded = time.perf_counter()
            number = session.frames = session.frames + 1
            session.received.append((number, image))
            result, waited = self.run(session, image)
            ran = time.perf_counter()
            jpeg = uploads.encode(result, ".jpg", cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)
            encoded = time.perf_counter()
        finally:
            self._use(session, -1)
        times = {"decode": decoded - started, "wait": waited, "model": ran - decoded - waited, "encode": encoded - ran}
        return Frame(jpeg, number, {name: round(seconds * 1000, 2) for name, seconds in times.items()})


def offered():
    """What the page's live controls offer (part of /api/config)."""
    return {"sizes": list(SIZES), "default_size": DEFAULT_SIZE, "precisions": list(C.PRECISIONS),
            "default_precision": C.DEFAULT_PRECISION, "lease_seconds": LEASE_SECONDS}


def answer_error(e):
    status = 409 if isinstance(e, StreamBusy) else 404 if isinstance(e, NoStream) else 400
    return jsonify({"error": str(e)}), status


class LiveRoutes:
    """The Flask views of the live camera (registered by `anime_gan.web.server.Page`):

    GET  /api/live             -> {"busy": whether a stream runs, "message": the sentence if so}
    POST /api/live/start       form model, size, precision -> {"session", "size", "precision", ...}
    POST /api/live/<sid>/frame body: a JPEG (or PNG) of size x size -> the stylized JPEG; the header
                               X-Frame numbers it, Server-Timing gives decode, wait, model and encode in ms
    POST /api/live/<sid>/stop  -> {"stopped": whether it was running}
    """

    def __init__(self, streams):
        self.streams = streams

    def state(self):
        busy = self.streams.busy()
        return jsonify({"busy": busy, "message": busy_message() if busy else None})

    def start(self):
        form = request.form
        try:
            session = self.streams.start(form.get("model", ""), form.get("size"),
                                         form.get("precision") or C.DEFAULT_PRECISION)
        except USER_ERRORS as e:
            return answer_error(e)
        choice = self.streams.models.choice(session.key)
        return jsonify({"session": session.sid, "size": session.size, "precision": session.precision,
                        "model": choice.name, "lease_seconds": LEASE_SECONDS})

    def frame(self, sid):
        try:
            frame = self.streams.frame(sid, request.get_data(cache=False))
        except USER_ERRORS as e:
            return answer_error(e)
        timing = ", ".join(f"{name};dur={ms}" for name, ms in frame.times.items())
        return Response(frame.jpeg, mimetype="image/jpeg",
                        headers={"X-Frame": str(frame.number), "Server-Timing": timing, "Cache-Control": "no-store"})

    def stop(self, sid):
        return jsonify({"stopped": self.streams.release(sid)})
