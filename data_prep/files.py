"""Image files on disk: which names count as images, and the one atomic image writer.

Both packages write images through `write_image` (`anime_gan.image_io.write_image` is it with the
stylize command's error messages): encoded in memory, written to a hidden temporary file beside the
destination and moved into place, so no reader ever sees a half-written image.
"""
from __future__ import annotations

import os
import pathlib
import tempfile

import cv2
import numpy as np

# The training set's formats: what the header sniffer (`report.sniff`) and TensorFlow's decoders in
# `anime_gan.training.data` read. (Stylizing reads more through OpenCV: `anime_gan.image_io.IMAGE_SUFFIXES`.)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
JPEG_QUALITY = 95  # OpenCV's default, written out so the output does not depend on it


def make_readable(path) -> None:
    """mkstemp creates files 0600; give the finished file the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_image(path, image: np.ndarray, bgr: bool = False) -> pathlib.Path:
    """Writes uint8 pixels (H x W gray, or H x W x 3 RGB; BGR with `bgr=True`, as OpenCV arrays are)
    to `path`, format from its suffix, atomically. Returns the path.

    ValueError (one sentence) when OpenCV cannot encode that format; OSError when it cannot be written.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower() or ".png"
    image = np.asarray(image)
    if image.ndim == 3 and not bgr:
        image = image[..., ::-1]  # OpenCV encodes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    try:
        ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(image), params)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"OpenCV cannot encode {path} as {suffix}; use a .png or .jpg name.")
    return write_bytes(path, encoded.tobytes())


def write_bytes(path, data: bytes) -> pathlib.Path:
    """Writes data to path atomically: a hidden temporary file beside it (mode as for a new file),
    moved into place, removed on any failure. Returns the path; OSError when it cannot be written."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
