"""Stylize photos, folders and videos with a trained or converted generator.

    python -m anime_gan.stylize --model=checkpoints/hayao --input=photos/ --output=anime/

--model takes whatever `anime_gan.load_generator` reads (see `anime_gan.weights.loading`): a SavedModel
directory (from `anime_gan.export`, `anime_gan.convert` or training), a directory holding
generator.weights.h5, a training run's --checkpoint_dir (its final weights, else its newest
checkpoint), a training checkpoint prefix (run/ckpt-12), a .weights.h5 file, or an official TF1
checkpoint prefix.
--input is an image, a folder (sub-folders are mirrored under --output; the videos in it are
stylized too, each into NAME.mp4) or a video (written as H.264 in MP4 with the same frame timestamps,
frame count and size, and its audio track; see `anime_gan.inference.video`). Files are read and written in
threads beside the model, and a video is decoded and encoded beside it, so the model never waits.

Each image keeps its exact size (see `anime_gan.deploy.saved_model`). Files that cannot be stylized are
reported one line each (an image too large for --max_side is refused from its header, before it is
decoded); the others are still written, and the command exits with status 1 and a summary. So does
a video whose frames could not all be decoded (it is written without them). Ctrl-C stops after the
batch in hand is written, names what was written and exits with 130; a second Ctrl-C stops at once.
The same things from Python:

    >>> import anime_gan
    >>> anime = anime_gan.stylize(photo_uint8, model="checkpoints/hayao")

(`anime_gan.stylize` is this module, and calling it calls `stylize`.)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import re
import signal
import sys
import threading
import types

import numpy as np

from anime_gan import constants as C
from anime_gan import image_io
from anime_gan.errors import EXIT_FAILED, ConfigError, ModelError
from anime_gan.image_io import ImageError

# Named, not __name__: run as `python -m anime_gan.stylize` this module is "__main__".
log = logging.getLogger("anime_gan.stylize")

DEFAULT_BATCH_SIZE = 4
MODEL_ENV = "ANIME_GAN_MODEL"
VIDEO_OUTPUT_SUFFIX = ".mp4"  # container of every video we write (H.264, see anime_gan.inference.video)
IO_WORKERS = 2  # threads reading and writing image files while the model runs (see stylize_images)
# An image (or video frame) of more pixels runs alone, never batched with others: the memory a batch
# takes grows with its pixels, and large images may take a bounded-memory (banded) path.
SINGLE_IMAGE_PIXELS = 4 * 2**20
# --adjust_brightness: weights of the R, G, B channel means in the brightness that is matched.
# "official" is what the original's image path computes: its helper reads channel 0 as B (weight
# 0.114) and channel 2 as R (0.299), as for an OpenCV BGR array, but is given RGB arrays, so in
# effect 0.114 R + 0.587 G + 0.299 B. "luma" is true ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B.
BRIGHTNESS_WEIGHTS = {"official": (0.114, 0.587, 0.299), "luma": (0.299, 0.587, 0.114)}
BRIGHTNESS_MODES = ("official", "luma", "none")


# ---------------------------------------------------------------------------------------------
# Models


class Stylizer:
    """uint8 [N, H, W, 3] RGB -> uint8 [N, H, W, 3]: a SavedModel's serving_default or a Generator.

    `max_side` is the largest side the model accepts; `source` says where it came from.
    """

    def __init__(self, fn, max_side, source, keep_alive=None):
        self._fn = fn
        self.max_side = int(max_side)
        self.source = source
        self._keep_alive = keep_alive  # a loaded SavedModel must outlive its signatures

    def check_size(self, height, width, name="image"):
        """ImageError unless the size rule (`anime_gan.deploy.saved_model.size_error`) accepts the image."""
        from anime_gan.deploy.saved_model import size_error

        problem = size_error(height, width, self.max_side, name)
        if problem:
            raise ImageError(problem)

    def __call__(self, images):
        import tensorflow as tf

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ImageError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}.")
        try:
            return np.asarray(self._fn(tf.constant(images)))
        except tf.errors.InvalidArgumentError as e:
            raise ImageError(model_error_message(e)) from None


def model_error_message(error):
    """The one readable sentence inside a TF InvalidArgumentError (our in-graph assertions)."""
    text = str(getattr(error, "message", error))
    match = re.search(r"assertion failed: \[(.*?)\]\s*$", text, re.MULTILINE)
    if match:
        return match.group(1)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    useful = [l for l in lines if not l.startswith(("Graph execution error", "Detected at node", "<stack", "[["))]
    return (useful or lines or ["the model rejected the input"])[0]


def _stylizer_from_generator(generator, max_side, source):
    from anime_gan.deploy.saved_model import StylizeModule

    # Called, the module runs batches that fit the memory budget whole through a plain graph of G and
    # only larger images through its bounded (banded) serving graph.
    module = StylizeModule(generator, max_side=max_side)
    return Stylizer(module, max_side, source, keep_alive=module)


def _stylizer_from_saved_model(path):
    import tensorflow as tf

    from anime_gan.deploy.saved_model import DEFAULT_MAX_SIDE, IMAGES_KEY, SERVING_SIGNATURE

    loaded = tf.saved_model.load(str(path))
    if SERVING_SIGNATURE not in loaded.signatures:
        raise ModelError(f"the SavedModel at {path} has no {SERVING_SIGNATURE} signature; re-export it.")
    fn = loaded.signatures[SERVING_SIGNATURE]
    variable = getattr(loaded, "max_side_variable", None)
    max_side = int(variable.numpy()) if variable is not None else DEFAULT_MAX_SIDE
    return Stylizer(lambda x: fn(images=x)[IMAGES_KEY], max_side, str(path), keep_alive=loaded)


def load_model(path, max_side=None, runtime="tensorflow"):
    """A `Stylizer` from any model path `anime_gan.load_generator` accepts (see `anime_gan.weights.loading`),
    or an exported .onnx file.

    A SavedModel runs its own serving signature and keeps the size cap it was exported with; for
    everything else (weights, training runs and checkpoints, TF1 checkpoints) max_side is the cap.
    runtime: "tensorflow", or another of `anime_gan.runtimes.RUNTIMES` (ONNX Runtime, OpenVINO,
    LiteRT, or "auto": the fastest float-accurate one measured on this machine).
    PathNotFoundError / ModelError / ConfigError (one sentence) for anything else.
    """
    from anime_gan.deploy.saved_model import DEFAULT_MAX_SIDE
    from anime_gan.weights.loading import load_generator, resolve_model

    if os.fspath(path).lower().endswith(".onnx"):
        runtime = "auto" if runtime == "tensorflow" else runtime  # TensorFlow cannot run ONNX
    if runtime != "tensorflow":
        from anime_gan.runtimes import load_stylizer

        return load_stylizer(path, runtime=runtime, max_side=max_side)
    path = pathlib.Path(os.fspath(path)).expanduser()
    source = resolve_model(path)
    if source.kind == "saved_model":
        return _stylizer_from_saved_model(source.path)
    generator = load_generator(path)
    return _stylizer_from_generator(generator, max_side or DEFAULT_MAX_SIDE, str(path))


_MODELS = {}


def get_model(model=None):
    """A Stylizer from a Stylizer, a Generator, a path (loaded once and cached) or $ANIME_GAN_MODEL."""
    if isinstance(model, Stylizer):
        return model
    if model is None:
        model = os.environ.get(MODEL_ENV)
        if not model:
            raise ConfigError(f"no model given; pass model=PATH (a SavedModel or weights) or set ${MODEL_ENV}.")
    if isinstance(model, (str, os.PathLike)):
        key = os.path.abspath(os.fspath(model))
        if key not in _MODELS:
            _MODELS[key] = load_model(model)
        return _MODELS[key]
    if hasattr(model, "tf1_variable_map"):  # an anime_gan Generator
        from anime_gan.deploy.saved_model import DEFAULT_MAX_SIDE

        return _stylizer_from_generator(model, DEFAULT_MAX_SIDE, "Generator")
    raise TypeError(f"model must be a path, a Generator or a Stylizer, not {type(model).__name__}.")


# ---------------------------------------------------------------------------------------------
# Images


def brightness_mode(value):
    """"official" | "luma" | "none" from a mode name or a bool (True: "official", False/None: "none")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "official"
    text = str(value).strip().lower()
    if text in BRIGHTNESS_MODES:
        return text
    if text in ("true", "t", "1", "yes", "y", "on"):
        return "official"
    if text in ("false", "f", "0", "no", "n", "off", ""):
        return "none"
    raise ConfigError(
        f"adjust_brightness must be official (the original's 0.114R+0.587G+0.299B), luma "
        f"(0.299R+0.587G+0.114B) or none, not {value!r}."
    )


def average_brightness(image, weights="official"):
    """Weighted sum of the channel means of an RGB image; weights "official" or "luma" (see
    BRIGHTNESS_WEIGHTS) or three numbers for R, G, B."""
    weights = BRIGHTNESS_WEIGHTS[weights] if isinstance(weights, str) else weights
    means = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    return float(np.dot(weights, means))


def adjust_brightness(result, photo, weights="official"):
    """The original's --adjust_brightness: scale the result so its brightness equals the photo's.

    weights: "official" (default; the original's image path, 0.114R+0.587G+0.299B) or "luma"
    (0.299R+0.587G+0.114B). Multiplied in floating point, clipped to [0, 255], truncated to uint8
    as in the original.
    """
    target, current = average_brightness(photo, weights), average_brightness(result, weights)
    if current <= 0.0:  # an all-black result has no brightness to scale
        return np.asarray(result, np.uint8)
    scaled = np.asarray(result, np.float64) * (target / current)
    return np.clip(scaled, 0, 255).astype(np.uint8)


_adjust_brightness = adjust_brightness  # `stylize` has a parameter of the same name


def stylize(image_uint8, model=None, adjust_brightness=False):
    """Photo(s) -> anime, same size: uint8 [H, W, 3] or [N, H, W, 3] -> uint8 of the same shape.

    Grayscale, RGBA and 16-bit arrays are converted to 8-bit RGB first (`image_io.to_rgb_uint8`).
    model: any path `anime_gan.load_generator` accepts (loaded once), a Generator, or None for
    $ANIME_GAN_MODEL. adjust_brightness matches each result's mean brightness to its photo's:
    "official" or True (the original's weights), "luma", or "none" / False (default).
    """
    mode = brightness_mode(adjust_brightness)
    stylizer = get_model(model)
    array = np.asarray(image_uint8)
    batched = array.ndim == 4
    if batched and len(array) == 0:  # nothing to stylize: the empty batch of the same size
        image_io.to_rgb_uint8(np.zeros((1, 1, *array.shape[3:]), array.dtype))  # the same dtype/channel checks
        stylizer.check_size(array.shape[1], array.shape[2])
        return np.zeros((0, *array.shape[1:3], 3), np.uint8)
    images = list(array) if batched else [array]
    images = np.stack([image_io.to_rgb_uint8(im) for im in images])
    stylizer.check_size(images.shape[1], images.shape[2])
    out = stylizer(images)
    if mode != "none":
        out = np.stack([_adjust_brightness(o, p, mode) for o, p in zip(out, images)])
    return out if batched else out[0]



# ---------------------------------------------------------------------------------------------
# Files, folders, videos


@dataclasses.dataclass
class Summary:
    """What a run did: written outputs, failed inputs, and videos written with frames missing."""

    written: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)  # [(path, reason)]
    incomplete: list = dataclasses.field(default_factory=list)  # [(path, reason)]: written, frames missing
    inputs: int = 0  # how many inputs the run had

    @property
    def ok(self):
        return not self.failed and not self.incomplete

    def sentence(self):
        """One sentence saying what was written and what was not."""
        n_ok, n_bad = len(self.written), len(self.failed)
        total = max(self.inputs, n_ok + n_bad)
        parts = [f"stylized {n_ok} of {total} input{'s' if total != 1 else ''}"]
        if n_bad:
            parts.append(f"{n_bad} failed (listed above): " + _first_five(self.failed))
        if self.incomplete:
            n = len(self.incomplete)
            parts.append(f"{n} video{'s' if n != 1 else ''} written with frames missing (listed above): "
                         + _first_five(self.incomplete))
        return "; ".join(parts)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended a run; `summary` holds what was written before it (every listed file is complete)."""

    def __init__(self, summary):
        super().__init__()
        self.summary = summary

    def sentence(self):
        left = self.summary.inputs - len(self.summary.written) - len(self.summary.failed)
        return (f"stopped by Ctrl-C: {self.summary.sentence()}; "
                f"the other {left} input{'s were' if left != 1 else ' was'} not written.")


def _first_five(items):
    return ", ".join(p for p, _ in items[:5]) + (" ..." if len(items) > 5 else "")


class StopOnCtrlC:
    """While active (in the main thread), the first Ctrl-C asks the run to stop at its next safe
    point (`check`, between batches: what was stylized is written first); a second stops at once.

    Elsewhere (another thread, where no signal handler can be set) Ctrl-C cannot reach the run and
    `check` never stops it.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not logging: the handler may run while the main thread is inside a stream's write.
        os.write(2, b"\nwarning: Ctrl-C: stopping once the batch in hand is written; "
                    b"press Ctrl-C again to stop at once.\n")

    def check(self):
        """KeyboardInterrupt if a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt


_NEVER_STOP = types.SimpleNamespace(check=lambda: None)


def _report_failure(summary, path, reason):
    summary.failed.append((str(path), reason))
    log.error("%s", reason if str(path) in reason else f"{path}: {reason}")


def folder_jobs(input_dir, output_dir):
    """([(source, destination)] of the images, [(source, destination)] of the videos) under
    input_dir, mirrored under output_dir.

    An image keeps its name and format (GIF and other unwritable formats become PNG); a video is
    written as NAME.mp4, the container a single --input video gets in a folder --output. Where
    several inputs of one folder would share an output name (a.png beside a.gif, b.jpg beside b.JPG,
    clip.mov beside clip.mp4), each one not already named so is written as its full name plus the
    output's suffix instead (a.gif.png, b.JPG.jpg, clip.mov.mp4): one output per input. If two inputs
    would still share an output (a.gif beside a file named a.gif.png), ImageError names them all
    before anything is written.
    """
    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    images, videos = [], []
    skip = output_dir.resolve()
    for root, dirs, files in os.walk(input_dir):
        root = pathlib.Path(root)
        # Never stylize our own earlier output when --output lies inside --input.
        dirs[:] = sorted(d for d in dirs if (root / d).resolve() != skip)
        here = collections.defaultdict(list)  # output path -> [(source, mirrored path, job list)]
        for name in sorted(files):
            src = root / name
            dst = output_dir / src.relative_to(input_dir)
            if image_io.is_image_path(src):
                here[dst.with_suffix(image_io.output_suffix(src.suffix))].append((src, dst, images))
            elif image_io.is_video_path(src):
                here[dst.with_suffix(VIDEO_OUTPUT_SUFFIX)].append((src, dst, videos))
        found = []
        for base, group in here.items():
            for src, dst, jobs in group:
                unique = len(group) == 1 or base.name == src.name
                found.append((jobs, src, base if unique else dst.with_name(dst.name + base.suffix)))
        for jobs, src, dst in sorted(found, key=lambda job: job[1]):
            jobs.append((src, dst))
    _refuse_shared_outputs(images + videos)
    return images, sorted(videos)


def _refuse_shared_outputs(jobs):
    """ImageError naming every output two or more inputs would be written to."""
    sources = collections.defaultdict(list)
    for src, dst in jobs:
        sources[dst].append(str(src))
    clashes = [f"{' and '.join(srcs)} -> {dst}" for dst, srcs in sources.items() if len(srcs) > 1]
    if clashes:
        raise ImageError(f"{len(clashes)} output name{'s are' if len(clashes) > 1 else ' is'} shared by several "
                         f"inputs ({'; '.join(clashes)}); rename one of each so no output overwrites "
                         "another (nothing was written).")


def _stylize_batch(stylizer, photos):
    """stylizer(photos), image by image when each has more than SINGLE_IMAGE_PIXELS pixels."""
    if len(photos) > 1 and photos.shape[1] * photos.shape[2] > SINGLE_IMAGE_PIXELS:
        return np.stack([stylizer(photo[None])[0] for photo in photos])
    return stylizer(photos)


def stylize_images(stylizer, jobs, batch_size=DEFAULT_BATCH_SIZE, adjust=False, progress=None, summary=None,
                   stop=_NEVER_STOP, workers=IO_WORKERS):
    """Stylizes [(source, destination)] image files in batches of equal size; returns a Summary
    (`summary`, when given, is filled in instead).

    Each file that fails is logged (one error line, in the order of jobs for files that cannot be
    read) and listed in the Summary; the others are written. A file whose header gives a size beyond
    the model's cap is refused before it is decoded.

    Images of one size are batched together (a batch must be one size); a few sizes are held at
    once and flushed when full, so memory stays bounded on folders of mixed sizes. An image of more
    than SINGLE_IMAGE_PIXELS pixels runs alone. adjust: a --adjust_brightness mode (see
    `brightness_mode`). workers: threads that read and decode the next files (up to 2 x batch_size
    ahead) and encode and write the results (up to 2 x batch_size behind) while the model runs; 0
    does everything in the calling thread, one step after the other. The files written are the
    same either way. stop.check() runs before each file is taken and each batch is stylized, never
    between a batch and its writing (see `StopOnCtrlC`): on a stop, the writes under way finish and
    are listed before it propagates.
    """
    import concurrent.futures

    adjust = brightness_mode(adjust)
    summary = Summary(inputs=len(jobs)) if summary is None else summary
    pending = collections.OrderedDict()  # (h, w) -> [(src, dst, image)]
    held = 0
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="stylize-io") if workers else None
    writes = collections.deque()  # [(src, dst, future or None, the exception of an inline write)]

    def read(src):
        image = image_io.read_image(src, check_size=stylizer.check_size)
        stylizer.check_size(image.shape[0], image.shape[1], str(src))
        return image

    def write(dst, out, photo):
        if adjust != "none":
            out = adjust_brightness(out, photo, adjust)
        image_io.write_image(dst, out)

    def record(block):
        """Lists the finished writes, oldest first (all of them when block)."""
        while writes and (block or writes[0][2] is None or writes[0][2].done()):
            src, dst, future, error = writes.popleft()
            if future is not None:
                error = future.exception()
            if isinstance(error, (OSError, ImageError)):
                _report_failure(summary, src, f"cannot write {dst}: {error}")
            elif error is not None:
                raise error
            else:
                summary.written.append(str(dst))
            if progress is not None:
                progress.update(1)

    def flush(shape):
        nonlocal held
        stop.check()
        items = pending.pop(shape)
        held -= len(items)
        try:
            outputs = _stylize_batch(stylizer, np.stack([im for _, _, im in items]))
        except ImageError:
            # A batch fails as a whole; run its images alone so the error names the right file.
            outputs = []
            for src, _, im in items:
                try:
                    outputs.append(stylizer(im[None])[0])
                except ImageError as e:
                    outputs.append(e)
        for (src, dst, photo), out in zip(items, outputs):
            if isinstance(out, Exception):
                record(block=True)  # the reports keep the order of the batches
                _report_failure(summary, src, str(out))
                if progress is not None:
                    progress.update(1)
                continue
            if pool is not None:
                writes.append((src, dst, pool.submit(write, dst, out, photo), None))
            else:
                try:
                    write(dst, out, photo)
                    writes.append((src, dst, None, None))
                except (OSError, ImageError) as e:
                    writes.append((src, dst, None, e))
        record(block=False)
        while len(writes) > 2 * batch_size:  # memory: at most 2 batches of results wait to be written
            if writes[0][2] is not None:
                concurrent.futures.wait([writes[0][2]])
            record(block=False)

    def decoded():
        """(src, dst, image or ImageError) in the order of jobs, read up to 2 batches ahead."""
        if pool is None:
            for src, dst in jobs:
                stop.check()
                try:
                    yield src, dst, read(src)
                except ImageError as e:
                    yield src, dst, e
            return
        ahead = collections.deque()
        it = iter(jobs)
        for src, dst in it:
            ahead.append((src, dst, pool.submit(read, src)))
            if len(ahead) >= 2 * batch_size:
                break
        try:
            while ahead:
                src, dst, future = ahead.popleft()
                stop.check()
                try:
                    image = future.result()
                except ImageError as e:
                    image = e
                job = next(it, None)
                if job is not None:
                    ahead.append((*job, pool.submit(read, job[0])))
                yield src, dst, image
        finally:
            for _, _, future in ahead:  # reads not started are dropped
                future.cancel()

    reads = decoded()
    try:
        for src, dst, image in reads:
            if isinstance(image, ImageError):
                _report_failure(summary, src, str(image))
                if progress is not None:
                    progress.update(1)
                continue
            shape = image.shape[:2]
            pending.setdefault(shape, []).append((src, dst, image))
            held += 1
            if len(pending[shape]) >= batch_size or shape[0] * shape[1] > SINGLE_IMAGE_PIXELS:
                flush(shape)
            elif held >= 4 * batch_size:
                flush(next(iter(pending)))
        while pending:
            flush(next(iter(pending)))
    finally:
        reads.close()
        record(block=True)  # what was stylized is written and listed, also on a stop
        if pool is not None:
            pool.shutdown(wait=True)
    return summary


def _video_frames_fn(stylizer, adjust):
    """uint8 [N, H, W, 3] frames -> their stylized frames, brightness-matched to them per `adjust`."""

    def fn(photos):
        outputs = _stylize_batch(stylizer, photos)
        if adjust != "none":
            outputs = np.stack([adjust_brightness(o, p, adjust) for o, p in zip(outputs, photos)])
        return outputs

    return fn


def stylize_video(stylizer, source, destination, batch_size=DEFAULT_BATCH_SIZE, adjust=False, progress=None,
                  stop=_NEVER_STOP):
    """Stylizes a video frame by frame into destination: H.264 in MP4 with the same frame timestamps
    (so fps), frame count and size, and the audio track kept (see `anime_gan.inference.video`).

    Decoding, stylizing and encoding overlap (two threads beside the calling one). Written to a
    temporary file beside destination and moved into place only when complete (a stop, see
    `StopOnCtrlC`, between batches of frames leaves nothing behind). Returns (frames written,
    frames announced by the container, 0 if it announces none and none failed to decode); frames
    that fail to decode are skipped, so the first number can be the smaller. Raises ImageError on
    an unreadable video. adjust: a --adjust_brightness mode (see `brightness_mode`), applied to
    each frame with its source frame (RGB both).
    """
    written, announced, _ = _stylize_video(stylizer, source, destination, batch_size, adjust, progress, stop)
    return written, announced


def _stylize_video(stylizer, source, destination, batch_size, adjust, progress, stop):
    from anime_gan.inference import video

    fn = _video_frames_fn(stylizer, brightness_mode(adjust))
    written, announced, info = video.transform_video(fn, source, destination, batch_size, progress=progress,
                                                     stop=stop, check_size=stylizer.check_size)
    if not announced and info.bad_packets:  # no count announced (MKV, WebM): the frames seen
        announced = written + info.bad_packets
    return written, announced, info


def _same_file(a, b):
    try:
        return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()
    except OSError:
        return False


def plan_output(input_path, output_path):
    """('image' | 'folder' | 'video', destination) for an --input and --output, or ImageError."""
    src, out = pathlib.Path(input_path), pathlib.Path(output_path)
    if src.is_dir():
        if out.exists() and not out.is_dir():
            raise ImageError(f"--output={out} is a file; a folder --input needs a folder --output.")
        if _same_file(src, out):
            raise ImageError("--output must differ from --input: the photos would be overwritten.")
        return "folder", out
    if not src.exists():
        raise ImageError(f"--input={src} does not exist; pass an image, a folder or a video.")
    kind = "video" if image_io.is_video_path(src) else "image" if image_io.is_image_path(src) else None
    if kind is None:
        raise ImageError(
            f"--input={src} is neither an image ({', '.join(image_io.IMAGE_SUFFIXES)}) "
            f"nor a video ({', '.join(image_io.VIDEO_SUFFIXES)}); rename it or pass its folder."
        )
    known = tuple(image_io.VIDEO_CONTAINERS) if kind == "video" else image_io.WRITABLE_SUFFIXES
    if kind == "video" and image_io.is_video_path(out) and out.suffix.lower() not in known:
        raise ImageError(f"--output={out}: videos are written as H.264, in {', '.join(known)}; "
                         "use one of these suffixes.")
    if out.is_dir() or str(output_path).endswith(os.sep) or out.suffix.lower() not in known:
        if out.exists() and not out.is_dir():
            raise ImageError(f"--output={out} must end in one of {', '.join(known)} or be a folder.")
        suffix = ".mp4" if kind == "video" else image_io.output_suffix(src.suffix)
        out = out / (src.stem + suffix)
    if _same_file(src, out):
        raise ImageError("--output must differ from --input: the photo would be overwritten.")
    return kind, out


def run(model, input_path, output_path, batch_size=DEFAULT_BATCH_SIZE, adjust=False, max_side=None,
        show_progress=None, runtime="tensorflow"):
    """Everything `python -m anime_gan.stylize` does, minus flag parsing. Returns a Summary.

    adjust: a --adjust_brightness mode ("official", "luma", "none") or a bool (True: "official").
    Raises a UserError (ImageError, ConfigError, PathNotFoundError, ModelError) for an unusable
    --input, --output, --model or flag, before anything is written. Messages go to the
    "anime_gan.stylize" logger. Ctrl-C (in the main thread) stops once the batch in hand is written
    and raises `Interrupted`, a KeyboardInterrupt holding the Summary of what was written.
    """
    from tqdm import tqdm

    adjust = brightness_mode(adjust)
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size} must be at least 1.")
    kind, destination = plan_output(input_path, output_path)
    if kind == "video":
        jobs, videos = [], [(pathlib.Path(input_path), destination)]
    elif kind == "image":
        jobs, videos = [(pathlib.Path(input_path), destination)], []
    else:
        jobs, videos = folder_jobs(input_path, destination)
        if not jobs and not videos:
            raise ImageError(f"--input={input_path} holds no images ({', '.join(image_io.IMAGE_SUFFIXES)}) "
                             f"and no videos ({', '.join(image_io.VIDEO_SUFFIXES)}).")
    stylizer = load_model(model, max_side=max_side, runtime=runtime)
    summary = Summary(inputs=len(jobs) + len(videos))
    # disable=None: a bar on a terminal, none in logs and pipes.
    disable = None if show_progress is None else not show_progress
    with StopOnCtrlC() as stop, tqdm(total=0, unit="img", disable=disable, file=sys.stderr,
                                     dynamic_ncols=True) as bar:
        try:
            if kind == "video":
                bar.unit = "frame"
                _stylize_video_job(stylizer, videos[0][0], videos[0][1], batch_size, adjust, summary, bar, stop)
                return summary
            if videos:
                bar.unit = "file"
            bar.reset(total=len(jobs) + len(videos))
            stylize_images(stylizer, jobs, batch_size, adjust, progress=bar, summary=summary, stop=stop)
            for src, dst in videos:
                # Frames on a second bar under the files' bar.
                with tqdm(total=0, unit="frame", desc=src.name, disable=disable, leave=False, position=1,
                          file=sys.stderr, dynamic_ncols=True) as frames:
                    _stylize_video_job(stylizer, src, dst, batch_size, adjust, summary, frames, stop)
                bar.update(1)
            return summary
        except KeyboardInterrupt:
            raise Interrupted(summary) from None


def _stylize_video_job(stylizer, source, destination, batch_size, adjust, summary, progress, stop=_NEVER_STOP):
    """stylize_video, its outcome recorded in summary and logged in one line."""
    try:
        frames, expected, info = _stylize_video(stylizer, source, destination, batch_size, adjust, progress, stop)
    except ImageError as e:
        _report_failure(summary, source, str(e))
    except OSError as e:
        _report_failure(summary, source, f"cannot write {destination}: {e.strerror or e}")
    else:
        summary.written.append(str(destination))
        if frames < expected:
            missing = expected - frames
            reason = (f"{source}: {missing} of its {expected} frames could not be decoded (corrupt or cut short); "
                      f"{destination} has the other {frames}, so it is {missing} frame{'s' if missing != 1 else ''} "
                      "short.")
            summary.incomplete.append((str(source), reason))
            log.warning("%s", reason)
        else:
            log.info("wrote %d frames to %s (%s)", frames, destination, _video_note(info))


def _video_note(info):
    """What became of a video's sound and size, for the line that says it was written."""
    from anime_gan.inference import video

    audio = ("no audio track" if info.audio is None else f"{info.audio} audio copied"
             if info.audio in video.AUDIO_COPY_CODECS else f"{info.audio} audio re-encoded to AAC")
    height, width = video.even_size(info.height, info.width)
    if (height, width) != (info.height, info.width):
        audio += f"; {info.height}x{info.width} written as {height}x{width}: {video.ODD_SIZE_NOTE}"
    return audio


# ---------------------------------------------------------------------------------------------
# Command line


def _brightness_flag():
    """--adjust_brightness[=official|luma|none] and --noadjust_brightness: a string flag that also
    parses as a boolean (bare = official), so the original's boolean spelling still works."""
    from absl import flags

    class BrightnessParser(flags.ArgumentParser):
        def parse(self, argument):
            return brightness_mode(argument)

        def flag_type(self):
            return "string"

    class BrightnessFlag(flags.Flag):
        def __init__(self):
            super().__init__(
                BrightnessParser(), flags.ArgumentSerializer(), "adjust_brightness", "none",
                "Match each result's mean brightness to its photo's, as the original's option does: "
                "=official, or the bare flag, weights the channel means as the original's image path does, "
                "0.114R+0.587G+0.299B (its helper assumes BGR but is given RGB); =luma uses true luma, "
                "0.299R+0.587G+0.114B; =none, or --noadjust_brightness, leaves the results as they are.",
                boolean=True)

        def _serialize(self, value):
            return f"--{self.name}={value}"

    return BrightnessFlag()


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string(
        "model", None,
        "A SavedModel directory, a directory holding generator.weights.h5, a training run's "
        "--checkpoint_dir (its generator/generator.weights.h5, else its newest ckpt-N), a training "
        "checkpoint prefix (run/ckpt-12), a .weights.h5 file or an official TF1 checkpoint prefix.",
        required=True)
    flags.DEFINE_string(
        "input", None,
        "An image, a folder of images and videos (searched recursively) or a video.", required=True)
    flags.DEFINE_string(
        "output", None,
        "Where to write: a file or folder for an image, a folder (sub-folders mirrored, videos as "
        "NAME.mp4) for a folder, a file (.mp4, .m4v, .mov, .mkv, .avi: H.264 with the audio kept) or folder "
        "for a video.", required=True)
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Images (of one size) or video frames per batch.",
                         lower_bound=1)
    flags.DEFINE_flag(_brightness_flag())
    flags.DEFINE_integer(
        "max_side", None,
        f"Largest image side accepted when --model is weights (default {C.DEFAULT_MAX_SIDE}); a SavedModel "
        "keeps the cap it was exported with.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_enum(
        "runtime", "tensorflow", ["auto", "tensorflow", "onnxruntime", "openvino", "litert"],
        "Where the generator runs: tensorflow (the default; large images in bounded memory), onnxruntime or "
        "openvino (float32 via ONNX, converted once and cached; an .onnx --model runs in one of them), "
        "litert, or auto: the fastest float-accurate runtime measured on this machine (see "
        "python -m anime_gan.runtimes).")


def main(argv):
    """The command (run by `anime_gan.cli.run`): 0 all written, 1 some inputs failed, 2 a user error."""
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        hint = (f"; write --adjust_brightness={argv[1]}" if argv[1] in BRIGHTNESS_MODES else "")
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}{hint}; flags are written --name=value.")
    try:
        summary = run(FLAGS.model, FLAGS.input, FLAGS.output, FLAGS.batch_size, FLAGS.adjust_brightness,
                      FLAGS.max_side, runtime=FLAGS.runtime)
    except Interrupted as stopped:
        log.warning("%s", stopped.sentence())
        raise  # `anime_gan.cli.run` says "interrupted (Ctrl-C)" and exits with 130
    if not summary.ok:
        log.warning("%s.", summary.sentence())
        return EXIT_FAILED
    n_ok = len(summary.written)
    where = summary.written[0] if n_ok == 1 else FLAGS.output
    print(f"stylized {n_ok} input{'s' if n_ok != 1 else ''} into {where}")
    return 0


class _CallableModule(types.ModuleType):
    """`anime_gan.stylize` is this module; calling it calls `stylize(image, model=None)`."""

    def __call__(self, image_uint8, model=None, adjust_brightness=False):
        return stylize(image_uint8, model=model, adjust_brightness=adjust_brightness)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
