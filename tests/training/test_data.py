"""anime_gan.training.data: values against OpenCV, sizes, shuffling, determinism, exact resume, bad inputs."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from anime_gan.training import data
from helpers import SKIPPED, write_bad_inputs

S = 32  # small images keep the tests fast; the pipeline does not care about the size
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _img(rng, h=S, w=S):
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 1.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    for sub in ("train_photo", "Mine/style", "Mine/smooth"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(root / "train_photo" / f"p{i}.{'png' if i == 5 else 'jpg'}"), _img(rng))
    for i in range(4):
        ext = "png" if i == 3 else "jpg"
        cv2.imwrite(str(root / "Mine/style" / f"a{i}.{ext}"), _img(rng))
        cv2.imwrite(str(root / "Mine/smooth" / f"a{i}.{ext}"), _img(rng))
    return root


def _cv_rgb(path):
    return cv2.imread(str(path))[..., ::-1].astype(np.float32) / 127.5 - 1.0


def _cv_gray(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 127.5 - 1.0


def test_values_match_opencv_reading(dataset):
    ds, steps, rep = data.make_train_dataset(str(dataset), "Mine", batch_size=2, img_size=S, shuffle=False)
    assert steps == 3  # floor(max(6 photos, 4 anime) / 2)
    assert [r.count for r in (rep.photo, rep.anime, rep.smooth)] == [6, 4, 4] and not rep.skipped
    batches = list(ds.take(3).as_numpy_iterator())
    for photo, anime, anime_gray, smooth_gray in batches:
        for x in (photo, anime, anime_gray, smooth_gray):
            assert x.shape == (2, S, S, 3) and x.dtype == np.float32
    photos = np.concatenate([b[0] for b in batches])
    anime = np.concatenate([b[1] for b in batches])
    anime_gray = np.concatenate([b[2] for b in batches])
    smooth_gray = np.concatenate([b[3] for b in batches])
    photo_files = sorted(os.listdir(dataset / "train_photo"))
    for i, f in enumerate(photo_files):  # unshuffled: file order; JPEG and PNG both exact
        np.testing.assert_allclose(photos[i], _cv_rgb(dataset / "train_photo" / f), atol=1e-6)
    anime_files = sorted(os.listdir(dataset / "Mine/style"))
    one_level = 1 / 127.5 + 1e-6
    for i in range(6):  # the anime stream wraps around after 4 files
        f = anime_files[i % 4]
        np.testing.assert_allclose(anime[i], _cv_rgb(dataset / "Mine/style" / f), atol=1e-6)
        gray = _cv_gray(dataset / "Mine/style" / f)
        assert np.abs(anime_gray[i] - gray[..., None]).max() <= one_level, f
        assert np.abs(smooth_gray[i] - _cv_gray(dataset / "Mine/smooth" / f)[..., None]).max() <= one_level, f
        assert np.array_equal(anime_gray[i][..., 0], anime_gray[i][..., 2])


def test_other_sizes_are_resized_on_shorter_side_and_cropped(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("train_photo", "A/style", "A/smooth"):
        (tmp_path / sub).mkdir(parents=True)
    wide = _img(rng, S, 3 * S)  # shorter side already S: only a crop, so the output is a window of it
    cv2.imwrite(str(tmp_path / "train_photo" / "wide.png"), wide)
    big = _img(rng, 2 * S + 6, 5 * S)  # needs a resize first
    cv2.imwrite(str(tmp_path / "A/style" / "big.png"), big)
    cv2.imwrite(str(tmp_path / "A/smooth" / "big.png"), big)
    ds, steps, _ = data.make_train_dataset(str(tmp_path), "A", batch_size=1, img_size=S, seed=5)
    ref = wide[..., ::-1].astype(np.float32) / 127.5 - 1
    offsets = set()
    for photo, anime, anime_gray, smooth_gray in ds.take(12).as_numpy_iterator():
        match = [o for o in range(2 * S + 1) if np.allclose(photo[0], ref[:, o:o + S], atol=1e-6)]
        assert len(match) >= 1
        offsets.add(match[0])
        assert anime.shape == (1, S, S, 3) and -1 <= anime.min() and anime.max() <= 1
        # The grayscale copy is cropped with its image: it is the image's grey, to a few levels.
        expected_gray = (anime[0] + 1) * 127.5 @ np.array([0.299, 0.587, 0.114], np.float32)
        assert np.abs((anime_gray[0, ..., 0] + 1) * 127.5 - expected_gray).max() < 3
    assert len(offsets) > 3  # random crops, not always the same


def _photo_ids(batches, dataset_dir):
    """Identify each photo of the batches by the file it equals."""
    files = sorted(os.listdir(os.path.join(dataset_dir, "train_photo")))
    refs = [_cv_rgb(os.path.join(dataset_dir, "train_photo", f)) for f in files]
    return [next(j for j, r in enumerate(refs) if np.allclose(p, r, atol=1e-6)) for b in batches for p in b[0]]


def test_shuffle_each_epoch_deterministic_and_exact_resume(dataset):
    ds, steps, _ = data.make_train_dataset(str(dataset), "Mine", batch_size=2, img_size=S, seed=7)
    first = list(ds.take(6).as_numpy_iterator())
    ids = _photo_ids(first, dataset)  # two epochs of the 6 photos
    assert sorted(ids[:6]) == list(range(6)) and sorted(ids[6:]) == list(range(6))
    assert ids[:6] != ids[6:]  # reshuffled every epoch
    again = list(data.make_train_dataset(str(dataset), "Mine", batch_size=2, img_size=S, seed=7)[0]
                 .take(6).as_numpy_iterator())
    assert all(np.array_equal(x, y) for a, b in zip(first, again) for x, y in zip(a, b))
    other = list(data.make_train_dataset(str(dataset), "Mine", batch_size=2, img_size=S, seed=8)[0]
                 .take(6).as_numpy_iterator())
    assert _photo_ids(other, dataset) != ids

    # Checkpoint the iterator mid-epoch, read on, restore: the same batches again.
    it = iter(data.make_train_dataset(str(dataset), "Mine", batch_size=2, img_size=S, seed=7)[0])
    for _ in range(4):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(os.path.join(str(dataset), "..", "it_ckpt", "c"))
    after = [next(it) for _ in range(4)]
    ckpt.restore(path)
    resumed = [next(it) for _ in range(4)]
    assert all(np.array_equal(x.numpy(), y.numpy()) for a, b in zip(after, resumed) for x, y in zip(a, b))


def test_bad_inputs_are_left_out_with_named_warnings(tmp_path, caplog):
    rng = np.random.default_rng(3)
    expected = write_bad_inputs(tmp_path / "train_photo", rng)
    write_bad_inputs(tmp_path / "B" / "style", rng)
    write_bad_inputs(tmp_path / "B" / "smooth", rng)
    caplog.set_level("WARNING")
    ds, steps, rep = data.make_train_dataset(str(tmp_path), "B", batch_size=2, img_size=S)
    messages = [r.getMessage() for r in caplog.records]
    for folder in ("train_photo", "B/style", "B/smooth"):
        for name, words in expected.items():
            path = os.path.join(str(tmp_path), folder, name)
            assert any(m.startswith(path + ":") and words in m for m in messages), (path, words)
    for r in (rep.photo, rep.anime, rep.smooth):
        assert {os.path.basename(p) for p, _ in r.bad} == SKIPPED
        assert r.count == 6  # good, CMYK, 16-bit, gray, RGBA, 6000×6000 are used
    assert steps == 3
    # Two full epochs of every stream, no error; CMYK and gray inputs come out in range.
    for photo, anime, anime_gray, smooth_gray in ds.take(2 * steps).as_numpy_iterator():
        for x in (photo, anime, anime_gray, smooth_gray):
            assert x.shape == (2, S, S, 3) and np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1


def test_missing_or_empty_folder_is_one_sentence(tmp_path, dataset):
    with pytest.raises(data.DataError, match=r"^Folder \S+/Nope/style does not exist; [^.]*\.$"):
        data.make_train_dataset(str(dataset), "Nope", batch_size=2, img_size=S)
    (tmp_path / "train_photo").mkdir()
    with pytest.raises(data.DataError, match=r"^Folder \S+/train_photo holds no usable photos .*\.$") as e:
        data.make_train_dataset(str(tmp_path), "Mine", batch_size=2, img_size=S)
    assert ". " not in str(e.value) and "\n" not in str(e.value)  # one sentence
    with pytest.raises(data.DataError, match="larger than both"):
        data.make_train_dataset(str(dataset), "Mine", batch_size=64, img_size=S)


def test_val_images_sized_as_the_original(tmp_path):
    rng = np.random.default_rng(4)
    cv2.imwrite(str(tmp_path / "a.jpg"), _img(rng, 100, 150))  # both sides <= 256: raised to 256
    cv2.imwrite(str(tmp_path / "b.png"), _img(rng, 300, 520))  # longer: down to multiples of 32
    (tmp_path / "c.jpg").write_bytes(b"")
    val = data.make_val_dataset(str(tmp_path), img_size=256)
    assert [n for n, _ in val] == ["a.jpg", "b.png"]
    assert val[0][1].shape == (1, 256, 256, 3) and val[1][1].shape == (1, 288, 512, 3)
    expected = cv2.resize(cv2.imread(str(tmp_path / "b.png")), (512, 288))[..., ::-1] / 127.5 - 1
    np.testing.assert_allclose(val[1][1][0], expected, atol=1e-6)
    assert len(data.make_val_dataset(str(tmp_path), limit=1)) == 1


def test_data_module_imports_no_models():
    code = ("import sys, anime_gan.training.data; bad = [m for m in ('anime_gan.nets.generator', 'anime_gan.nets.discriminator', "
            "'anime_gan.nets.vgg', 'anime_gan.training.gan') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
