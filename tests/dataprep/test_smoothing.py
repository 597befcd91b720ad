"""Edge smoothing: byte-for-byte equal to a straightforward per-pixel loop written here."""
import os

import cv2
import numpy as np
import pytest

from data_prep import smoothing
from helpers import per_pixel_smooth

SKIMAGE_DATA = os.path.join(os.path.dirname(pytest.importorskip("skimage").__file__), "data")


def _write(path, img):
    assert cv2.imwrite(str(path), img)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Edge-dense and non-square inputs, written as files (the recipe reads the file twice)."""
    d = tmp_path_factory.mktemp("smooth_inputs")
    rng = np.random.default_rng(0)
    out = {}
    astronaut = cv2.imread(os.path.join(SKIMAGE_DATA, "astronaut.png"))
    out["astronaut_512_square"] = (_write(d / "astronaut.jpg", astronaut), 128)
    out["chelsea_451x300_png"] = (_write(d / "chelsea.png", cv2.imread(os.path.join(SKIMAGE_DATA, "chelsea.png"))), 96)
    text = cv2.imread(os.path.join(SKIMAGE_DATA, "text.png"))  # dense letters: edges nearly everywhere
    out["text_172x448"] = (_write(d / "text.jpg", text), 128)
    noise = cv2.resize(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), (150, 100), interpolation=cv2.INTER_NEAREST)
    out["blocks_100x150"] = (_write(d / "blocks.png", noise), 64)
    # Saturated white and black shapes: the blurred value of a flat 255 region lands just below or on
    # 255.0 depending on summation order, which truncation turns into a whole grey level.
    shapes = np.full((70, 110, 3), 255, np.uint8)
    cv2.circle(shapes, (40, 35), 20, (0, 0, 0), -1)
    cv2.rectangle(shapes, (70, 10), (100, 60), (255, 0, 128), -1)
    out["white_shapes_70x110"] = (_write(d / "shapes.png", shapes), 80)
    coffee = cv2.imread(os.path.join(SKIMAGE_DATA, "coffee.png"))
    out["coffee_at_size"] = (_write(d / "coffee.jpg", cv2.resize(coffee, (64, 64))), 64)
    return out


def test_equals_per_pixel_loop_byte_for_byte(images):
    assert len(images) >= 5
    for name, (path, size) in images.items():
        expected = per_pixel_smooth(path, size)
        bgr, gray = cv2.imread(path), cv2.imread(path, 0)
        for exact_integer in (True, False):  # the fast path and the general float64 path
            got = smoothing.smooth_arrays(bgr, gray, size, exact_integer=exact_integer)
            assert got.dtype == np.uint8 and got.shape == (size, size, 3), name
            assert np.array_equal(got, expected), f"{name}: {np.count_nonzero(got != expected)} bytes differ"
        # The case is not trivial: edges were found and changed pixels.
        assert np.count_nonzero(expected != cv2.resize(bgr, (size, size))) > 0, name


def test_truncation_matters(images):
    """The inputs exercise the subtle point: rounding instead of truncating would change pixels."""
    rounded_differs = 0
    for path, size in images.values():
        bgr = cv2.resize(cv2.imread(path), (size, size))
        gray = cv2.resize(cv2.imread(path, 0), (size, size))
        padded = np.pad(bgr, ((2, 2), (2, 2), (0, 0)), mode="reflect").astype(np.float64)
        g = cv2.getGaussianKernel(5, 0)
        kernel = (g * g.T).ravel()
        mask = cv2.dilate(cv2.Canny(gray, 100, 200), np.ones((5, 5), np.uint8))
        for y, x in zip(*np.nonzero(mask)):
            for c in range(3):
                window = padded[y:y + 5, x:x + 5, c].ravel() * kernel
                numpy_sum = np.sum(window)
                rounded_differs += int(np.round(numpy_sum)) != int(numpy_sum)
    assert rounded_differs > 0


def test_smooth_folder_modes_and_file_bytes(tmp_path, images):
    style, smooth = tmp_path / "style", tmp_path / "smooth"
    style.mkdir()
    for name, (path, _) in list(images.items())[:4]:
        ext = os.path.splitext(path)[1]
        _write(style / f"{name}{ext}", cv2.imread(path))
    files = sorted(os.listdir(style))
    res = smoothing.smooth_folder(str(style), str(smooth), 48, "auto", workers=2, progress=False)
    assert sorted(os.path.basename(p) for p in res.written) == files and not res.bad
    for f in files:
        expected = per_pixel_smooth(str(style / f), 48)
        ok, buf = cv2.imencode(os.path.splitext(f)[1], expected)
        assert (smooth / f).read_bytes() == buf.tobytes(), f  # same array, same encoder: same bytes

    # auto: only what is missing is made again; never: nothing; always: everything.
    os.remove(smooth / files[0])
    stamp = os.path.getmtime(smooth / files[1])
    res = smoothing.smooth_folder(str(style), str(smooth), 48, "auto", progress=False)
    assert [os.path.basename(p) for p in res.written] == [files[0]] and res.kept == len(files) - 1
    assert os.path.getmtime(smooth / files[1]) == stamp
    os.remove(smooth / files[0])
    res = smoothing.smooth_folder(str(style), str(smooth), 48, "never", progress=False)
    assert not res.written and not (smooth / files[0]).exists()
    res = smoothing.smooth_folder(str(style), str(smooth), 48, "always", progress=False)
    assert len(res.written) == len(files)
