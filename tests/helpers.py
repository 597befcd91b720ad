"""What several tests share, in one module (tests/ is on sys.path, so `from helpers import ...`).

- Paths and environments: `REPO` (the repository root), `ENV` (os.environ for a subprocess that
  imports the project) and `env()` (the same, keeping an existing PYTHONPATH).
- Pictures and the original's stylization, in NumPy (independent of `anime_gan.deploy.saved_model`
  and `anime_gan.image_io`): `textured`, `to_uint8`, `reference_stylize`, `max_diff`, `write_rgb`,
  `read_rgb`; `seeded_generator`, a generator with seeded weights in which every gamma and beta matters.
- `logged`: the messages the library logs while a block runs.
- Training: `STYLE`, `make_tiny_dataset`, `tiny_args`, `train_command`, `run_train`, `read_metrics`
  and `cpu_hog` (busy processes beside a test).
- Huge PNGs (20000 x 20000 pixels) for the tests that refuse them from their header:
  `header_only_png`, the signature and an IHDR chunk without pixel data (a decoder fails on it, so a
  refusal that names the size can only come from the header); `black_png`, a complete, valid RGB PNG
  whose pixels are all black, 1.2 MB on disk and 1.2 GB decoded: what a user might really send.
- Data preparation inputs: `official_zip` (a small dataset.zip in the official layout),
  `v2_style_tar` (a small AnimeGANv2 STYLE.tar.gz), `per_pixel_smooth` (the official edge smoothing,
  pixel by pixel), `write_bad_inputs` (one file per kind of bad input) and `SKIPPED` (those of them
  every reader skips).
- Downloads: `LocalServer`, an HTTP server on 127.0.0.1 serving {path: bytes}, with or without Range
  support and Content-Length, transfers cut off halfway, sizes announced wrongly and HTTP errors on
  request; `closed_port`, a port of 127.0.0.1 nothing listens on (a refused connection).
- PyTorch port files without PyTorch: `write_torch_state_dict` (a `.pt` file as torch.save writes a
  state_dict of float32 tensors) and `random_port_state` (the port's 77 tensors, seeded).
- Videos: `read_video`, a file's (fps, width, height) and its frames in RGB, as OpenCV decodes them.
"""

import contextlib
import hashlib
import http.server
import io
import json
import logging
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import zipfile
import zlib

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


# ---- pictures and the original's stylization -----------------------------------------------------
def textured(shape, seed):
    """A smooth random picture (a photo is not white noise) plus pixel noise, so borders are not flat
    and padding choices show in the result. shape: (H, W, C), or (N, H, W, C) for a batch."""
    if len(shape) == 3:
        return textured((1, *shape), seed)[0]
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    coarse = rng.integers(0, 256, (n, max(h // 8, 2), max(w // 8, 2), c)).astype(np.float32)
    fine = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c) for im in coarse])
    return np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).round().astype(np.uint8)


def to_uint8(y):
    """The original's output mapping in NumPy: (y + 1) / 2 * 255, clipped, truncated."""
    return np.clip((np.asarray(y, np.float64) + 1.0) / 2.0 * 255.0, 0, 255).astype(np.uint8)


def reference_stylize(generator, images):
    """uint8 [H, W, 3] or [N, H, W, 3] -> the same: NumPy reflect pad to multiples of 4, G, crop, map."""
    if images.ndim == 3:
        return reference_stylize(generator, images[None])[0]
    _, h, w, _ = images.shape
    padded = np.pad(images, [(0, 0), (0, -h % 4), (0, -w % 4), (0, 0)], mode="reflect")
    y = generator(padded.astype(np.float32) / 127.5 - 1.0).numpy()
    return to_uint8(y[:, :h, :w])


def max_diff(a, b):
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def seeded_generator(seed, arch="v1", **options):
    """A generator of `arch` (with the constructor `options`) with seeded random weights in which every
    gamma and beta matters (v2's depthwise biases: normal, sd 0.1)."""
    from anime_gan.nets import build_generator
    from references.official_graph import random_official_weights
    from anime_gan.weights import tf1_to_generator

    g = build_generator(arch=arch, **options)
    shapes = {name: tuple(v.shape) for name, v in g.tf1_variable_map().items()}
    biases = {name: shape for name, shape in shapes.items() if name.endswith("/bias")}
    values = random_official_weights({n: s for n, s in shapes.items() if n not in biases}, seed)
    rng = np.random.default_rng(seed + 1)
    values.update({name: rng.normal(0.0, 0.1, shape) for name, shape in sorted(biases.items())})
    return tf1_to_generator(values, g)


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


@contextlib.contextmanager
def logged(name):
    """The messages (any level) logged under the logger `name` and its children while the block runs."""
    messages = []

    class Catch(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger(name), Catch(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---- tiny datasets and training commands ---------------------------------------------------------
STYLE = "Tiny"


def make_tiny_dataset(root, n_photo=8, n_style=8, n_val=2, side=32, seed=0):
    """The official layout with smooth random images (blurred noise: photo-like statistics)."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)

    def image(kind):
        small = rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
        img = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        if kind == "style":  # flat, saturated colours, as a cartoon
            img = (img // 64) * 64 + 32
        return img

    for folder, n, kind in (("train_photo", n_photo, "photo"), (f"{STYLE}/style", n_style, "style"),
                            (f"{STYLE}/smooth", n_style, "style"), ("val", n_val, "photo")):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{i:03d}.png"), image(kind))
    return str(root)


def tiny_args(dataset_dir, checkpoint_dir, **overrides):
    flags = dict(dataset_dir=dataset_dir, dataset=STYLE, checkpoint_dir=checkpoint_dir, img_size=32,
                 batch_size=2, ch=8, epoch=2, init_epoch=1, vgg_weights="random", seed=3,
                 export_saved_model=False, progress=False)
    flags.update(overrides)
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in flags.items()]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return e


def train_command(args):
    return [sys.executable, "-m", "anime_gan.train", *args]


def run_train(args, timeout=600, **kwargs):
    return subprocess.run(train_command(args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


class cpu_hog:
    """`with cpu_hog(n):` n busy-loop processes beside the test, each ending by itself after `seconds`
    and killed when the block ends (also on failure)."""

    def __init__(self, n=1, seconds=300):
        self.n, self.seconds, self.procs = n, seconds, []

    def __enter__(self):
        code = f"import time\nend = time.time() + {float(self.seconds)}\nwhile time.time() < end:\n    pass\n"
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", code]))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []
        return False


# ---- hand-built PNGs of 20000 x 20000 pixels -----------------------------------------------------
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(height, width):
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB


def header_only_png(height=20000, width=20000):
    return SIGNATURE + _ihdr(height, width) + _chunk(b"IEND", b"")


def black_png(height=20000, width=20000, rows_per_block=500):
    """A valid all-black RGB PNG, built in well under a second.

    Each row is a filter byte and 3 * width zero bytes. The zlib stream is one compressed block of
    `rows_per_block` rows repeated: after a full flush zlib starts afresh, so the same input gives
    the same bytes each time and is compressed only twice (the first copy carries the zlib header).
    The Adler-32 of n zero bytes is (n mod 65521) << 16 | 1 (its sum a stays 1, b adds a per byte).
    """
    assert height % rows_per_block == 0
    block = bytes((1 + 3 * width) * rows_per_block)
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.flush(zlib.Z_FINISH)[:-4]  # the final empty block, without the wrong checksum
    n = (1 + 3 * width) * height
    adler = (n % 65521) << 16 | 1
    stream = first + repeat * (height // rows_per_block - 1) + last + struct.pack(">I", adler)
    return SIGNATURE + _ihdr(height, width) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


# ---- data preparation inputs ---------------------------------------------------------------------
def _jpeg(rng, h=40, w=40):
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2)
    cv2.rectangle(img, (5, 5), (w // 2, h // 2), (255, 255, 255), 2)  # some edges to smooth
    return cv2.imencode(".jpg", img)[1].tobytes()


def official_zip(top="dataset/", evil=None):
    """A small archive in the official layout (style folders without smooth/, as a user might have)."""
    from data_prep import download

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(5):
            zf.writestr(f"{top}train_photo/{i}.jpg", _jpeg(rng))
        for style in ("Hayao", "Shinkai"):
            for i in range(3):
                zf.writestr(f"{top}{style}/style/{i}.jpg", _jpeg(rng))
        for sub in ["val"] + [f"test/{t}" for t in download.TEST_FOLDERS]:
            zf.writestr(f"{top}{sub}/0.jpg", _jpeg(rng, 48, 64))
        if evil:
            zf.writestr(evil, b"gotcha")
    return buf.getvalue()


def v2_style_tar(style="Hayao", n=3, smoothed=(0,), extra=()):
    """A small AnimeGANv2 style archive (STYLE.tar.gz) in the release's layout: STYLE/style/0.jpg... (256²
    frames) and STYLE/smooth/ holding the copies named in `smoothed` (a plain copy, not smoothed: so a
    test can tell a shipped file from one data_prep made). `extra`: more tarfile.TarInfo members, each
    a (TarInfo, bytes or None) pair, e.g. a traversal or a link, added last."""
    import tarfile

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        frames = [_jpeg(rng, 256, 256) for _ in range(n)]
        for i, data in enumerate(frames):
            add(f"{style}/style/{i}.jpg", data)
        for i in smoothed:
            add(f"{style}/smooth/{i}.jpg", frames[i])
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def per_pixel_smooth(path, size):
    """The official edge smoothing, literally: one pixel and one channel at a time, np.sum of window *
    kernel (BGR uint8, size x size); what data_prep.smoothing must equal byte for byte."""
    bgr = cv2.imread(str(path))
    gray = cv2.imread(str(path), 0)
    bgr = cv2.resize(bgr, (size, size))
    gray = cv2.resize(gray, (size, size))
    padded = np.pad(bgr, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    edges = cv2.Canny(gray, 100, 200)
    dilated = cv2.dilate(edges, np.ones((5, 5), np.uint8))
    g = cv2.getGaussianKernel(5, 0)
    kernel = g * g.transpose(1, 0)
    out = np.copy(bgr)
    ys, xs = np.where(dilated != 0)
    for y, x in zip(ys, xs):
        for c in range(3):
            out[y, x, c] = np.sum(np.multiply(padded[y:y + 5, x:x + 5, c], kernel))
    return out


def write_bad_inputs(folder, rng):
    """One file per kind of bad input; returns {file name: words its warning must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (5, 5), 2)
    cv2.imwrite(str(folder / "good.jpg"), good)
    (folder / "zero.jpg").write_bytes(b"")
    full = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[:len(full) // 2])
    (folder / "text.jpg").write_text("not an image at all\n")
    from PIL import Image  # Pillow writes CMYK JPEGs (OpenCV cannot)
    Image.fromarray(good[..., ::-1]).convert("CMYK").save(folder / "cmyk.jpg")
    cv2.imwrite(str(folder / "deep16.png"), good.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "gray.png"), good[..., 0])
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([good, good[..., :1]]))
    cv2.imwrite(str(folder / "tiny.png"), good[:1, :1])
    big = np.zeros((6000, 6000, 3), np.uint8)
    big[::97] = 200
    cv2.imwrite(str(folder / "huge.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    cv2.imwrite(str(folder / "noext.png"), good)
    os.rename(folder / "noext.png", folder / "noext")
    return {"zero.jpg": "empty file", "truncated.jpg": "truncated JPEG", "text.jpg": "not an image",
            "cmyk.jpg": "CMYK", "deep16.png": "16-bit", "gray.png": "grayscale", "rgba.png": "alpha",
            "tiny.png": "too small (1×1", "huge.jpg": "very large (6000×6000)",
            "noext": "not an image file name"}


SKIPPED = {"zero.jpg", "truncated.jpg", "text.jpg", "tiny.png", "noext"}


# ---- downloads: a local HTTP server --------------------------------------------------------------
class LocalServer:
    """Serves {path: bytes} on 127.0.0.1 (HTTP/1.0, a thread per request); unknown paths get 404.

    - `ranges`: honour `Range: bytes=START-` (206 with Content-Range); if False every GET gets 200
      and the whole file.
    - `length`: send Content-Length (the bytes from START on).
    - `cut`: the first `cut` GETs (of any path) stop halfway through the body;
      `break_once`: paths whose first GET stops halfway. A cut transfer ends with the connection
      shut down, as a proxy dropping it would.
    - `hang_up`: shut the connection down after every response, not only after a cut one.
    - `announce`: {path: bytes added to the true size} in Content-Length and Content-Range.
    - `status_once`: {path: HTTP status} its first GET answers with instead of the file (e.g. 503).

    `.url` is the base ("http://127.0.0.1:PORT"), `.url_of(path)` a file's URL; `.requests` records
    (path, Range header or None) per GET in order, `.ranges` only the Range headers.
    Use it as a context manager or call `.close()`.
    """

    def __init__(self, files, *, ranges=True, length=True, break_once=(), cut=0, announce=None,
                 hang_up=False, status_once=None):
        self.files, self.requests = dict(files), []
        broken, announce, lock = set(break_once), dict(announce or {}), threading.Lock()
        failing = dict(status_once or {})
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                rng = self.headers.get("Range")
                with lock:
                    server.requests.append((path, rng))
                    cut_off = len(server.requests) <= cut
                if path not in server.files:
                    self.send_error(404)
                    return
                if path in failing:
                    self.send_error(failing.pop(path))
                    return
                if path in broken:
                    broken.discard(path)
                    cut_off = True
                data = server.files[path]
                size = len(data) + announce.get(path, 0)
                start = int(rng.split("=")[1].split("-")[0]) if rng and ranges else 0
                if rng and ranges:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                if length:
                    self.send_header("Content-Length", str(size - start))
                self.end_headers()
                body = data[start:]
                if cut_off:
                    self.wfile.write(body[:len(body) // 2])
                    self.hang_up()
                    return
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped at Content-Length
                    pass
                if hang_up:
                    self.hang_up()
                elif len(body) != size - start:
                    self.close_connection = True

            def hang_up(self):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url_of(self, path):
        return f"{self.url}/{path}"

    @property
    def ranges(self):
        return [rng for _, rng in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def closed_port():
    """A TCP port of 127.0.0.1 that nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- PyTorch port files, written without PyTorch ------------------------------------------------
def write_torch_state_dict(path, state):
    """Writes {key: float32 array} as `torch.save(state_dict, path)` does (torch >= 1.6's zip format):
    `archive/data.pkl`, a protocol-2 pickle of an OrderedDict whose values are
    `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` calls (each
    storage a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)), and each storage's
    little-endian bytes as `archive/data/KEY`. The opcodes are written out here, so torch is not needed."""
    def text(t):
        raw = t.encode()
        return b"X" + len(raw).to_bytes(4, "little") + raw

    def ints(values):
        return b"(" + b"".join(b"J" + int(v).to_bytes(4, "little", signed=True) for v in values) + b"t"

    ordered_dict = b"ccollections\nOrderedDict\n)R"
    pickled = [b"\x80\x02", ordered_dict, b"("]
    arrays = {}
    for i, (key, value) in enumerate(state.items()):
        array = np.array(value, dtype="<f4", order="C")
        arrays[str(i)] = array
        stride = [int(np.prod(array.shape[k + 1:])) for k in range(array.ndim)]
        numel = b"J" + array.size.to_bytes(4, "little")
        storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(str(i)) + text("cpu") + numel + b"tQ"
        pickled += [text(key), b"ctorch._utils\n_rebuild_tensor_v2\n(", storage, b"J\x00\x00\x00\x00",
                    ints(array.shape), ints(stride), b"\x89", ordered_dict, b"tR"]
    pickled.append(b"u.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", b"".join(pickled))
        zf.writestr("archive/byteorder", "little")
        for name, array in arrays.items():
            zf.writestr(f"archive/data/{name}", array.tobytes())
        zf.writestr("archive/version", "3\n")
    return path


def random_port_state(seed=3):
    """{port key: float32 array in the port's layout} of the right shapes (the official shapes, laid
    out as the port's model.py: conv OIHW, depthwise [C,1,3,3]), random from `seed` at a scale whose
    output is not saturated: the norms' gammas uniform in [0.6, 1.4], everything else normal * 0.2."""
    from anime_gan import constants as C
    from anime_gan.nets.generator_v2 import GeneratorV2
    from anime_gan.weights.torch_port import PORT_NAMES

    rng = np.random.default_rng(seed)
    shapes = {name: tuple(v.shape) for name, v in GeneratorV2().tf1_variable_map().items()}
    state = {}
    for port, name, layout in PORT_NAMES:
        shape = shapes[C.TF1_SCOPE + name]
        if layout == "conv":  # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif layout == "depthwise":  # [3,3,C,1] -> [C,1,3,3]
            shape = (shape[2], 1, shape[0], shape[1])
        gamma = name.endswith("/gamma")
        state[port] = (rng.uniform(0.6, 1.4, shape) if gamma else rng.normal(0, 0.2, shape)).astype(np.float32)
    return state


# ---- videos --------------------------------------------------------------------------------------
def read_video(path):
    """(fps, width, height) and the frames (RGB uint8 arrays) of a video, as OpenCV decodes them."""
    capture = cv2.VideoCapture(str(path))
    meta = (capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return meta, frames


def tree_digests(root):
    """{path relative to root: sha256 hex} of every file below root: a folder's content, compared whole."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out
