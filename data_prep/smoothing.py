"""Edge smoothing of anime style images (the `smooth/` copies the discriminator sees as "fake").

The official recipe for one style image at size s (docs/original.md, "Data"): resize the BGR copy and the
separately read grayscale copy to s×s with OpenCV's default interpolation; edges = Canny(gray, 100, 200);
mask = dilate(edges, 5×5 ones); every masked pixel takes, per channel, the 5×5 Gaussian
(`getGaussianKernel(5, 0)` outer product) over the image padded by 2 in numpy's 'reflect' mode, the
float64 sum **truncated** to uint8; the other pixels keep the resized image.

The official code does this pixel by pixel with `np.sum(window * kernel)`; `smooth_arrays` computes the
same numbers for the whole image at once (about 300× faster, see bench/bench_data.py). Why the numbers are the same bit for bit, truncation included: `getGaussianKernel(5, 0)` is OpenCV's
fixed binomial table (1, 4, 6, 4, 1)/16, so every weight is k/256 and every product uint8 × weight is
an exact multiple of 1/256 below 256; every partial sum is then exact in float64 and the order of the
additions cannot change the result. So the fast path sums integer weights exactly (separably, in
uint16) and divides by 256 with truncation. For any other kernel the general path adds in numpy's own
order for a 25-element reduction (eight running sums, element k into sum k mod 8 for k < 24, combined
as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)), then element 24), so equality survives a non-dyadic kernel.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
from typing import Iterable

import cv2
import numpy as np

from data_prep import report
from data_prep.files import write_image

log = logging.getLogger(__name__)

KERNEL_SIZE = 5
CANNY_LOW, CANNY_HIGH = 100, 200
_PAD = KERNEL_SIZE // 2


def gaussian_kernel() -> np.ndarray:
    """The 5×5 float64 Gaussian of the original: outer product of `getGaussianKernel(5, 0)`."""
    g = cv2.getGaussianKernel(KERNEL_SIZE, 0)
    return g * g.T


def edge_mask(gray: np.ndarray) -> np.ndarray:
    """Dilated Canny edges (uint8, nonzero where the original smooths)."""
    edges = cv2.Canny(gray, CANNY_LOW, CANNY_HIGH)
    return cv2.dilate(edges, np.ones((KERNEL_SIZE, KERNEL_SIZE), np.uint8))


def _window_sum(products: list[np.ndarray]) -> np.ndarray:
    """Sum 25 arrays in numpy's pairwise order for a 25-element reduction (see module docstring)."""
    acc = [products[m].copy() for m in range(8)]
    for start in (8, 16):
        for m in range(8):
            acc[m] += products[start + m]
    total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    total += products[24]
    return total


def _resize_pair(bgr: np.ndarray, gray: np.ndarray, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    # OpenCV's default interpolation (INTER_LINEAR), as the original; it resizes even at the same size.
    return cv2.resize(bgr, (img_size, img_size)), cv2.resize(gray, (img_size, img_size))


def _integer_weights(kernel: np.ndarray) -> np.ndarray | None:
    """The 1-D integer weights w with kernel == outer(w, w) / 256 exactly, or None if there are none."""
    w = np.sqrt(np.diag(kernel)) * 16
    w = np.round(w).astype(np.int64)
    if np.array_equal(np.outer(w, w).astype(np.float64) / 256.0, kernel) and w.sum() == 16:
        return w
    return None


def _blur_integer(padded: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact blur of the whole image for a dyadic kernel: separable integer sums, then // 256.

    uint16 holds every partial sum (at most 255 * 16 * 16 = 65280), and floor(sum / 256) equals the
    truncated exact float64 value the original computes.
    """
    p = padded.astype(np.uint16)
    h, wd = padded.shape[0] - 2 * _PAD, padded.shape[1] - 2 * _PAD
    rows = sum(np.uint16(w[k]) * p[:, k:k + wd] for k in range(KERNEL_SIZE))
    full = sum(np.uint16(w[k]) * rows[k:k + h] for k in range(KERNEL_SIZE))
    return (full >> 8).astype(np.uint8)


def _blur_float(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Truncated float64 blur at the given pixels, summed in numpy's order (any kernel)."""
    products = [padded[rows + dy, cols + dx].astype(np.float64) * kernel[dy, dx]
                for dy in range(KERNEL_SIZE) for dx in range(KERNEL_SIZE)]
    # float64 -> uint8 truncates toward zero, as assigning a float into the uint8 array did.
    return _window_sum(products).astype(np.uint8)


def smooth_arrays(bgr: np.ndarray, gray: np.ndarray, img_size: int = 256, exact_integer: bool = True) -> np.ndarray:
    """Edge-smoothed uint8 BGR image (img_size × img_size × 3), bit-identical to the per-pixel original.

    `bgr` and `gray` are the image as `cv2.imread` reads it in colour and in grayscale (the original
    reads the grayscale copy from the file, not from the colour copy; for JPEGs they differ).
    `exact_integer=False` forces the general float64 path (same bytes, slower).
    """
    bgr, gray = _resize_pair(bgr, gray, img_size)
    padded = np.pad(bgr, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="reflect")
    mask = edge_mask(gray)
    kernel = gaussian_kernel()
    weights = _integer_weights(kernel) if exact_integer else None
    if weights is not None:
        return np.where(mask[..., None] != 0, _blur_integer(padded, weights), bgr)
    rows, cols = np.nonzero(mask)
    out = bgr.copy()
    if rows.size:
        out[rows, cols] = _blur_float(padded, rows, cols, kernel)
    return out


def smooth_reference(bgr: np.ndarray, gray: np.ndarray, img_size: int = 256) -> np.ndarray:
    """The official per-pixel loop (slow; for benchmarks only)."""
    bgr, gray = _resize_pair(bgr, gray, img_size)
    padded = np.pad(bgr, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="reflect")
    kernel = gaussian_kernel()
    out = bgr.copy()
    for y, x in zip(*np.nonzero(edge_mask(gray))):
        for c in range(3):
            out[y, x, c] = np.sum(padded[y:y + KERNEL_SIZE, x:x + KERNEL_SIZE, c] * kernel)
    return out


def read_color_and_gray(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(BGR, grayscale) as `cv2.imread(path)` and `cv2.imread(path, IMREAD_GRAYSCALE)` read them.

    Raises `report.BadImage` with the reason when the file cannot be used.
    """
    problem = report.sniff(path).problem
    if problem:
        raise report.BadImage(problem)
    buf = np.fromfile(path, np.uint8)  # imdecode of the bytes == imread, and works for any path
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    gray = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if bgr is None or gray is None:
        raise report.BadImage("OpenCV cannot decode it")
    return bgr, gray


def smooth_file(src: str, dst: str, img_size: int = 256) -> None:
    """Smooth one style image file into `dst` (same format as its extension)."""
    bgr, gray = read_color_and_gray(src)
    try:
        write_image(dst, smooth_arrays(bgr, gray, img_size), bgr=True)
    except ValueError as e:  # a format OpenCV cannot encode
        raise report.BadImage(str(e)) from None


@dataclasses.dataclass
class SmoothResult:
    style_dir: str
    smooth_dir: str
    written: list[str] = dataclasses.field(default_factory=list)
    kept: int = 0  # already present and left alone (mode auto)
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.smooth_dir}: smoothed {len(self.written)} images, kept {self.kept} existing, "
                f"skipped {len(self.bad)} unreadable")


SMOOTH_MODES = ("auto", "always", "never")


def needs_smoothing(style_dir: str, smooth_dir: str) -> list[str]:
    """Style images whose smoothed copy is missing from `smooth_dir` (what `auto` smooths)."""
    existing = set(os.listdir(smooth_dir)) if os.path.isdir(smooth_dir) else set()
    return [p for p in report.image_files(style_dir) if os.path.basename(p) not in existing]


def smooth_folder(style_dir: str, smooth_dir: str, img_size: int = 256, mode: str = "auto",
                  workers: int | None = None, progress: bool = True) -> SmoothResult:
    """Smooth every image of `style_dir` into `smooth_dir` (same file names), in parallel threads.

    mode: `auto` smooths only the images whose copy is missing, `always` redoes all, `never` does
    nothing. Unreadable images are skipped, each logged as a warning and listed in the result.
    """
    if mode not in SMOOTH_MODES:
        raise report.DataError(f"--smooth must be one of {', '.join(SMOOTH_MODES)}, not {mode!r}.")
    report.require_folder(style_dir)
    result = SmoothResult(style_dir, smooth_dir)
    if mode == "never":
        return result
    all_files = report.image_files(style_dir)
    todo = all_files if mode == "always" else needs_smoothing(style_dir, smooth_dir)
    result.kept = len(all_files) - len(todo)
    if not todo:
        return result
    os.makedirs(smooth_dir, exist_ok=True)
    workers = workers or os.cpu_count() or 1

    def one(src: str) -> tuple[str, str | None]:
        try:
            smooth_file(src, os.path.join(smooth_dir, os.path.basename(src)), img_size)
            return src, None
        except report.BadImage as e:
            return src, str(e)

    # Threads, not processes: OpenCV and numpy's large-array loops release the GIL, and threads are
    # safe even when the caller has already started TensorFlow.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for src, problem in _progress(pool.map(one, todo), len(todo), f"smoothing {style_dir}", progress):
            if problem is None:
                result.written.append(src)
            else:
                result.bad.append((src, problem))
                log.warning("%s: skipped (%s)", src, problem)
    return result


def _progress(it: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, unit="img")
