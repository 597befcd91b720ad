"""Images in and out: any common file in, 8-bit RGB out; and the one mapping between uint8 pixels
and the networks' [-1, 1] range.

Pixels are decoded by OpenCV with IMREAD_UNCHANGED so that 16-bit samples and alpha survive to be
handled here; with that flag OpenCV ignores the EXIF orientation, so the tag is read with Pillow
(installed with matplotlib) and applied here, as a camera viewer would. Conversions:
- 16-bit -> 8-bit by v / 257 rounded (65535 -> 255 exactly, as TensorFlow's PNG decoder does);
- grayscale -> three equal channels;
- RGBA / gray + alpha -> composited over white (transparent areas usually hold black or garbage);
- first frame of an animated GIF.
Given a `check_size`, `read_image` and `decode_image` read the size from the file's header
(`data_prep.image_header.image_size`) and check it before OpenCV decodes a pixel, so a 20000x20000
PNG of 1.2 MB is refused without the 1.2 GB its pixels would take.
Every failure is an `ImageError` whose message is one sentence naming the problem and the fix.

Pixel mapping, as in the original (its training input and its inference): x = u8 / 127.5 - 1 in,
u8 = truncate(clip((y + 1) / 2 * 255, 0, 255)) out (truncation, not rounding, like the original's
`astype(uint8)`). `images_to_unit_range` and `unit_range_to_images` are TensorFlow ops, so the same
functions run inside the exported SavedModel's graph, in tf.data and eagerly on NumPy arrays.
"""

from __future__ import annotations

import io
import pathlib

import cv2
import numpy as np

from anime_gan.errors import UserError
from data_prep import files
from data_prep.image_header import image_size

# Stylizing reads through OpenCV, which also decodes GIF, WebP and TIFF; the training set keeps to
# the formats TensorFlow's decoders and the header sniffer read (data_prep.files.IMAGE_EXTENSIONS).
IMAGE_SUFFIXES = files.IMAGE_EXTENSIONS + (".gif", ".webp", ".tif", ".tiff")
# Formats written back in their own format; anything else (GIF) is written as PNG.
WRITABLE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
# Containers stylized videos are written in (H.264 with AAC or MP3 sound fits each), by suffix.
VIDEO_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
EXIF_ORIENTATION = 0x0112


class ImageError(UserError, ValueError):
    """An image that cannot be stylized; the message says why and what to do."""


# ---- pixels <-> the networks' range ---------------------------------------------------------------
# TensorFlow is imported on first call: the commands import this module before TensorFlow loads.

def images_to_unit_range(images):
    """uint8 (or float) pixels in [0, 255] -> float32 in [-1, 1] by x / 127.5 - 1, the original's mapping."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def unit_range_to_pixels(y):
    """float [-1, 1] -> float [0, 255] by (y + 1) / 2 * 255, unclipped (e.g. VGG's Caffe input)."""
    return (y + 1.0) / 2.0 * 255.0


def unit_range_to_images(y):
    """float [-1, 1] -> uint8: (y + 1) / 2 * 255, clipped, truncated like the original."""
    import tensorflow as tf

    # tf.cast from float to uint8 truncates toward zero, which is numpy's astype(uint8) here.
    return tf.cast(tf.clip_by_value(unit_range_to_pixels(y), 0.0, 255.0), tf.uint8)


def is_image_path(path):
    return pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_video_path(path):
    return pathlib.Path(path).suffix.lower() in VIDEO_SUFFIXES


def exif_orientation(data):
    """The EXIF orientation tag (1..8) of encoded image bytes; 1 where there is none."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - no readable EXIF is the same as no rotation
        return 1
    return value if value in range(1, 9) else 1


def apply_orientation(image, orientation):
    """Turns an H x W x C array as EXIF orientation 1..8 says (the stored image -> upright)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return np.swapaxes(image, 0, 1)
    if orientation == 6:
        return np.rot90(image, k=-1)
    if orientation == 7:
        return np.swapaxes(image[::-1, ::-1], 0, 1)
    if orientation == 8:
        return np.rot90(image, k=1)
    return image


def to_rgb_uint8(image, name="image"):
    """Any H x W [x C] uint8/uint16 array (gray, gray+alpha, RGB, RGBA) -> uint8 H x W x 3 RGB."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(v / 257)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ImageError(
            f"{name} has {image.dtype} samples; pass 8- or 16-bit integer pixels "
            "(e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1])."
        )
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(
            f"{name} has shape {image.shape}; expected H x W (gray) or H x W x 1/2/3/4 channels."
        )
    channels = image.shape[-1]
    if channels in (2, 4):
        color, alpha = image[..., :-1].astype(np.float32), image[..., -1:].astype(np.float32) / 255.0
        image = np.clip(np.round(color * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def decode_image(data, name="image", check_size=None):
    """Encoded bytes (JPEG, PNG, BMP, GIF, WebP, TIFF) -> uint8 H x W x 3 RGB, upright.

    check_size(height, width, name): when given, called with the size in the header before anything
    is decoded (where the format is recognised), and it raises ImageError to refuse the image. The
    header's size is the stored one, before the EXIF orientation turns it.
    """
    if len(data) == 0:
        raise ImageError(f"{name} is empty (0 bytes); replace it with a real image or remove it.")
    if check_size is not None:
        size = image_size(data)
        if size is not None:
            check_size(size[0], size[1], name)
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(
            f"{name} is not a readable image (OpenCV cannot decode it); "
            "check that it is a JPEG, PNG, BMP, GIF, WebP or TIFF file, or remove it."
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{name} has {image.dtype} samples; save it as an 8- or 16-bit image.")
    # OpenCV orders colour channels BGR(A).
    if image.ndim == 3 and image.shape[-1] == 3:
        image = image[..., ::-1]
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., [2, 1, 0, 3]]
    image = apply_orientation(image, exif_orientation(data))
    return to_rgb_uint8(image, name)


def read_image(path, check_size=None):
    """A file -> uint8 H x W x 3 RGB, upright; `ImageError` with a one-line reason otherwise.

    check_size: see `decode_image` (the size in the header is checked before decoding).
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path} cannot be read ({e.strerror or e}); check the path and its permissions.") from None
    return decode_image(data, str(path), check_size)


def output_suffix(suffix):
    suffix = suffix.lower()
    return suffix if suffix in WRITABLE_SUFFIXES else ".png"


def write_image(path, image_rgb):
    """Writes uint8 RGB (or gray) to path, format from its suffix, atomically (`data_prep.files.write_image`).

    ImageError for a suffix stylize does not write or a format OpenCV cannot encode; OSError when
    the file cannot be written.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ImageError(f"cannot write {path}: use one of {', '.join(WRITABLE_SUFFIXES)} as the suffix.")
    try:
        return files.write_image(path, image_rgb)
    except ValueError as e:
        raise ImageError(str(e)) from None
