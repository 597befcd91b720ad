"""Face mode (`python -m anime_gan.stylize --faces`): each face found in a photo is aligned to the face
model's square crop, stylized there, and pasted back over the background (the photo stylized by the
main model, exactly as a plain run makes it) through the inverse transform, with a feathered edge.

    >>> mode = FaceMode(face_stylizer)                 # any Stylizer; the detector loads once, on first use
    >>> result, count = mode.apply(photo, background)  # uint8 [H, W, 3] both; count.sentence()

Detection: MTCNN (the `mtcnn` package: TensorFlow, its weights inside its wheel), on the photo shrunk to
at most DETECT_MAX_SIDE pixels; why this library and what it finds: docs/inference.md#face-mode---faces.
Alignment: the similarity transform (rotation, uniform scale, shift) that best takes the eyes and mouth
corners to FACE_TEMPLATE, fitted by OpenCV. Memory: one crop per face, and the paste works on the face's
own rectangle in strips of PASTE_ROWS rows, so a large photo costs no full-size float copy.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import cv2
import numpy as np

from anime_gan import constants as C
from anime_gan.errors import ConfigError

DETECT_MAX_SIDE = 1600  # larger photos are searched shrunk to this longer side (cost ~0.6 s per megapixel)
# Eyes and mouth corners (image-left first) of an average frontal face in an FFHQ-aligned crop (the
# alignment the face_paint models were trained on), as fractions of the crop's side.
FACE_TEMPLATE = np.array([[0.3797, 0.4722], [0.6203, 0.4722], [0.4004, 0.7500], [0.5996, 0.7500]])
FEATHER = 1 / 8  # the pasted crop fades in over this fraction of its side from each edge
PASTE_ROWS = 256
INSTALL_SENTENCE = ("face mode needs the mtcnn face detector, which is not installed; install it with "
                    "pip install 'anime-gan-tf2[faces]' (or pip install mtcnn).")


def require_detector():
    """The mtcnn module, or a ConfigError saying how to install it."""
    try:
        import mtcnn  # optional: the `faces` extra
    except ImportError:
        raise ConfigError(INSTALL_SENTENCE) from None
    return mtcnn


@dataclasses.dataclass(frozen=True)
class Face:
    """A detected face: box (x, y, width, height), landmarks [5, 2] (x, y of the left eye, right eye,
    nose, mouth left, mouth right, image-left first), all in photo pixels; confidence in [0, 1]."""

    box: tuple
    landmarks: np.ndarray
    confidence: float

    @property
    def side(self):
        """The longer side of its box (what MIN_FACE_SIDE is compared with)."""
        return max(self.box[2], self.box[3])


class FaceDetector:
    """photo uint8 [H, W, 3] RGB -> [Face], with MTCNN on the photo shrunk to at most max_side."""

    def __init__(self, max_side=DETECT_MAX_SIDE):
        self.max_side = int(max_side)
        self._mtcnn = require_detector().MTCNN()

    def __call__(self, image):
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = image
        if scale < 1.0:
            small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        if min(small.shape[:2]) < 12:  # below MTCNN's first window nothing can be found
            return []
        rows = self._mtcnn.detect_faces(np.ascontiguousarray(small), box_format="xywh", output_type="numpy")
        # Each row: image index, x, y, width, height, confidence, then the x of the 5 landmarks and their y.
        sx, sy = w / small.shape[1], h / small.shape[0]
        faces = []
        for row in np.asarray(rows, np.float64).reshape(-1, 16):
            box = (row[1] * sx, row[2] * sy, row[3] * sx, row[4] * sy)
            landmarks = np.stack([row[6:11] * sx, row[11:16] * sy], axis=1)
            faces.append(Face(tuple(float(v) for v in box), landmarks, float(row[5])))
        return faces


@functools.cache
def default_detector():
    """The one FaceDetector of this process (MTCNN loads once)."""
    return FaceDetector()


def detect_faces(image):
    """[Face] in a uint8 [H, W, 3] RGB photo (with `default_detector`)."""
    return default_detector()(np.asarray(image))


def alignment(landmarks, size=C.FACE_SIZE):
    """The 2x3 similarity (photo -> crop) taking a face's eyes and mouth corners closest, in least
    squares, to FACE_TEMPLATE * size. landmarks: [5, 2] as a Face has them, or [4, 2] without the nose."""
    points = np.asarray(landmarks, np.float64)
    if len(points) == 5:
        points = points[[0, 1, 3, 4]]
    # RANSAC with a threshold no point exceeds keeps all four, then refines on them: a least-squares fit.
    matrix, _ = cv2.estimateAffinePartial2D(points, FACE_TEMPLATE * size, method=cv2.RANSAC,
                                            ransacReprojThreshold=1e9, refineIters=50)
    return matrix


def crop_face(image, matrix, size=C.FACE_SIZE):
    """The aligned size x size crop of a photo (bicubic; beyond its border the photo is mirrored)."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def feather_mask(size):
    """float32 [size, size]: 1 inside, falling linearly to 0 over FEATHER * size pixels at each edge."""
    distance = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size))
    edge = np.clip(distance / (FEATHER * size), 0.0, 1.0)
    return np.minimum.outer(edge, edge).astype(np.float32)


def paste_matrix(matrix, size):
    """(matrix, side) of the paste: where the crop is finer than the photo (scale > 1), it is first
    shrunk to `side` pixels with INTER_AREA (warpAffine has no area filter) and the matrix follows it."""
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))  # crop pixels per photo pixel
    if scale <= 1.0:
        return np.asarray(matrix, np.float64), size
    side = max(1, round(size / scale))
    k = side / size
    return np.asarray(matrix, np.float64) * k + np.array([[0, 0, 0.5 * (k - 1)], [0, 0, 0.5 * (k - 1)]]), side


def paste_face(image, stylized, matrix):
    """Blends a stylized crop (uint8 [S, S, 3]) back into image (uint8 [H, W, 3], in place) through the
    inverse of matrix (photo -> crop), weighted by `feather_mask`; returns image."""
    size = stylized.shape[0]
    mask = feather_mask(size)
    matrix, side = paste_matrix(matrix, size)
    if side != size:
        stylized = cv2.resize(stylized, (side, side), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    h, w = image.shape[:2]
    x0, y0 = (max(0, math.floor(v) - 1) for v in corners.min(axis=0))
    x1, y1 = min(w, math.ceil(corners[:, 0].max()) + 2), min(h, math.ceil(corners[:, 1].max()) + 2)
    for top in range(y0, y1, PASTE_ROWS):
        bottom = min(top + PASTE_ROWS, y1)
        shifted = matrix.copy()
        shifted[:, 2] += matrix[:, :2] @ (x0, top)  # the strip's pixel (0, 0) is the photo's (x0, top)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        face = cv2.warpAffine(stylized, shifted, (x1 - x0, bottom - top), flags=flags,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = cv2.warpAffine(mask, shifted, (x1 - x0, bottom - top), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        region = image[top:bottom, x0:x1].astype(np.float32)
        image[top:bottom, x0:x1] = np.rint(region + alpha * (face.astype(np.float32) - region)).astype(np.uint8)
    return image


@dataclasses.dataclass
class FaceCount:
    """Faces found in a photo (or a video's frames) and how many of them were too small to use."""

    found: int = 0
    small: int = 0

    @property
    def used(self):
        return self.found - self.small

    def sentence(self):
        """"3 faces", "2 faces (1 too small)" or "no face found"."""
        if not self.found:
            return "no face found"
        text = f"{self.found} face{'s' if self.found != 1 else ''}"
        return text + (f" ({self.small} too small)" if self.small else "")


def frames_sentence(counts):
    """What face mode did in a video, from the FaceCount of each frame."""
    with_faces = sum(1 for c in counts if c.found)
    if not with_faces:
        return f"no face found in its {len(counts)} frames"
    found, small = sum(c.found for c in counts), sum(c.small for c in counts)
    return (f"faces in {with_faces} of {len(counts)} frames ({found} in all"
            + (f", {small} too small)" if small else ")"))


class FaceMode:
    """Faces over a background: `apply(photo, background)` detects the photo's faces, stylizes each
    aligned crop with `stylizer` (a Stylizer: the face model) in batches of batch_size and pastes it
    back. Faces whose box's longer side is under min_face pixels keep the background."""

    def __init__(self, stylizer, size=C.FACE_SIZE, min_face=C.MIN_FACE_SIDE, batch_size=4, detector=None):
        stylizer.check_size(size, size, f"the face crop ({size} x {size})")
        self.stylizer, self.size, self.min_face, self.batch_size = stylizer, int(size), min_face, batch_size
        self.detector = detector or default_detector()

    def apply(self, photo, background):
        """(the result, uint8 [H, W, 3], and the photo's FaceCount)."""
        faces = self.detector(photo)
        used = [f for f in faces if f.side >= self.min_face]
        result = np.array(background, np.uint8, copy=True)
        for start in range(0, len(used), self.batch_size):
            matrices = [alignment(f.landmarks, self.size) for f in used[start:start + self.batch_size]]
            crops = np.stack([crop_face(photo, m, self.size) for m in matrices])
            for stylized, matrix in zip(self.stylizer(crops), matrices):
                paste_face(result, stylized, matrix)
        return result, FaceCount(len(faces), len(faces) - len(used))
