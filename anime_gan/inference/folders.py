"""What a stylize run works on and reports: the plan of an --input and --output (`plan_output`,
`folder_jobs`), the `Summary` of what was written, and Ctrl-C handling (`StopOnCtrlC`, `Interrupted`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import signal
import threading
import types

from anime_gan import image_io
from anime_gan.image_io import ImageError

log = logging.getLogger(__name__)

VIDEO_OUTPUT_SUFFIX = ".mp4"  # container of every video we write (H.264, see anime_gan.inference.video)
NEVER_STOP = types.SimpleNamespace(check=lambda: None)  # a `stop` that never stops a run


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

    def fail(self, path, reason):
        """Lists path as failed and logs the reason in one error line (naming path once)."""
        self.failed.append((str(path), reason))
        log.error("%s", reason if str(path) in reason else f"{path}: {reason}")

    def warn(self):
        """Logs `sentence()` as a warning (what the command says when some inputs failed)."""
        log.warning("%s.", self.sentence())

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


def _first_five(items):
    return ", ".join(p for p, _ in items[:5]) + (" ..." if len(items) > 5 else "")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended a run; `summary` holds what was written before it (every listed file is complete)."""

    def __init__(self, summary):
        super().__init__()
        self.summary = summary

    def sentence(self):
        left = self.summary.inputs - len(self.summary.written) - len(self.summary.failed)
        return (f"stopped by Ctrl-C: {self.summary.sentence()}; "
                f"the other {left} input{'s were' if left != 1 else ' was'} not written.")

    def warn(self):
        """Logs `sentence()` as a warning (what the command says on Ctrl-C)."""
        log.warning("%s", self.sentence())


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
        suffix = VIDEO_OUTPUT_SUFFIX if kind == "video" else image_io.output_suffix(src.suffix)
        out = out / (src.stem + suffix)
    if _same_file(src, out):
        raise ImageError("--output must differ from --input: the photo would be overwritten.")
    return kind, out


def plan_jobs(input_path, output_path):
    """(kind, image jobs, video jobs) of an --input and --output: [(source, destination)] each; ImageError
    for an unusable pair or a folder with nothing to stylize."""
    kind, destination = plan_output(input_path, output_path)
    if kind == "video":
        return kind, [], [(pathlib.Path(input_path), destination)]
    if kind == "image":
        return kind, [(pathlib.Path(input_path), destination)], []
    jobs, videos = folder_jobs(input_path, destination)
    if not jobs and not videos:
        raise ImageError(f"--input={input_path} holds no images ({', '.join(image_io.IMAGE_SUFFIXES)}) "
                         f"and no videos ({', '.join(image_io.VIDEO_SUFFIXES)}).")
    return kind, jobs, videos
