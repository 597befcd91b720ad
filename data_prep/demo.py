"""The offline demo set: a deterministic smoke-test dataset in the official layout, built from sample
photos that installed packages ship (scikit-image's sample photos and matplotlib's sample image).

It is for checking that everything runs, not for learning a style: `train_photo/` holds random crops of
a handful of photos, and the style `Demo` holds *other* random crops of the same photos passed through a
classical cartoon filter (edge-preserving bilateral smoothing, colour quantisation, dark edges), so the
photo and style sets stay unpaired as in the real data. Same seed and same library versions, same bytes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import cv2
import numpy as np

from data_prep import report, smoothing
from data_prep.files import write_image

STYLE = "Demo"
MANIFEST = ".demo_manifest.json"
DEFAULT_NUM_PHOTOS = 256
DEFAULT_NUM_STYLE = 256
NUM_VAL = 8
NUM_TEST = 4

# Colour photographs shipped inside scikit-image (package data, no download) and matplotlib.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)

# Independent random streams, so the photo crops and the style crops never coincide.
_STREAM_PHOTO, _STREAM_STYLE, _STREAM_VAL, _STREAM_TEST = range(4)


def source_photos() -> list[tuple[str, np.ndarray]]:
    """(name, BGR uint8) of the sample photos; DataError naming `pip install .[demo]` if missing."""
    spec = importlib.util.find_spec("skimage")
    skimage_dir = os.path.join(os.path.dirname(spec.origin), "data") if spec and spec.origin else None
    if skimage_dir is None or not all(os.path.isfile(os.path.join(skimage_dir, n)) for n in SKIMAGE_PHOTOS):
        raise report.DataError("The demo set is cut from scikit-image's sample photos, which are not "
                               "installed; run `pip install .[demo]` (or use --source=URL_OR_PATH).")
    import matplotlib
    paths = [os.path.join(skimage_dir, n) for n in SKIMAGE_PHOTOS]
    paths += [os.path.join(matplotlib.get_data_path(), "sample_data", n) for n in MATPLOTLIB_PHOTOS]
    out = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            raise report.DataError(f"Sample photo {p} cannot be read; reinstall with `pip install .[demo]`.")
        out.append((os.path.basename(p), img))
    return out


def random_crop_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, left, side, flip) of a square crop covering 30-90 % of the shorter side."""
    side = int(rng.uniform(0.3, 0.9) * min(h, w))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return top, left, side, int(rng.integers(0, 2))


def crop(img: np.ndarray, box: tuple[int, int, int, int], img_size: int) -> np.ndarray:
    top, left, side, flip = box
    out = cv2.resize(img[top:top + side, left:left + side], (img_size, img_size), interpolation=cv2.INTER_AREA)
    return out[:, ::-1].copy() if flip else out


def cartoon(bgr: np.ndarray, levels: int = 6) -> np.ndarray:
    """A classical cartoon filter: bilateral smoothing, per-channel quantisation, dark edges."""
    smooth = bgr
    for _ in range(4):  # repeated small bilateral filters flatten regions but keep their borders
        smooth = cv2.bilateralFilter(smooth, 7, 50, 5)
    hsv = cv2.cvtColor(smooth, cv2.COLOR_BGR2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.int32) * 5 // 4, 0, 255).astype(np.uint8)  # livelier colours
    smooth = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    step = 256 // levels
    flat = (smooth // step * step + step // 2).astype(np.uint8)
    gray = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 5)
    lines = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 5)
    return np.where(lines[..., None] == 0, flat // 4, flat).astype(np.uint8)


def _crops(photos, n: int, seed: int, stream: int, img_size: int):
    """n (name, box, crop) drawn round-robin over the photos from one random stream."""
    rng = np.random.default_rng([seed, stream])
    for i in range(n):
        name, img = photos[i % len(photos)]
        box = random_crop_box(rng, *img.shape[:2])
        yield name, box, crop(img, box, img_size)


def _params(seed, num_photos, num_style, img_size) -> dict:
    return {"seed": seed, "num_photos": num_photos, "num_style": num_style, "img_size": img_size,
            "style": STYLE}


def read_manifest(dataset_dir: str) -> dict | None:
    try:
        with open(os.path.join(dataset_dir, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_built(dataset_dir: str, seed: int = 0, num_photos: int = DEFAULT_NUM_PHOTOS,
             num_style: int = DEFAULT_NUM_STYLE, img_size: int = 256) -> bool:
    """True when a complete demo set with these parameters is already in `dataset_dir`."""
    m = read_manifest(dataset_dir)
    return (m is not None and m.get("params") == _params(seed, num_photos, num_style, img_size)
            and all(os.path.isfile(os.path.join(dataset_dir, f)) for f in m.get("files", [])))


def _check_not_foreign(dataset_dir: str, manifest: dict | None) -> None:
    """Refuse to mix demo images into a folder holding somebody's real photos."""
    folder = os.path.join(dataset_dir, "train_photo")
    if not os.path.isdir(folder):
        return
    ours = {os.path.normpath(f) for f in (manifest or {}).get("files", [])}
    foreign = [n for n in os.listdir(folder) if os.path.normpath(os.path.join("train_photo", n)) not in ours]
    if foreign:
        raise report.DataError(f"Folder {folder} already holds {len(foreign)} files not made by the demo "
                               "builder; pass another --out for the demo set or remove them.")


def build(dataset_dir: str = "dataset", seed: int = 0, num_photos: int = DEFAULT_NUM_PHOTOS,
          num_style: int = DEFAULT_NUM_STYLE, img_size: int = 256, workers: int | None = None,
          progress: bool = True) -> dict:
    """Write the demo set under `dataset_dir` and return its manifest (parameters, files, crop boxes).

    Layout: train_photo/, Demo/style/, Demo/smooth/ (edge-smoothed), val/,
    test/{HR_photo,real,test_photo,test_photo256}/. The manifest is written last, so an interrupted
    build is rebuilt next time.
    """
    report.not_a_folder(dataset_dir)
    old = read_manifest(dataset_dir)
    _check_not_foreign(dataset_dir, old)
    photos = source_photos()
    for f in (old or {}).get("files", []):  # a previous demo build with other parameters
        p = os.path.join(dataset_dir, f)
        if os.path.isfile(p):
            os.remove(p)
    manifest_path = os.path.join(dataset_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    files: list[str] = []
    boxes: dict[str, list] = {"photo": [], "style": []}

    def save(rel: str, img: np.ndarray) -> None:
        write_image(os.path.join(dataset_dir, rel), img, bgr=True)
        files.append(rel)

    for i, (name, box, img) in enumerate(_crops(photos, num_photos, seed, _STREAM_PHOTO, img_size)):
        save(os.path.join("train_photo", f"{i:04d}.jpg"), img)
        boxes["photo"].append([name, *box])
    for i, (name, box, img) in enumerate(_crops(photos, num_style, seed, _STREAM_STYLE, img_size)):
        save(os.path.join(STYLE, "style", f"{i:04d}.jpg"), cartoon(img))
        boxes["style"].append([name, *box])
    for i, (_, _, img) in enumerate(_crops(photos, NUM_VAL, seed, _STREAM_VAL, img_size)):
        save(os.path.join("val", f"{i:03d}.jpg"), img)
    for i, (_, _, img) in enumerate(_crops(photos, NUM_TEST, seed, _STREAM_TEST, img_size)):
        save(os.path.join("test", "test_photo256", f"{i:03d}.jpg"), img)
    for i, (name, img) in enumerate(photos[:NUM_TEST]):
        h, w = img.shape[:2]  # whole photos, not square, as the official test photos
        save(os.path.join("test", "test_photo", f"{i:03d}.jpg"), img)
        save(os.path.join("test", "real", f"{i:03d}.jpg"), cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    for i, (name, img) in enumerate(photos[:2]):
        h, w = img.shape[:2]
        save(os.path.join("test", "HR_photo", f"{i:03d}.jpg"), cv2.resize(img, (w * 2, h * 2), interpolation=cv2.INTER_CUBIC))

    style_dir = os.path.join(dataset_dir, STYLE, "style")
    smooth_dir = os.path.join(dataset_dir, STYLE, "smooth")
    if os.path.isdir(smooth_dir):
        shutil.rmtree(smooth_dir)
    res = smoothing.smooth_folder(style_dir, smooth_dir, img_size, "always", workers, progress)
    if res.bad:  # cannot happen with our own files; fail loudly rather than build a broken set
        raise report.DataError(f"Smoothing the demo style images failed for {res.bad[0][0]}: {res.bad[0][1]}.")
    files += [os.path.join(STYLE, "smooth", os.path.basename(p)) for p in res.written]

    manifest = {"params": _params(seed, num_photos, num_style, img_size), "files": sorted(files),
                "crops": boxes, "note": "smoke-test set made by data_prep.demo; not for real training"}
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path)
    return manifest


def ensure(dataset_dir: str = "dataset", seed: int = 0, num_photos: int = DEFAULT_NUM_PHOTOS,
           num_style: int = DEFAULT_NUM_STYLE, img_size: int = 256, progress: bool = True) -> bool:
    """Build the demo set unless an identical one is already there; True when it was (re)built."""
    report.not_a_folder(dataset_dir)  # a file or a broken link: one sentence, not a traceback
    if is_built(dataset_dir, seed, num_photos, num_style, img_size):
        return False
    build(dataset_dir, seed, num_photos, num_style, img_size, progress=progress)
    return True
