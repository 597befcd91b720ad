"""Looking at image folders: what is there, what is unusable and why, in one readable report.

`sniff` reads only a file's header and tail (no decoding), so a folder of thousands of images is
checked in about a second. It names the problems that make a file unusable (empty, not an image,
truncated, too small, too large to decode: above MAX_IMAGE_PIXELS; dangling symbolic links and link
loops are named too) and notes what a reader will convert on the fly (CMYK, 16-bit, grayscale, alpha,
very large). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import struct

from data_prep.files import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)
# Beyond this many pixels an image is decoded at full size each time it is drawn: warn.
LARGE_PIXELS = 4096 * 4096
# Beyond this many pixels an image is refused from its header, before anything decodes it. 8192² is
# twice the default inference max side (anime_gan.constants.DEFAULT_MAX_SIDE = 4096) on each side and
# far above the 256² training crops. Decoding costs about 6-12 bytes a pixel (uint8 RGB + gray, then
# the float32 resize): ~0.8 GB at the cap, while one 20000² PNG (1.2 MB on disk) peaked at 2.4 GB in
# data_prep and 4.8 GB in the training pipeline's build (tests/dataprep/test_data_faults.py, cap lifted). Every
# reader of training images goes through `sniff`, so this one cap covers data_prep (report,
# smoothing) and the tf.data pipeline.
MAX_IMAGE_PIXELS = 8192 * 8192
DEFAULT_MIN_SIDE = 16
_HEAD_BYTES = 1 << 16


class DataError(Exception):
    """A problem with the user's data, told in one sentence that names the folder or file and the fix."""


class BadImage(Exception):
    """One unusable image; the message is the reason."""


@dataclasses.dataclass
class ImageInfo:
    path: str
    format: str | None = None  # "jpeg", "png", "bmp"
    width: int = 0
    height: int = 0
    channels: int = 0  # as stored: 1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha or CMYK
    bit_depth: int = 8
    cmyk: bool = False
    problem: str | None = None  # set: the file is unusable
    notes: list[str] = dataclasses.field(default_factory=list)  # usable, but converted on the fly

    @property
    def ok(self) -> bool:
        return self.problem is None


def _jpeg_header(head: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from the first SOF marker, or None when it is not in `head`."""
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(head):
                return None
            _, height, width, comps = struct.unpack(">BHHB", head[i + 4:i + 10])
            return height, width, comps
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def too_large(width: int, height: int, max_pixels: int | None = None) -> str | None:
    """The reason an image of this size is refused before decoding (None: small enough)."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if width * height <= limit:
        return None
    return (f"too large to decode: {width}×{height} pixels = {width * height / 1e6:.0f} MP, above the "
            f"{limit / 1e6:.0f} MP limit; shrink it, e.g. to 4096 pixels on its longer side")


def link_problem(path: str) -> str | None:
    """Why the symbolic link `path` leads nowhere (dangling or a loop), or None."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
        return None
    except OSError as e:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if e.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target}); fix or remove the link"
        return f"dangling symbolic link (-> {target}, which does not exist); fix or remove the link"


def sniff(path: str, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int | None = None) -> ImageInfo:
    """Header-level facts about one file, with `problem` set when it cannot be used as an image.

    An image above `max_pixels` (default MAX_IMAGE_PIXELS) is a problem, found from the header alone.
    """
    info = ImageInfo(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        info.problem = f"not an image file name (extension {ext or 'missing'}; use {', '.join(IMAGE_EXTENSIONS)})"
        return info
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as e:
        info.problem = f"cannot be read ({e.strerror or e})"
        return info
    if size == 0:
        info.problem = "empty file (0 bytes)"
        return info
    if head[:3] == b"\xff\xd8\xff":
        info.format = "jpeg"
        header = _jpeg_header(head)
        if header is None and size > len(head):
            with open(path, "rb") as f:
                header = _jpeg_header(f.read())
        if header is None:
            info.problem = "broken JPEG (no frame header)"
            return info
        info.height, info.width, info.channels = header
        info.problem = too_large(info.width, info.height, max_pixels)
        if info.problem:
            return info
        # A complete JPEG ends with the end-of-image marker (some writers pad with zeros after it).
        if not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            info.problem = "truncated JPEG (no end-of-image marker)"
            return info
        if info.channels == 4:
            info.cmyk = True
            info.notes.append("CMYK JPEG, converted to RGB")
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        info.format = "png"
        if len(head) < 33 or head[12:16] != b"IHDR":
            info.problem = "broken PNG (no IHDR header)"
            return info
        info.width, info.height, info.bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
        info.channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type, 0)
        info.problem = too_large(info.width, info.height, max_pixels)
        if info.problem:
            return info
        if b"IEND" not in tail:
            info.problem = "truncated PNG (no IEND chunk)"
            return info
        if info.bit_depth == 16:
            info.notes.append("16-bit PNG, reduced to 8 bits")
    elif head[:2] == b"BM" and len(head) >= 30:
        info.format = "bmp"
        width, height = struct.unpack("<ii", head[18:26])
        info.width, info.height = width, abs(height)
        (bpp,) = struct.unpack("<H", head[28:30])
        info.channels = 1 if bpp <= 8 else (4 if bpp == 32 else 3)
        info.problem = too_large(info.width, info.height, max_pixels)
        if info.problem:
            return info
    else:
        info.problem = "not an image (contents are neither JPEG, PNG nor BMP)"
        return info
    if min(info.width, info.height) < min_side:
        info.problem = f"too small ({info.width}×{info.height}; the shorter side must be at least {min_side})"
        return info
    if info.channels in (1, 2):
        info.notes.append("grayscale, repeated to 3 channels")
    if info.channels in (2, 4) and not info.cmyk:
        info.notes.append("alpha channel dropped")
    if info.width * info.height > LARGE_PIXELS:
        info.notes.append(f"very large ({info.width}×{info.height}), decoded at full size each time it is "
                          "read; shrink it for speed")
    return info


def require_folder(folder: str) -> None:
    """DataError (one sentence) unless `folder` is an existing directory."""
    if not os.path.isdir(folder):
        not_a_folder(folder)
        raise DataError(f"Folder {folder} does not exist; create it with your images or run `make data`.")


def not_a_folder(folder: str, flag: str = "") -> None:
    """DataError (one sentence) when `folder` exists but is no folder: a file, a dangling link, a loop.

    A missing path passes (callers create it or say it is missing). `flag` names the option that
    gave the path (e.g. "--dataset_dir"), for the fix.
    """
    where = f"{flag} " if flag else "Folder "
    fix = f"point {flag} at a folder" if flag else "pass the path of a folder"
    problem = link_problem(folder)
    if problem:
        raise DataError(f"{where}{folder} is a {problem.split(';')[0]}; fix the link or {fix}.")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{where}{folder} is a file, not a folder; {fix}.")


def image_files(folder: str) -> list[str]:
    """Sorted paths of the files in `folder` with an image extension (hidden files left out)."""
    require_folder(folder)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, n)))


@dataclasses.dataclass
class FolderReport:
    folder: str
    images: list[ImageInfo] = dataclasses.field(default_factory=list)  # usable ones
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)

    @property
    def count(self) -> int:
        return len(self.images)

    def size_range(self) -> str:
        if not self.images:
            return "-"
        lo = min(self.images, key=lambda i: i.width * i.height)
        hi = max(self.images, key=lambda i: i.width * i.height)
        return f"{lo.width}×{lo.height} … {hi.width}×{hi.height}"

    def notes(self) -> list[tuple[str, str]]:
        return [(i.path, n) for i in self.images for n in i.notes]

    def summary(self) -> str:
        return f"{self.folder}: {self.count} images, sizes {self.size_range()}, {len(self.bad)} unreadable"

    def lines(self) -> list[str]:
        out = [self.summary()]
        out += [f"  skipped {p}: {r}" for p, r in self.bad]
        out += [f"  note {p}: {n}" for p, n in self.notes()]
        return out


def scan_folder(folder: str, min_side: int = DEFAULT_MIN_SIDE, require_images: bool = True,
                max_pixels: int | None = None) -> FolderReport:
    """Sniff every file of `folder`; each unusable one gets a named warning (logged) and is left out.

    Dangling symbolic links and link loops are unusable files too (named, not skipped silently);
    images above `max_pixels` (default MAX_IMAGE_PIXELS) are refused from their header.

    Raises DataError (one sentence naming the folder) when it is missing or, with `require_images`,
    holds no usable image.
    """
    require_folder(folder)
    rep = FolderReport(folder)
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        problem = link_problem(path)
        if problem:
            rep.bad.append((path, problem))
            continue
        if not os.path.isfile(path):
            continue
        info = sniff(path, min_side, max_pixels)
        if info.ok:
            rep.images.append(info)
        else:
            rep.bad.append((path, info.problem))
    for path, reason in rep.bad:
        log.warning("%s: skipped (%s)", path, reason)
    for path, note in rep.notes():
        log.warning("%s: %s", path, note)
    if require_images and not rep.images:
        raise DataError(f"Folder {folder} holds no usable images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images or run `make data`.")
    return rep


def dataset_folders(dataset_dir: str, styles: list[str] | None = None) -> list[str]:
    """The folders of the official layout that exist under `dataset_dir`, in a stable order."""
    out = [os.path.join(dataset_dir, "train_photo")]
    for style in styles if styles is not None else find_styles(dataset_dir):
        out += [os.path.join(dataset_dir, style, "style"), os.path.join(dataset_dir, style, "smooth")]
    out.append(os.path.join(dataset_dir, "val"))
    test_dir = os.path.join(dataset_dir, "test")
    if os.path.isdir(test_dir):
        out += sorted(os.path.join(test_dir, d) for d in os.listdir(test_dir)
                      if os.path.isdir(os.path.join(test_dir, d)))
    return out


def find_styles(dataset_dir: str) -> list[str]:
    """Names of the style folders (those holding a `style/` subfolder)."""
    if not os.path.isdir(dataset_dir):
        return []
    for d in sorted(os.listdir(dataset_dir)):
        problem = link_problem(os.path.join(dataset_dir, d, "style"))
        if problem:
            log.warning("%s: not a style folder (%s)", os.path.join(dataset_dir, d, "style"), problem)
    return sorted(d for d in os.listdir(dataset_dir) if os.path.isdir(os.path.join(dataset_dir, d, "style")))


def report_dataset(dataset_dir: str, styles: list[str] | None = None,
                   min_side: int = DEFAULT_MIN_SIDE) -> list[FolderReport]:
    """A FolderReport for every folder of the layout; raises DataError for a missing or empty one."""
    return [scan_folder(f, min_side) for f in dataset_folders(dataset_dir, styles)]


def format_reports(reports: list[FolderReport]) -> str:
    return "\n".join(line for r in reports for line in r.lines())
