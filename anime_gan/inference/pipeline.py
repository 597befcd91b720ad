"""Stylize files: `run` (what `python -m anime_gan.stylize` does), image files in pipelined batches
(`stylize_images`) and videos (`stylize_video`, `video_job`).

Files are read and written in threads beside the model, and a video is decoded and encoded beside
it, so the model never waits. A file that cannot be stylized is one error line and a Summary entry;
the others are still written. Ctrl-C stops after the batch in hand is written (`StopOnCtrlC`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import sys

import numpy as np

from anime_gan import constants as C
from anime_gan import image_io
from anime_gan.errors import ConfigError
from anime_gan.image_io import ImageError
from anime_gan.inference import faces as face_mode
from anime_gan.inference.folders import NEVER_STOP, Interrupted, StopOnCtrlC, Summary, plan_jobs
from anime_gan.inference.runtimes import load_model
from anime_gan.inference.stylizer import adjust_batch, adjust_brightness, brightness_mode

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
IO_WORKERS = 2  # threads reading and writing image files while the model runs (see stylize_images)
# An image (or video frame) of more pixels runs alone, never batched with others: the memory a batch
# takes grows with its pixels, and large images may take a bounded-memory (banded) path.
SINGLE_IMAGE_PIXELS = 4 * 2**20


def stylize_batch(stylizer, photos):
    """stylizer(photos), image by image when each has more than SINGLE_IMAGE_PIXELS pixels."""
    if len(photos) > 1 and photos.shape[1] * photos.shape[2] > SINGLE_IMAGE_PIXELS:
        return np.stack([stylizer(photo[None])[0] for photo in photos])
    return stylizer(photos)


class ImageBatches:
    """The steps of one `stylize_images` call: read (ahead, in the pool), batch by size, run the model,
    write (behind, in the pool) and record each outcome in the Summary in order."""

    def __init__(self, stylizer, batch_size, adjust, progress, summary, stop, pool, faces=None):
        self.stylizer, self.batch_size, self.adjust, self.faces = stylizer, batch_size, adjust, faces
        self.progress, self.summary, self.stop, self.pool = progress, summary, stop, pool
        self.pending = collections.OrderedDict()  # (h, w) -> [(src, dst, image)]
        self.held = 0
        self.writes = collections.deque()  # [(src, dst, future or None, the exception of an inline write)]

    def tick(self):
        if self.progress is not None:
            self.progress.update(1)

    def fail(self, src, reason):
        self.summary.fail(src, reason)
        self.tick()

    # -- read -----------------------------------------------------------------------------------
    def read(self, src):
        image = image_io.read_image(src, check_size=self.stylizer.check_size)
        self.stylizer.check_size(image.shape[0], image.shape[1], str(src))
        return image

    def reads(self, jobs):
        """(src, dst, image or ImageError) in the order of jobs, read up to 2 batches ahead."""
        if self.pool is None:
            for src, dst in jobs:
                self.stop.check()
                try:
                    yield src, dst, self.read(src)
                except ImageError as e:
                    yield src, dst, e
            return
        ahead = collections.deque()
        it = iter(jobs)
        for src, dst in it:
            ahead.append((src, dst, self.pool.submit(self.read, src)))
            if len(ahead) >= 2 * self.batch_size:
                break
        try:
            while ahead:
                src, dst, future = ahead.popleft()
                self.stop.check()
                try:
                    image = future.result()
                except ImageError as e:
                    image = e
                job = next(it, None)
                if job is not None:
                    ahead.append((*job, self.pool.submit(self.read, job[0])))
                yield src, dst, image
        finally:
            for _, _, future in ahead:  # reads not started are dropped
                future.cancel()

    # -- batch ----------------------------------------------------------------------------------
    def add(self, src, dst, image):
        """Holds a decoded image with others of its size; runs the batch when full (or the oldest size
        when 4 batches' worth are held)."""
        shape = image.shape[:2]
        self.pending.setdefault(shape, []).append((src, dst, image))
        self.held += 1
        if len(self.pending[shape]) >= self.batch_size or shape[0] * shape[1] > SINGLE_IMAGE_PIXELS:
            self.flush(shape)
        elif self.held >= 4 * self.batch_size:
            self.flush(next(iter(self.pending)))

    def flush_all(self):
        while self.pending:
            self.flush(next(iter(self.pending)))

    def flush(self, shape):
        """Runs the batch of one size and queues its writes."""
        self.stop.check()
        items = self.pending.pop(shape)
        self.held -= len(items)
        for (src, dst, photo), out in zip(items, self.run(items)):
            if isinstance(out, Exception):
                self.record(block=True)  # the reports keep the order of the batches
                self.fail(src, str(out))
            else:
                if self.faces is not None:  # face mode: faces pasted over the background, one line per image
                    out, count = self.faces.apply(photo, out)
                    log.info("%s: %s", src, count.sentence())
                self.queue_write(src, dst, out, photo)
        self.record(block=False)
        while len(self.writes) > 2 * self.batch_size:  # memory: at most 2 batches of results wait to be written
            if self.writes[0][2] is not None:
                concurrent.futures.wait([self.writes[0][2]])
            self.record(block=False)

    # -- run ------------------------------------------------------------------------------------
    def run(self, items):
        """The outputs of a batch; when it fails, each image alone (an output or its ImageError), so the
        error names the right file."""
        try:
            return stylize_batch(self.stylizer, np.stack([im for _, _, im in items]))
        except ImageError:
            outputs = []
            for _, _, im in items:
                try:
                    outputs.append(self.stylizer(im[None])[0])
                except ImageError as e:
                    outputs.append(e)
            return outputs

    # -- write ----------------------------------------------------------------------------------
    def write(self, dst, out, photo):
        if self.adjust != "none":
            out = adjust_brightness(out, photo, self.adjust)
        image_io.write_image(dst, out)

    def queue_write(self, src, dst, out, photo):
        if self.pool is not None:
            self.writes.append((src, dst, self.pool.submit(self.write, dst, out, photo), None))
            return
        try:
            self.write(dst, out, photo)
            self.writes.append((src, dst, None, None))
        except (OSError, ImageError) as e:
            self.writes.append((src, dst, None, e))

    # -- record ---------------------------------------------------------------------------------
    def record(self, block):
        """Lists the finished writes, oldest first (all of them when block)."""
        writes = self.writes
        while writes and (block or writes[0][2] is None or writes[0][2].done()):
            src, dst, future, error = writes.popleft()
            if future is not None:
                error = future.exception()
            if isinstance(error, (OSError, ImageError)):
                self.summary.fail(src, f"cannot write {dst}: {error}")
            elif error is not None:
                raise error
            else:
                self.summary.written.append(str(dst))
            self.tick()


def stylize_images(stylizer, jobs, batch_size=DEFAULT_BATCH_SIZE, adjust=False, progress=None, summary=None,
                   stop=NEVER_STOP, workers=IO_WORKERS, faces=None):
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
    are listed before it propagates. faces: a `faces.FaceMode` (face mode) or None.
    """
    summary = Summary(inputs=len(jobs)) if summary is None else summary
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="stylize-io") if workers else None
    steps = ImageBatches(stylizer, batch_size, brightness_mode(adjust), progress, summary, stop, pool, faces)
    reads = steps.reads(jobs)
    try:
        for src, dst, image in reads:
            if isinstance(image, ImageError):
                steps.fail(src, str(image))
            else:
                steps.add(src, dst, image)
        steps.flush_all()
    finally:
        reads.close()
        steps.record(block=True)  # what was stylized is written and listed, also on a stop
        if pool is not None:
            pool.shutdown(wait=True)
    return summary


# ---------------------------------------------------------------------------------------------
# Videos


def video_frames_fn(stylizer, adjust, faces=None, counts=None):
    """uint8 [N, H, W, 3] frames -> their stylized frames, brightness-matched to them per `adjust`; with
    faces (a `faces.FaceMode`), faces pasted over each frame and each frame's FaceCount added to counts."""

    def fn(photos):
        out = stylize_batch(stylizer, photos)
        if faces is not None:
            done = [faces.apply(photo, frame) for photo, frame in zip(photos, out)]
            out = np.stack([frame for frame, _ in done])
            if counts is not None:
                counts.extend(count for _, count in done)
        return adjust_batch(out, photos, adjust)

    return fn


def stylize_video(stylizer, source, destination, batch_size=DEFAULT_BATCH_SIZE, adjust=False, progress=None,
                  stop=NEVER_STOP, faces=None):
    """Stylizes a video frame by frame into destination: H.264 in MP4 with the same frame timestamps
    (so fps), frame count and size, and the audio track kept (see `anime_gan.inference.video`).

    Decoding, stylizing and encoding overlap (two threads beside the calling one). Written to a
    temporary file beside destination and moved into place only when complete (a stop, see
    `StopOnCtrlC`, between batches of frames leaves nothing behind). Returns (frames written,
    frames announced by the container, 0 if it announces none and none failed to decode); frames
    that fail to decode are skipped, so the first number can be the smaller. Raises ImageError on
    an unreadable video. adjust: a --adjust_brightness mode (see `brightness_mode`), applied to
    each frame with its source frame (RGB both). faces: a `faces.FaceMode` (face mode) or None.
    """
    written, announced, _ = _transform_video(stylizer, source, destination, batch_size, adjust, progress, stop,
                                             faces)
    return written, announced


def _transform_video(stylizer, source, destination, batch_size, adjust, progress, stop, faces=None):
    from anime_gan.inference import video  # PyAV: imported when a video is stylized

    counts = []
    fn = video_frames_fn(stylizer, brightness_mode(adjust), faces, counts)
    written, announced, info = video.transform_video(fn, source, destination, batch_size, progress=progress,
                                                     stop=stop, check_size=stylizer.check_size)
    if not announced and info.bad_packets:  # no count announced (MKV, WebM): the frames seen
        announced = written + info.bad_packets
    info.face_counts = counts if faces is not None else None
    return written, announced, info


def video_job(stylizer, source, destination, batch_size, adjust, summary, progress, stop=NEVER_STOP, faces=None):
    """stylize_video, its outcome recorded in summary and logged in one line."""
    try:
        frames, expected, info = _transform_video(stylizer, source, destination, batch_size, adjust, progress,
                                                  stop, faces)
    except ImageError as e:
        summary.fail(source, str(e))
    except OSError as e:
        summary.fail(source, f"cannot write {destination}: {e.strerror or e}")
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

    faces = "" if info.face_counts is None else f"; {face_mode.frames_sentence(info.face_counts)}"
    audio = ("no audio track" if info.audio is None else f"{info.audio} audio copied"
             if info.audio in video.AUDIO_COPY_CODECS else f"{info.audio} audio re-encoded to AAC")
    height, width = video.even_size(info.height, info.width)
    if (height, width) != (info.height, info.width):
        audio += f"; {info.height}x{info.width} written as {height}x{width}: {video.ODD_SIZE_NOTE}"
    return audio + faces


# ---------------------------------------------------------------------------------------------
# A whole run


def run(model, input_path, output_path, batch_size=DEFAULT_BATCH_SIZE, adjust=False, max_side=None,
        show_progress=None, runtime=None, precision="float32", calibration_dir=None, faces=False, face_model=None,
        face_size=C.FACE_SIZE):
    """Everything `python -m anime_gan.stylize` does, minus flag parsing. Returns a Summary.

    adjust: a --adjust_brightness mode ("official", "luma", "none") or a bool (True: "official").
    runtime, precision, calibration_dir: as `anime_gan.inference.load_model` takes them.
    faces: face mode (`anime_gan.inference.faces`), each face stylized by face_model (default: model) in
    an aligned face_size crop and pasted over the photo stylized by model; one line per image says
    what was found. Raises a UserError (ImageError, ConfigError, PathNotFoundError, ModelError) for an
    unusable --input, --output, --model or flag, before anything is written. Messages go to the
    "anime_gan.inference" loggers. Ctrl-C (in the main thread) stops once the batch in hand is written
    and raises `Interrupted`, a KeyboardInterrupt holding the Summary of what was written.
    """
    from tqdm import tqdm

    adjust = brightness_mode(adjust)
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size} must be at least 1.")
    if faces:
        face_mode.require_detector()  # before anything loads
    kind, jobs, videos = plan_jobs(input_path, output_path)
    stylizer = load_model(model, max_side=max_side, runtime=runtime, precision=precision,
                          calibration_dir=calibration_dir)
    paster = None  # face mode's FaceMode
    if faces:
        same = face_model is None or face_model == model
        paster = face_mode.FaceMode(stylizer if same else load_model(face_model, runtime=runtime, precision=precision,
                                                                     calibration_dir=calibration_dir),
                                    face_size, batch_size=batch_size)
    summary = Summary(inputs=len(jobs) + len(videos))
    # disable=None: a bar on a terminal, none in logs and pipes.
    disable = None if show_progress is None else not show_progress
    with StopOnCtrlC() as stop, tqdm(total=0, unit="img", disable=disable, file=sys.stderr,
                                     dynamic_ncols=True) as bar:
        try:
            if kind == "video":
                bar.unit = "frame"
                video_job(stylizer, videos[0][0], videos[0][1], batch_size, adjust, summary, bar, stop, paster)
                return summary
            if videos:
                bar.unit = "file"
            bar.reset(total=len(jobs) + len(videos))
            stylize_images(stylizer, jobs, batch_size, adjust, progress=bar, summary=summary, stop=stop,
                           faces=paster)
            for src, dst in videos:
                # Frames on a second bar under the files' bar.
                with tqdm(total=0, unit="frame", desc=src.name, disable=disable, leave=False, position=1,
                          file=sys.stderr, dynamic_ncols=True) as frames:
                    video_job(stylizer, src, dst, batch_size, adjust, summary, frames, stop, paster)
                bar.update(1)
            return summary
        except KeyboardInterrupt:
            raise Interrupted(summary) from None
