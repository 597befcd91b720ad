"""Maintainers: write docs/faces.png, face mode (`stylize --faces`) on real photos beside a plain run.

usage: .venv/bin/python tools/make_faces_picture.py [--output=docs/faces.png] [--side=400]

Rows: scikit-image's astronaut and matplotlib's Grace Hopper (512 x 512); columns: the photo, a plain
run, face mode. No face model (a face_paint network) can be had here, so the official AnimeGANv2 Hayao
weights of the maintainers' reference (see tools/make_docs_pictures.py) stand in for both --model and
--face_model: the picture shows the alignment and the paste, not a face model's look. The label under it
says so. Only the picture is committed, never the model.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]
GAP = 6
LABEL = 34  # pixels of the caption strip at the bottom


def photos():
    """(name, uint8 RGB 512 x 512) of the two real portraits."""
    import cv2
    import matplotlib
    import skimage.data

    grace = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))[..., ::-1]
    return [("astronaut", skimage.data.astronaut()), ("grace_hopper", np.ascontiguousarray(grace[40:552]))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "faces.png"))
    parser.add_argument("--side", type=int, default=400)
    args = parser.parse_args()

    import cv2

    import anime_gan
    from anime_gan.inference import faces
    from make_docs_pictures import hayao_v2_generator

    stylizer = anime_gan.inference.get_model(hayao_v2_generator())
    rows = []
    for name, photo in photos():
        plain = anime_gan.stylize(photo, model=stylizer)
        background = plain.copy()
        result, count = faces.FaceMode(stylizer).apply(photo, background)
        print(f"{name}: {count.sentence()}")
        rows.append([photo, plain, result])
    side, n = args.side, 3
    canvas = np.full((len(rows) * (side + GAP) + LABEL, n * side + (n - 1) * GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (side + GAP), c * (side + GAP)
            canvas[top:top + side, left:left + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    text = ("photo | plain run | --faces.  AnimeGANv2 Hayao weights (reference) stand in for both --model and "
            "--face_model.")
    cv2.putText(canvas, text, (8, canvas.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    cv2.imwrite(args.output, canvas[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.output}: {canvas.shape[1]}x{canvas.shape[0]}")


if __name__ == "__main__":
    main()
