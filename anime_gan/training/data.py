"""tf.data input pipelines for AnimeGAN training (photos; anime RGB + grayscale x; grayscale smooth y).

What each element is (docs/original.md, "Data"): images read as RGB and scaled by x/127.5 - 1 to [-1, 1];
x = the anime image read as grayscale with OpenCV's weights, repeated to 3 channels; y = the smoothed
anime image read as grayscale, repeated to 3 channels. As in the official code, photos, anime and
smoothed anime are three independent streams, each shuffled afresh every epoch; steps per epoch =
floor(max(#photos, #anime) / batch).

How it matches OpenCV: JPEGs are decoded with libjpeg's accurate integer DCT (`INTEGER_ACCURATE`,
which is what OpenCV uses; TensorFlow's default fast DCT differs by up to ~18 grey levels), and the
grayscale copy of a JPEG is its luma plane decoded directly, as `cv2.imread(path, IMREAD_GRAYSCALE)`
does. CMYK JPEGs and BMPs get their grayscale from RGB with OpenCV's fixed-point weights.

Sizes: images already img_size × img_size pass untouched (as in the original). Any other image is
resized (bilinear, antialiased) so its shorter side is img_size and then randomly cropped to a square;
an anime image and its grayscale copy get the same crop.

Robustness and exact resume: every file is checked when the pipeline is built (header sniff plus a
trial decode with the same TensorFlow ops the pipeline uses); unusable files are logged and left out,
so an epoch never stops on a bad image. An image above `report.MAX_IMAGE_PIXELS` is refused from its
header before anything decodes it (once, at build time, one warning naming it and its size), and so are
dangling symbolic links and link loops. The dataset graph holds only tf.io / tf.image ops and stateless
randomness seeded from (seed, element counter), so `tf.train.Checkpoint(iterator=iter(ds))` saves and
restores the exact position, shuffle order and crops.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from anime_gan.image_io import images_to_unit_range
from data_prep import demo, report
from data_prep.files import IMAGE_EXTENSIONS
from data_prep.report import DataError, FolderReport

__all__ = ["DataError", "TrainDataReport", "ensure_demo_data", "make_train_dataset", "make_val_dataset",
           "scan_images", "load_image"]

# How a file is decoded (chosen once per file from its header).
KIND_JPEG = 0  # decode_jpeg; grayscale = the luma plane (as OpenCV)
KIND_PNG = 1  # decode_png; grayscale by libpng (as OpenCV)
KIND_RGB_ONLY = 2  # CMYK JPEG or BMP: grayscale computed from RGB with OpenCV's weights

_AUTOTUNE = tf.data.AUTOTUNE

log = logging.getLogger(__name__)


def _kind(info: report.ImageInfo) -> int:
    if info.format == "jpeg":
        return KIND_RGB_ONLY if info.cmyk else KIND_JPEG
    return KIND_PNG if info.format == "png" else KIND_RGB_ONLY


def _decode_rgb(contents: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
    def jpeg():
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)

    img = tf.cond(tf.logical_or(kind == KIND_JPEG, tf.logical_and(kind == KIND_RGB_ONLY,
                                                                   tf.image.is_jpeg(contents))), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def _gray_from_rgb(rgb: tf.Tensor) -> tf.Tensor:
    """OpenCV's RGB->GRAY in its own fixed point: (4899 R + 9617 G + 1868 B + 2^13) >> 14."""
    x = tf.cast(rgb, tf.int32)
    y = (x[..., 0:1] * 4899 + x[..., 1:2] * 9617 + x[..., 2:3] * 1868 + 8192) // 16384
    return tf.cast(y, tf.uint8)


def _decode_gray(contents: tf.Tensor, kind: tf.Tensor, rgb: tf.Tensor | None) -> tf.Tensor:
    def jpeg():
        return tf.io.decode_jpeg(contents, channels=1, dct_method="INTEGER_ACCURATE")

    def png():
        return tf.io.decode_png(contents, channels=1, dtype=tf.uint8)

    def from_rgb():
        return _gray_from_rgb(rgb if rgb is not None else _decode_rgb(contents, kind))

    gray = tf.switch_case(tf.cast(kind, tf.int32), [jpeg, png, from_rgb])
    gray.set_shape([None, None, 1])
    return gray


def _fit(img: tf.Tensor, img_size: int, seed: tf.Tensor) -> tf.Tensor:
    """float32 [img_size, img_size, C] in 0..255: untouched at img_size², else shorter side + random crop."""
    shape = tf.shape(img)
    h, w, c = shape[0], shape[1], img.shape[-1]

    def untouched():
        return tf.cast(img, tf.float32)

    def resize_and_crop():
        scale = img_size / tf.cast(tf.minimum(h, w), tf.float64)
        nh = tf.maximum(img_size, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
        nw = tf.maximum(img_size, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))
        resized = tf.cond(tf.logical_and(nh == h, nw == w), lambda: tf.cast(img, tf.float32),
                          lambda: tf.image.resize(img, [nh, nw], method="bilinear", antialias=True))
        return tf.image.stateless_random_crop(resized, [img_size, img_size, c], seed=seed)

    out = tf.cond(tf.logical_and(h == img_size, w == img_size), untouched, resize_and_crop)
    out.set_shape([img_size, img_size, c])
    return out


def load_image(path, kind, seed, img_size: int, rgb: bool = True, gray: bool = False):
    """Read one file; returns (rgb [S,S,3], gray [S,S,3]) float32 in [-1, 1] for the parts requested."""
    contents = tf.io.read_file(path)
    parts = []
    rgb_img = _decode_rgb(contents, kind) if rgb else None
    if rgb:
        parts.append(rgb_img)
    if gray:
        parts.append(_decode_gray(contents, kind, rgb_img))
    # One crop for RGB and grayscale together, so x is exactly the grayscale of the anime image.
    fitted = images_to_unit_range(_fit(tf.concat(parts, -1) if len(parts) > 1 else parts[0], img_size, seed))
    out = []
    if rgb:
        out.append(fitted[..., :3])
    if gray:
        out.append(tf.tile(fitted[..., -1:], [1, 1, 3]))
    return tuple(out)


def _trial_decode(paths: list[str], kinds: list[int], gray: bool) -> dict[int, str]:
    """{index: reason} of the files the pipeline's own decoders reject (e.g. truncated data)."""
    def check(i, p, k):
        contents = tf.io.read_file(p)
        rgb = _decode_rgb(contents, k)
        n = tf.reduce_sum(tf.shape(rgb))
        if gray:
            n += tf.reduce_sum(tf.shape(_decode_gray(contents, k, rgb)))
        return i, n

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths,
                                             np.asarray(kinds, np.int32)))
    ds = ds.map(check, num_parallel_calls=_AUTOTUNE, deterministic=False).ignore_errors()
    ok = {int(i) for i, _ in ds.as_numpy_iterator()}
    failed = {}
    for i in sorted(set(range(len(paths))) - ok):
        try:
            check(tf.constant(i, tf.int64), tf.constant(paths[i]), tf.constant(kinds[i]))
            failed[i] = "cannot be decoded"
        except (tf.errors.OpError, ValueError) as e:
            msg = getattr(e, "message", str(e)).strip().splitlines()
            failed[i] = "cannot be decoded: " + (msg[-1] if msg else type(e).__name__)
    return failed


def scan_images(folder: str, img_size: int = 256, gray: bool = False, what: str = "images",
                min_side: int | None = None) -> tuple[list[str], list[int], FolderReport]:
    """Usable image files of `folder` (paths, decode kinds, report); each unusable one is logged.

    Raises DataError (one sentence naming the folder) when the folder is missing or has none usable.
    """
    min_side = min_side if min_side is not None else max(2, img_size // 4)
    rep = report.scan_folder(folder, min_side, require_images=False)
    paths = [i.path for i in rep.images]
    kinds = [_kind(i) for i in rep.images]
    failed = _trial_decode(paths, kinds, gray) if paths else {}
    for i, reason in failed.items():
        log.warning("%s: skipped (%s)", paths[i], reason)
        rep.bad.append((paths[i], reason))
    rep.images = [info for i, info in enumerate(rep.images) if i not in failed]
    keep = [i for i in range(len(paths)) if i not in failed]
    if not keep:
        raise DataError(f"Folder {folder} holds no usable {what} ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images or run `make data`.")
    return [paths[i] for i in keep], [kinds[i] for i in keep], rep


@dataclasses.dataclass
class TrainDataReport:
    photo: FolderReport
    anime: FolderReport
    smooth: FolderReport
    steps_per_epoch: int
    batch_size: int

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.photo.bad + self.anime.bad + self.smooth.bad

    def summary(self) -> str:
        lines = [r.summary() for r in (self.photo, self.anime, self.smooth)]
        lines.append(f"{self.steps_per_epoch} steps per epoch at batch {self.batch_size}")
        lines += [f"skipped {p}: {r}" for p, r in self.skipped]
        return "\n".join(lines)


def _stream(paths, kinds, seed: int, stream: int, shuffle: bool, img_size: int, batch_size: int,
            rgb: bool, gray: bool) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices((paths, np.asarray(kinds, np.int32)))
    if shuffle:  # on file names, so the shuffle buffer (saved in checkpoints) stays small
        files = files.shuffle(len(paths), seed=seed * 3 + stream, reshuffle_each_iteration=True)
    files = files.repeat()
    # The element counter seeds the crop: stateless, so a restored iterator makes the same crops.
    ds = tf.data.Dataset.zip((files, tf.data.Dataset.counter()))

    def load(pk, i):
        return load_image(pk[0], pk[1], tf.stack([tf.cast(seed * 3 + stream, tf.int64), i]), img_size, rgb, gray)

    ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True)


def make_train_dataset(dataset_dir: str, style: str, batch_size: int, img_size: int = 256, seed: int = 0,
                       shuffle: bool = True):
    """The training input: (ds, steps_per_epoch, report).

    ds yields (photo, anime, anime_gray, smooth_gray), each float32 [batch, img_size, img_size, 3] in
    [-1, 1], forever (batches drop the remainder). Files come from dataset_dir/train_photo,
    dataset_dir/<style>/style and dataset_dir/<style>/smooth. report (TrainDataReport) lists counts,
    sizes and every skipped file with its reason. Raises DataError for a missing or empty folder.
    """
    if batch_size < 1 or img_size < 8:
        raise DataError(f"batch_size must be >= 1 and img_size >= 8 (got {batch_size}, {img_size}).")
    report.not_a_folder(dataset_dir, "--dataset_dir")
    photo_dir = os.path.join(dataset_dir, "train_photo")
    anime_dir = os.path.join(dataset_dir, style, "style")
    smooth_dir = os.path.join(dataset_dir, style, "smooth")
    photo_paths, photo_kinds, photo_rep = scan_images(photo_dir, img_size, False, "photos")
    anime_paths, anime_kinds, anime_rep = scan_images(anime_dir, img_size, True, "style images")
    smooth_paths, smooth_kinds, smooth_rep = scan_images(
        smooth_dir, img_size, True, f"smoothed style images (run `python -m data_prep --source=existing "
        f"--out={dataset_dir}` to make them)")
    steps = max(len(photo_paths), len(anime_paths)) // batch_size
    if steps == 0:
        raise DataError(f"batch_size {batch_size} is larger than both the {len(photo_paths)} photos and the "
                        f"{len(anime_paths)} style images in {dataset_dir}; lower --batch_size.")
    rep = TrainDataReport(photo_rep, anime_rep, smooth_rep, steps, batch_size)
    photos = _stream(photo_paths, photo_kinds, seed, 0, shuffle, img_size, batch_size, True, False)
    anime = _stream(anime_paths, anime_kinds, seed, 1, shuffle, img_size, batch_size, True, True)
    smooth = _stream(smooth_paths, smooth_kinds, seed, 2, shuffle, img_size, batch_size, False, True)
    ds = tf.data.Dataset.zip((photos, anime, smooth)).map(lambda p, a, s: (p[0], a[0], a[1], s[0]))
    ds = ds.prefetch(_AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    log.debug("training data:\n%s", rep.summary())  # training logs the summary itself
    return ds, steps, rep


def _val_size(side: int, img_size: int) -> int:
    # The original's test-time sizing: sides up to img_size become img_size, longer ones drop to a
    # multiple of 32 (docs/original.md, "Inference in the official code").
    return img_size if side <= img_size else side - side % 32


def make_val_dataset(val_dir: str, img_size: int = 256, limit: int | None = None) -> list:
    """The sample images for progress pictures: a list of (file name, float32 [1, H, W, 3] in [-1, 1]).

    Read with OpenCV (BGR -> RGB) and resized (OpenCV's default bilinear) the original's way: each side
    up to img_size becomes img_size, longer sides drop to a multiple of 32. Sorted by file name; the
    first `limit` usable images. Unusable files are logged and left out; DataError when none is usable.
    """
    import cv2

    rep = report.scan_folder(val_dir, 2, require_images=False)
    out = []
    for info in rep.images:
        if limit is not None and len(out) >= limit:
            break
        bgr = cv2.imdecode(np.fromfile(info.path, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("%s: skipped (OpenCV cannot decode it)", info.path)
            continue
        h, w = bgr.shape[:2]
        rgb = cv2.resize(bgr, (_val_size(w, img_size), _val_size(h, img_size)))[..., ::-1]
        out.append((os.path.basename(info.path), images_to_unit_range(rgb[None]).numpy()))
    if not out:
        raise DataError(f"Folder {val_dir} holds no usable images for samples; add a few photos or run `make data`.")
    return out


def ensure_demo_data(dataset_dir: str, dataset: str) -> None:
    """Builds the offline demo set in dataset_dir on first use of --dataset=Demo; any other style's
    data is the user's to provide (`make data`)."""
    if dataset != demo.STYLE or os.path.isdir(os.path.join(dataset_dir, demo.STYLE, "smooth")):
        return
    log.info(f"Building the offline demo set in {dataset_dir} (first run) ...")
    demo.ensure(dataset_dir, progress=False)
