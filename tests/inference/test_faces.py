"""Face mode (`anime_gan.inference.faces`, `stylize --faces`): MTCNN's landmarks on a real photo against
positions measured by hand, the alignment against a least-squares fit in NumPy, the paste against an
independent cv2.warpAffine of the stylized crop, the rest of the picture against a plain run, and the
per-image lines on composites of real photos (several, rotated, cut by the border, small faces).

Two seeded generators stand in for --model and --face_model (their weights do not matter here); the
detection always runs on real photos: scikit-image's astronaut and coffee, matplotlib's Grace Hopper."""

import os
import pathlib

import cv2
import numpy as np
import pytest

pytest.importorskip("mtcnn")
skimage_data = pytest.importorskip("skimage.data")

import anime_gan  # noqa: E402
from anime_gan import constants as C  # noqa: E402
from anime_gan import inference  # noqa: E402
from anime_gan.errors import ConfigError  # noqa: E402
from anime_gan.inference import faces  # noqa: E402
from helpers import logged, max_diff, read_rgb, seeded_generator, write_rgb  # noqa: E402

SIZE = 256  # --face_size in these tests (the default 512 works the same, at 4x the cost)

# The astronaut's eyes (iris centres), nose tip and mouth corners, read by eye from an 8x nearest-neighbour
# enlargement of the photo's rows 80-160, columns 180-270 with a grid line every 5 pixels (x, y in
# photo pixels, to about 1 pixel).
ASTRONAUT_HAND = np.array([[204, 101], [246, 103], [223, 127], [203, 140], [244, 140]], np.float64)


def grace_hopper():
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return cv2.imread(path)[..., ::-1].copy()  # 600 x 512


def rotated(image, degrees):
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def composites():
    """{name: (photo, the line face mode must say)} built from real photos."""
    astronaut, grace = skimage_data.astronaut(), grace_hopper()
    several = np.full((600, 1400, 3), 90, np.uint8)
    several[:512, :512] = astronaut
    several[:, 512:1024] = grace[:, :512]
    small = cv2.resize(astronaut, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)  # a 43-pixel face
    several[50:50 + small.shape[0], 1100:1100 + small.shape[1]] = small
    tilted = np.concatenate([rotated(astronaut, 30), rotated(grace, -40)[44:556]], axis=1)
    return {
        "several.png": (several, "3 faces (1 too small)"),
        "tilted.png": (tilted, "2 faces"),
        "border.png": (astronaut[:, 215:], "1 face"),  # the left third of her face is cut off
        "coffee.png": (skimage_data.coffee(), "no face found"),
    }


@pytest.fixture(scope="module")
def generators():
    """(background model, face model): two different seeded generators."""
    return seeded_generator(41), seeded_generator(42)


@pytest.fixture(scope="module")
def models(generators):
    """Their Stylizers, traced once for the module."""
    return tuple(inference.get_model(g) for g in generators)


def lstsq_similarity(landmarks, size):
    """The least-squares similarity (a, b, tx, ty: x' = a x - b y + tx, y' = b x + a y + ty) taking the
    eyes and mouth corners to the template, in NumPy."""
    points, target = np.asarray(landmarks)[[0, 1, 3, 4]], faces.FACE_TEMPLATE * size
    rows, values = [], []
    for (x, y), (u, v) in zip(points, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def covered(shape, matrix, size, grow):
    """Where the crop square (photo -> crop matrix) lands in the photo, grown by `grow` pixels."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)


def test_astronaut_landmarks_are_where_measured_by_hand():
    found = faces.detect_faces(skimage_data.astronaut())
    assert len(found) == 1
    assert found[0].confidence > 0.9
    assert np.abs(found[0].landmarks - ASTRONAUT_HAND).max() <= 4, found[0].landmarks
    x, y, w, h = found[0].box
    assert x <= 203 and y <= 101 and x + w >= 244 and y + h >= 140  # the box holds the eyes and mouth


def test_alignment_is_the_least_squares_similarity():
    landmarks = faces.detect_faces(skimage_data.astronaut())[0].landmarks
    for size in (SIZE, 512):
        matrix = faces.alignment(landmarks, size)
        assert np.abs(matrix - lstsq_similarity(landmarks, size)).max() < 1e-3


def test_face_is_the_stylized_crop_warped_back_and_the_rest_a_plain_run(models):
    background_model, face_model = models
    photo = skimage_data.astronaut()[:320, 64:384]  # her face and shoulders
    out = anime_gan.stylize(photo, model=background_model, faces=True, face_model=face_model, face_size=SIZE)
    plain = anime_gan.stylize(photo, model=background_model)
    assert out.shape == photo.shape

    matrix = faces.alignment(faces.detect_faces(photo)[0].landmarks, SIZE)  # = lstsq_similarity (tested above)
    away = ~covered(photo.shape, matrix, SIZE, grow=2)
    assert away.sum() > 0.7 * away.size
    assert np.array_equal(out[away], plain[away])

    # The crop, its stylization and its way back, computed here with OpenCV and the NumPy fit.
    crop = cv2.warpAffine(photo, matrix, (SIZE, SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    stylized = anime_gan.stylize(crop, model=face_model)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    side = round(SIZE / scale) if scale > 1 else SIZE
    k = side / SIZE
    small = cv2.resize(stylized, (side, side), interpolation=cv2.INTER_AREA)
    shrunk = matrix * k + np.array([[0, 0, 0.5 * (k - 1)], [0, 0, 0.5 * (k - 1)]])  # pixel centres kept
    back = cv2.warpAffine(small, cv2.invertAffineTransform(shrunk), (photo.shape[1], photo.shape[0]),
                          flags=cv2.INTER_LINEAR)
    # The inside, where the feathered mask is 1: a square inset by the feather (and 2 pixels of margin).
    inset = faces.FEATHER * SIZE + 2 * scale
    inner = cv2.warpAffine(np.pad(np.ones((round(SIZE - 2 * inset),) * 2, np.uint8), round(inset)),
                           cv2.invertAffineTransform(matrix), (photo.shape[1], photo.shape[0]),
                           flags=cv2.INTER_NEAREST).astype(bool)
    assert inner.sum() > 2000
    assert max_diff(out[inner], back[inner]) <= 2
    assert max_diff(out[inner], plain[inner]) > 50  # the face model's own colours, not the background's


@pytest.mark.slow
def test_composites_say_their_faces_and_keep_size_and_background(generators, models, tmp_path):
    background_model, face_model = generators
    (tmp_path / "m").mkdir()
    anime_gan.save_generator(background_model, tmp_path / "m" / "background")
    anime_gan.save_generator(face_model, tmp_path / "m" / "face")
    cases = composites()
    for name, (photo, _) in cases.items():
        write_rgb(tmp_path / "in" / name, photo)
    with logged("anime_gan.inference") as messages:
        summary = inference.run(str(tmp_path / "m" / "background"), str(tmp_path / "in"), str(tmp_path / "out"),
                                show_progress=False, faces=True, face_model=str(tmp_path / "m" / "face"),
                                face_size=SIZE)
    assert summary.ok and len(summary.written) == len(cases)
    for name, (photo, line) in cases.items():
        assert f"{tmp_path / 'in' / name}: {line}" in messages
        out, plain = read_rgb(tmp_path / "out" / name), anime_gan.stylize(photo, model=models[0])
        assert out.shape == photo.shape
        away = np.ones(photo.shape[:2], bool)
        for face in faces.detect_faces(photo):
            if face.side >= C.MIN_FACE_SIDE:
                away &= ~covered(photo.shape, faces.alignment(face.landmarks, SIZE), SIZE, grow=2)
        assert np.array_equal(out[away], plain[away]), name
        if line == "no face found":
            assert away.all()
        else:
            assert max_diff(out[~away], plain[~away]) > 50, name

    # The tilted faces are aligned upright: the fit turns each by its tilt more than the upright photo's.
    def angles(photo):
        return sorted(np.degrees(np.arctan2(*faces.alignment(f.landmarks, SIZE)[::-1, 0]))
                      for f in faces.detect_faces(photo))

    (astronaut,), (grace,) = angles(skimage_data.astronaut()), angles(grace_hopper())
    tilted = angles(cases["tilted.png"][0])
    # (OpenCV turns a picture counter-clockwise by a positive angle; MTCNN's landmarks lose a few degrees.)
    assert abs(tilted[0] - (grace - 40)) < 5 and abs(tilted[1] - (astronaut + 30)) < 5, (tilted, astronaut, grace)
    # The face cut by the border is pasted up to the border.
    border = cases["border.png"][0]
    out = read_rgb(tmp_path / "out" / "border.png")
    assert max_diff(out[100:130, :3], anime_gan.stylize(border, model=models[0])[100:130, :3]) > 20


@pytest.mark.slow
def test_video_frames_get_their_faces_and_one_line(generators, tmp_path):
    import av

    background_model = generators[0]
    photo = skimage_data.astronaut()
    with av.open(str(tmp_path / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        for image in (photo, photo[:, ::-1], skimage_data.coffee()[:, 44:556][:400].repeat(2, 0)[:512]):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    anime_gan.save_generator(background_model, tmp_path / "m")
    with logged("anime_gan.inference") as messages:
        summary = inference.run(str(tmp_path / "m"), str(tmp_path / "clip.mp4"), str(tmp_path / "anime.mp4"),
                                show_progress=False, faces=True, face_size=SIZE)
    assert summary.ok
    assert any("faces in 2 of 3 frames (2 in all)" in m for m in messages), messages


def test_without_the_extra_faces_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "mtcnn", None)  # as if it were not installed
    with pytest.raises(ConfigError) as caught:
        inference.run("no-model-needed", str(tmp_path), str(tmp_path / "out"), faces=True)
    assert str(caught.value) == faces.INSTALL_SENTENCE
    assert "pip install 'anime-gan-tf2[faces]'" in str(caught.value)
    with pytest.raises(ConfigError):
        anime_gan.stylize(np.zeros((16, 16, 3), np.uint8), model="no-model-needed", faces=True)
    assert pathlib.Path(tmp_path).exists() and not (tmp_path / "out").exists()
