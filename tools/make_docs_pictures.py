"""Maintainers: write docs/before_after.png, the README's picture of real AnimeGANv2 output.

usage: .venv/bin/python tools/make_docs_pictures.py [--output=docs/before_after.png] [--side=396]

Builds the AnimeGANv2 generator, loads the official Hayao weights into it, runs it in float32 on
three real photos shipped with scikit-image (astronaut, coffee, chelsea) and writes one PNG: the
photos in the top row, their stylized versions below. The weights come from the maintainers'
full-integer TFLite conversion of the official Hayao generator (read by references/v2_reference.py),
dequantised; `python -m anime_gan.pretrained download hayao-v2` fetches the original checkpoint.
Only the picture is committed, never the model.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHOTOS = ("astronaut", "coffee", "chelsea")  # functions of skimage.data
GAP = 6  # white pixels between the cells


def hayao_v2_generator():
    """The AnimeGANv2 generator (float32) holding the official Hayao weights of the reference."""
    from references import v2_reference as R

    if not os.path.exists(R.REFERENCE_V2):
        sys.exit(f"error: {R.SKIP_REASON}")
    return R.official_generator()


def square_photo(name):
    """A scikit-image sample photo (`skimage.data.<name>()`), centre-cropped to a square, RGB uint8."""
    import skimage.data

    image = getattr(skimage.data, name)()[..., :3]
    h, w = image.shape[:2]
    s = min(h, w)
    return np.ascontiguousarray(image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])


def stylize(generator, photo):
    """The generator's output for one uint8 photo, at the photo's size (reflect-padded to a multiple of 4)."""
    h, w = photo.shape[:2]
    x = photo.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    y = np.asarray(generator(x[None]))[0, :h, :w]
    return np.clip((y + 1.0) * 127.5, 0, 255).astype(np.uint8)


def sheet(pairs, side):
    """Photos in the top row, results below, each cell `side` pixels square, on white."""
    import cv2

    n = len(pairs)
    canvas = np.full((2 * side + GAP, n * side + (n - 1) * GAP, 3), 255, np.uint8)
    for i, (photo, anime) in enumerate(pairs):
        left = i * (side + GAP)
        for row, image in enumerate((photo, anime)):
            top = row * (side + GAP)
            canvas[top:top + side, left:left + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return canvas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "before_after.png"))
    parser.add_argument("--side", type=int, default=396, help="pixels per cell (3 cells and 2 gaps: 1200 wide)")
    args = parser.parse_args()

    import cv2

    generator = hayao_v2_generator()
    pairs = []
    for name in PHOTOS:
        photo = square_photo(name)
        pairs.append((photo, stylize(generator, photo)))
        print(f"{name}: {photo.shape[1]}x{photo.shape[0]}")
    picture = sheet(pairs, args.side)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    cv2.imwrite(args.output, picture[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.output}: {picture.shape[1]}x{picture.shape[0]}, {os.path.getsize(args.output) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
