"""`make data`: the demo set, the dataset.zip path (local HTTP server), bad inputs, the CLI."""
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

import data_prep
from data_prep import demo, download, report
from helpers import LocalServer, SKIPPED, official_zip, tree_digests, write_bad_inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo build tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_demo_build_is_deterministic_offline_and_unpaired(tmp_path, no_network):
    kw = dict(num_photos=6, num_style=5, img_size=64, progress=False)
    m1 = demo.build(str(tmp_path / "a"), seed=3, **kw)
    demo.build(str(tmp_path / "b"), seed=3, **kw)
    demo.build(str(tmp_path / "c"), seed=4, **kw)
    a, b, c = (tree_digests(tmp_path / x) for x in "abc")
    assert a == b  # same seed, same bytes (manifest included)
    assert a.keys() == c.keys() and a != c  # another seed, other crops
    root = tmp_path / "a"
    for rel, n in [("train_photo", 6), ("Demo/style", 5), ("Demo/smooth", 5), ("val", demo.NUM_VAL),
                   ("test/test_photo256", demo.NUM_TEST), ("test/test_photo", demo.NUM_TEST),
                   ("test/real", demo.NUM_TEST), ("test/HR_photo", 2)]:
        assert len(os.listdir(root / rel)) == n, rel
    for f in os.listdir(root / "Demo" / "style"):
        assert cv2.imread(str(root / "Demo" / "style" / f)).shape == (64, 64, 3)
    # Unpaired: no style image is cut from the same box as a photo.
    photo_boxes = {tuple(b) for b in m1["crops"]["photo"]}
    assert not photo_boxes & {tuple(b) for b in m1["crops"]["style"]}
    # Smooth = the edge-smoothed style image: the same picture, changed only near edges.
    st = cv2.imread(str(root / "Demo/style/0000.jpg")).astype(int)
    sm = cv2.imread(str(root / "Demo/smooth/0000.jpg")).astype(int)
    assert 0 < np.mean(np.abs(st - sm)) < 20
    # ensure() does not rebuild an identical set.
    assert demo.ensure(str(root), seed=3, **kw) is False


def test_demo_refuses_to_mix_into_real_photos(tmp_path):
    (tmp_path / "train_photo").mkdir()
    (tmp_path / "train_photo" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(report.DataError, match="train_photo already holds 1 files not made by the demo"):
        demo.build(str(tmp_path), num_photos=2, num_style=2, img_size=32, progress=False)


def test_demo_without_scikit_image_names_the_extra(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(report.DataError, match=r"pip install \.\[demo\]"):
        demo.build(str(tmp_path), num_photos=2, num_style=2, img_size=32, progress=False)


# ---------------------------------------------------------------- dataset.zip over local HTTP

def test_zip_download_resumes_verifies_unpacks_smooths_and_reports(tmp_path, caplog):
    payload = official_zip()
    server = LocalServer({"dataset.zip": payload}, cut=1)
    try:
        with caplog.at_level(logging.WARNING, logger="data_prep"):
            res = data_prep.prepare(source=server.url_of("dataset.zip"), dataset_dir=str(tmp_path / "ds"), img_size=32,
                                    sha256=hashlib.sha256(payload).hexdigest(), backoff=0.0, progress=False)
    finally:
        server.close()
    warnings = caplog.messages
    # First request cut off, second one resumed exactly where the bytes on disk end.
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(payload) // 2}-"
    assert any("broke at" in w for w in warnings)
    ds = tmp_path / "ds"
    assert not (ds / "dataset.zip").exists() and not (ds / "dataset.zip.part").exists()
    assert sorted(os.listdir(ds / "train_photo")) == [f"{i}.jpg" for i in range(5)]
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:  # unpacked bytes are the archive's bytes
        assert (ds / "Hayao" / "style" / "1.jpg").read_bytes() == zf.read("dataset/Hayao/style/1.jpg")
    for style in ("Hayao", "Shinkai"):  # smooth/ was missing: auto made it
        assert sorted(os.listdir(ds / style / "smooth")) == ["0.jpg", "1.jpg", "2.jpg"]
    assert res.layout_problems == []
    counts = {os.path.relpath(r.folder, ds): r.count for r in res.reports}
    assert counts["train_photo"] == 5 and counts[os.path.join("Shinkai", "smooth")] == 3
    assert "train_photo: 5 images, sizes 40×40 … 40×40, 0 unreadable" in res.text()


def test_download_checks_size_and_checksum(tmp_path):
    payload = official_zip()
    with LocalServer({"dataset.zip": payload}) as server:
        with pytest.raises(report.DataError, match="SHA-256 .* does not match"):
            download.download(server.url_of("dataset.zip"), str(tmp_path / "d.zip"), sha256="0" * 64,
                              progress=False)
    assert not os.listdir(tmp_path)  # the bad file is gone, nothing half-written stays
    # Every attempt broken: one sentence that says how to resume.
    with LocalServer({"dataset.zip": payload}, cut=1) as server:
        with pytest.raises(report.DataError, match="failed after 1 attempts .* run again to resume"):
            download.download(server.url_of("dataset.zip"), str(tmp_path / "e.zip"), retries=0, progress=False)
    assert 0 < os.path.getsize(tmp_path / "e.zip.part") < len(payload)


@pytest.mark.parametrize("evil", ["../evil.jpg", "dataset/../../evil.jpg", "/tmp/evil.jpg"])
def test_zip_with_escaping_member_is_refused(tmp_path, evil):
    z = tmp_path / "evil.zip"
    z.write_bytes(official_zip(evil=evil))
    out = tmp_path / "out" / "ds"
    with pytest.raises(report.DataError, match="unsafe member"):
        download.safe_extract(str(z), str(out), progress=False)
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "out" / "evil.jpg").exists()
    assert not out.exists() or not os.listdir(out)  # nothing at all was unpacked


def test_zip_without_layout_is_refused(tmp_path):
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("photos/a.jpg", b"x")
    with pytest.raises(report.DataError, match="holds no train_photo/ folder"):
        download.safe_extract(str(z), str(tmp_path / "o"), progress=False)


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_in_style_folder_are_named_and_skipped(tmp_path, caplog):
    ds = tmp_path / "ds"
    expected = write_bad_inputs(ds / "Mine" / "style", np.random.default_rng(1))
    write_bad_inputs(ds / "train_photo", np.random.default_rng(2))
    (ds / "val").mkdir()
    cv2.imwrite(str(ds / "val" / "v.jpg"), np.full((40, 40, 3), 90, np.uint8))
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        res = data_prep.prepare(source="existing", dataset_dir=str(ds), img_size=32, progress=False)
    warnings = caplog.messages
    for name, words in expected.items():
        for folder in ("Mine/style", "train_photo"):
            path = os.path.join(str(ds), folder, name)
            assert any(w.startswith(path + ":") and words in w for w in warnings), (path, words)
    smooth = set(os.listdir(ds / "Mine" / "smooth"))
    assert smooth == {"good.jpg", "cmyk.jpg", "deep16.png", "gray.png", "rgba.png", "huge.jpg"}
    for name in ("deep16.png", "gray.png", "rgba.png"):
        assert cv2.imread(str(ds / "Mine" / "smooth" / name)).shape == (32, 32, 3)
    bad = {os.path.basename(p) for p, _ in res.reports[0].bad}
    assert bad == SKIPPED
    with pytest.raises(report.DataError, match="--strict: .* is unusable"):
        data_prep.prepare(source="existing", dataset_dir=str(ds), img_size=32, progress=False, strict=True)


def test_missing_and_empty_folders_end_in_one_sentence(tmp_path):
    with pytest.raises(report.DataError) as e:
        data_prep.prepare(source="existing", dataset_dir=str(tmp_path / "nope"), progress=False)
    assert str(e.value).count(". ") == 0 and str(tmp_path / "nope") in str(e.value)
    (tmp_path / "ds" / "S" / "style").mkdir(parents=True)
    (tmp_path / "ds" / "train_photo").mkdir()
    cv2.imwrite(str(tmp_path / "ds" / "train_photo" / "p.jpg"), np.full((40, 40, 3), 90, np.uint8))
    with pytest.raises(report.DataError, match=r"Folder .*S/style holds no usable images"):
        data_prep.prepare(source="existing", dataset_dir=str(tmp_path / "ds"), progress=False)


# ---------------------------------------------------------------- command line

def _run(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_documents_every_flag_and_imports_no_tensorflow():
    out = _run("--helpfull")
    for flag in ("source", "out", "style", "smooth", "img_size", "seed", "num_photos", "num_style", "strict",
                 "workers", "retries", "sha256", "mirror", "keep_archive", "progress"):
        assert f"--{flag}" in out.stdout or f"--[no]{flag}" in out.stdout, flag
    code = ("import sys, data_prep, data_prep.__main__, data_prep.demo, data_prep.download, "
            "data_prep.report, data_prep.smoothing; assert 'tensorflow' not in sys.modules, 'tf imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_data_prep_imports_nothing_from_anime_gan():
    """data_prep sits at the bottom: anime_gan may import it, never the other way round."""
    code = ("import sys, data_prep, data_prep.__main__, data_prep.console, data_prep.demo, data_prep.download, "
            "data_prep.files, data_prep.report, data_prep.smoothing, data_prep.stylesets; "
            "assert not any(m.startswith('anime_gan') for m in sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_cli_user_errors_exit_2_in_one_line(tmp_path):
    r = _run("--img_size=3")  # a flag absl refuses is a user error too, not absl's status 1
    assert r.returncode == 2
    assert [l for l in r.stderr.splitlines() if l.strip()] == [
        "error: flag --img_size=3: 3 is not integer >= 8; pass --help to list the flags."]
    r = _run("extra")
    assert r.returncode == 2
    assert [l for l in r.stderr.splitlines() if l.strip()] == [
        "error: unexpected arguments extra; flags are written --name=value."]


def test_cli_missing_folder_is_one_line(tmp_path):
    r = _run("--source=existing", f"--out={tmp_path / 'missing'}", "--progress=false")
    assert r.returncode == 2  # every command's status for a user error (was 1 before issue 11)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines == [f"error: Folder {tmp_path / 'missing'} does not exist; create it with your images or "
                     "run `make data`."]
