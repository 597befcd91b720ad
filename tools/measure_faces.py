"""Maintainers: what face mode's detector (MTCNN) finds on real photos and what it costs, for the table in
docs/inference.md#face-mode---faces.

usage: .venv/bin/python tools/measure_faces.py

Photos: scikit-image's astronaut and matplotlib's Grace Hopper, turned, shrunk, cut by the border and
put side by side. Each line: the case, the faces found (box, confidence, longer side) and the seconds of
one detection (after a first call that loads the networks).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def cases():
    import cv2
    import matplotlib
    import skimage.data

    astronaut = skimage.data.astronaut()
    grace = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))[..., ::-1]

    def turned(image, degrees):
        h, w = image.shape[:2]
        return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                              borderMode=cv2.BORDER_REFLECT)

    yield "astronaut", astronaut
    yield "grace hopper", grace
    for degrees in (15, 30, 45, 60, 90, 180):
        yield f"astronaut turned {degrees}", turned(astronaut, degrees)
        yield f"grace hopper turned {degrees}", turned(grace, degrees)
    for scale in (0.5, 0.35, 0.25, 0.18, 0.12):
        yield f"astronaut x{scale}", cv2.resize(astronaut, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    yield "astronaut cut left", astronaut[:, 215:]
    yield "astronaut cut top", astronaut[100:]
    yield "grace hopper cut right", grace[:, :290]
    several = np.full((600, 1400, 3), 90, np.uint8)
    several[:512, :512] = astronaut
    several[:, 512:1024] = grace[:, :512]
    small = cv2.resize(astronaut, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)
    several[50:50 + small.shape[0], 1100:1100 + small.shape[1]] = small
    yield "three side by side", several
    yield "three side by side x2", cv2.resize(several, None, fx=2, fy=2)


def main():
    from anime_gan.inference import faces

    detector = faces.default_detector()
    detector(np.zeros((64, 64, 3), np.uint8))  # loads the networks
    for name, image in cases():
        image = np.ascontiguousarray(image)
        started = time.perf_counter()
        found = detector(image)
        seconds = time.perf_counter() - started
        said = ", ".join(f"[{', '.join(f'{v:.0f}' for v in f.box)}] {f.confidence:.3f} side {f.side:.0f}"
                         for f in found) or "none"
        print(f"{name:28s} {image.shape[1]}x{image.shape[0]}  {seconds:.2f} s  {len(found)} found: {said}")


if __name__ == "__main__":
    main()
