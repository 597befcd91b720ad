"""`make data ARGS="--source=official-v2 --style=Hayao"`: the AnimeGANv2 style sets, served from 127.0.0.1
through --mirror (a small Hayao.tar.gz in the release's layout), unpacked into dataset/Hayao_v2, smoothed,
reported; hostile, damaged and broken archives; bad --style; the command's output."""
import gzip
import io
import os
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest

import data_prep
from data_prep import download, report, stylesets
from helpers import ENV, REPO, LocalServer, official_zip, per_pixel_smooth, tree_digests, v2_style_tar

# Where the official URL puts Hayao.tar.gz under a mirror of https://github.com.
MIRROR_PATH = "TachibanaYoshino/AnimeGANv2/releases/download/1.0/Hayao.tar.gz"


def _members(payload):
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}


def _prepare(ds, server=None, **kw):
    kw.setdefault("source", stylesets.SOURCE)
    kw.setdefault("styles", ["Hayao"])
    return data_prep.prepare(dataset_dir=str(ds), mirror=server.url if server else None, backoff=0.0,
                             progress=False, **kw)


def test_official_v2_url_and_facts():
    assert stylesets.URL.format(style="Shinkai") == \
        "https://github.com/TachibanaYoshino/AnimeGANv2/releases/download/1.0/Shinkai.tar.gz"
    assert download.mirrored(stylesets.URL.format(style="Hayao"), "http://127.0.0.1:1/gh/") == \
        "http://127.0.0.1:1/gh/" + MIRROR_PATH
    assert stylesets.COUNTS == {"Hayao": 1752, "Shinkai": 1445, "Paprika": 1284}
    assert stylesets.folder_name("Paprika") == "Paprika_v2"
    # The folder each v2 config trains on is the one data_prep fills.
    for style in stylesets.STYLES:
        with open(os.path.join(REPO, stylesets.config_of(style))) as f:
            assert f"--dataset={stylesets.folder_name(style)}\n" in f.read().splitlines(keepends=True)


def test_broken_download_resumes_unpacks_and_smooths_what_is_missing(tmp_path, monkeypatch):
    payload = v2_style_tar(n=3, smoothed=(0,))
    ds = tmp_path / "dataset"
    # A first run whose transfer breaks with no retry left: one sentence, the partial file kept.
    with LocalServer({MIRROR_PATH: payload}, cut=1) as server:
        with pytest.raises(report.DataError, match=r"failed after 1 attempts .* run again to resume from "):
            _prepare(ds, server, retries=0)
        half = os.path.getsize(ds / "Hayao.tar.gz.part")
        assert 0 < half < len(payload) and not (ds / "Hayao_v2").exists()
        # Run again: it resumes from the bytes on disk.
        res = _prepare(ds, server)
    assert server.ranges == [None, f"bytes={half}-"]
    assert sorted(os.listdir(ds)) == ["Hayao_v2"]  # the archive is gone; nothing else was written
    style, smooth = ds / "Hayao_v2" / "style", ds / "Hayao_v2" / "smooth"
    members = _members(payload)
    assert sorted(os.listdir(style)) == ["0.jpg", "1.jpg", "2.jpg"]
    for name in os.listdir(style):  # unpacked bytes are the archive's bytes
        assert (style / name).read_bytes() == members[f"Hayao/style/{name}"]
    assert cv2.imread(str(style / "0.jpg")).shape == (256, 256, 3)
    # smooth/: the shipped copy kept, the two missing ones made by the official recipe.
    assert sorted(os.listdir(smooth)) == ["0.jpg", "1.jpg", "2.jpg"]
    assert (smooth / "0.jpg").read_bytes() == members["Hayao/smooth/0.jpg"]
    for name in ("1.jpg", "2.jpg"):
        expected = per_pixel_smooth(style / name, 256)
        assert (smooth / name).read_bytes() == cv2.imencode(".jpg", expected)[1].tobytes(), name
        assert (smooth / name).read_bytes() != (style / name).read_bytes()
    assert res.smoothed[0].kept == 1 and len(res.smoothed[0].written) == 2
    assert res.layout_problems == [f"{style} holds 3 images, expected 1752"]
    assert f"{style}: 3 images, sizes 256×256 … 256×256, 0 unreadable" in res.text()
    assert (f"{ds} holds no photos yet: a complete v2 training set also needs the v1 dataset.zip's "
            f"train_photo/, val/ and test/, so run `make data ARGS=\"--source=official --out={ds}\"` "
            f"(= python -m data_prep --source=official --out={ds}) before training.") in res.next_steps
    assert res.next_steps[-1] == f"train: python -m anime_gan.train --flagfile=anime_gan/configs/hayao_v2.cfg " \
                                 f"--dataset_dir={ds}"
    # Once the style folder holds the release's count, a re-run downloads nothing.
    monkeypatch.setitem(stylesets.COUNTS, "Hayao", 3)
    with LocalServer({MIRROR_PATH: payload}) as server:
        res = _prepare(ds, server)
    assert server.requests == [] and res.layout_problems == []


def _tar(*extra, n=2):
    return v2_style_tar("Hayao", n=n, smoothed=(), extra=extra)


def _info(name, kind=tarfile.REGTYPE, linkname="", size=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


HOSTILE = {
    "traversal": ((_info("Hayao/style/../../../evil.jpg", size=6), b"gotcha"), "path with '..'"),
    "absolute": ((_info("/tmp/anime-gan-test-evil.jpg", size=6), b"gotcha"), "absolute path"),
    "symlink": ((_info("Hayao/style/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), None), "symbolic link"),
    "hardlink": ((_info("Hayao/style/hard.jpg", tarfile.LNKTYPE, "/etc/passwd"), None), "hard link"),
    "device": ((_info("Hayao/style/dev.jpg", tarfile.CHRTYPE), None), "special file"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_in_one_sentence_writing_nothing(tmp_path, kind):
    member, reason = HOSTILE[kind]
    archive = tmp_path / "in" / "Hayao.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(_tar(member))
    ds = tmp_path / "work" / "dataset"
    with pytest.raises(report.DataError) as e:
        _prepare(ds, source=str(archive))
    message = str(e.value)
    assert f"holds the unsafe member {member[0].name!r} ({reason}" in message
    assert message.endswith("nothing was unpacked, use the official archive.") and message.count(". ") == 0
    assert not os.path.exists("/tmp/anime-gan-test-evil.jpg")
    assert list(tree_digests(tmp_path)) == [os.path.join("in", "Hayao.tar.gz")]  # nothing written anywhere


def test_hostile_download_is_refused_and_removed(tmp_path):
    ds = tmp_path / "dataset"
    (ds / "train_photo").mkdir(parents=True)
    (ds / "train_photo" / "mine.jpg").write_bytes(b"keep")
    with LocalServer({MIRROR_PATH: _tar(HOSTILE["symlink"][0])}) as server:
        with pytest.raises(report.DataError, match=r"unsafe member 'Hayao/style/link.jpg' \(symbolic link\)"):
            _prepare(ds, server)
    assert list(tree_digests(tmp_path)) == [os.path.join("dataset", "train_photo", "mine.jpg")]
    assert (ds / "train_photo" / "mine.jpg").read_bytes() == b"keep"


def test_bombs_damage_and_foreign_layouts_are_refused(tmp_path, monkeypatch):
    ds = tmp_path / "ds"

    def refused(payload, match):
        path = tmp_path / "Hayao.tar.gz"
        path.write_bytes(payload)
        with pytest.raises(report.DataError, match=match):
            _prepare(ds, source=str(path))
        assert not ds.exists()

    # 3 MiB of zeros: about 1000:1, refused while it is read, before anything is written.
    zeros = 3 << 20
    refused(_tar((_info("Hayao/style/zeros.jpg", size=zeros), bytes(zeros)), n=0), r"above the 200:1 limit .* gzip bomb")
    # A header that declares 20 GiB is refused from the header, before its data is read (here: none).
    header = gzip.compress(_info("Hayao/style/huge.jpg", size=20 << 30).tobuf(tarfile.GNU_FORMAT))
    refused(header, r"would expand to more than 17.2 GB, the limit")
    # Cut in half (the gzip stream ends early) and not a tar.gz at all.
    payload = _tar()
    refused(payload[: len(payload) // 2], r"is not a complete tar.gz archive \(.*cut short\?\); nothing was unpacked")
    refused(b"PK\x03\x04 not a tarball", r"is not a complete tar.gz archive")
    # No style/ folder: not the release's layout.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(_info("photos/a.jpg", size=1), io.BytesIO(b"x"))
    refused(buf.getvalue(), r"holds no style/ folder, so it is not an AnimeGANv2 style archive")
    # The free space counts too.
    monkeypatch.setattr(download, "free_bytes", lambda path: 100)
    refused(_tar(), r"but only 100 bytes are free under .*; nothing was unpacked")


def test_bad_style_is_one_sentence_naming_the_three(tmp_path):
    with pytest.raises(report.DataError) as e:
        _prepare(tmp_path / "ds", styles=["Ghibli", "hayao"])
    assert str(e.value) == ("--style must name one or more AnimeGANv2 style sets of Hayao, Shinkai, Paprika "
                            "(e.g. --style=Hayao), not 'Ghibli'.")
    with pytest.raises(report.DataError, match=r"of Hayao, Shinkai, Paprika \(e.g. --style=Hayao\), none was given"):
        _prepare(tmp_path / "ds", styles=None)
    assert stylesets.check_styles(["shinkai", "Hayao", "SHINKAI"]) == ["Shinkai", "Hayao"]
    with pytest.raises(report.DataError, match=r"^--sha256 checks one archive; fetch one --style at a time"):
        _prepare(tmp_path / "ds", styles=["Hayao", "Paprika"], sha256="0" * 64)
    with pytest.raises(report.DataError, match=r"Hayao.tar.gz is one style archive; name its style with one --style"):
        _prepare(tmp_path / "ds", source=str(tmp_path / "Hayao.tar.gz"), styles=["Hayao", "Paprika"])
    assert not (tmp_path / "ds").exists()


def _run(*args):
    return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)


def test_cli_says_what_completes_the_v2_set(tmp_path):
    r = _run("--source=official-v2", "--style=Ghibli", f"--out={tmp_path / 'ds'}")
    assert r.returncode == 2
    assert [l for l in r.stderr.splitlines() if l.strip()] == [
        "error: --style must name one or more AnimeGANv2 style sets of Hayao, Shinkai, Paprika (e.g. "
        "--style=Hayao), not 'Ghibli'."]
    ds = tmp_path / "ds"  # the photos are already there (as from --source=official)
    for sub in ("train_photo", "val"):
        (ds / sub).mkdir(parents=True)
        cv2.imwrite(str(ds / sub / "p.jpg"), np.full((40, 40, 3), 90, np.uint8))
    with LocalServer({MIRROR_PATH: v2_style_tar(n=2, smoothed=())}) as server:
        r = _run("--source=official-v2", "--style=Hayao", f"--mirror={server.url}", f"--out={ds}",
                 "--progress=false")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert f"{ds / 'Hayao_v2' / 'smooth'}: smoothed 2 images, kept 0 existing, skipped 0 unreadable" in out
    assert f"{ds / 'Hayao_v2'}: the AnimeGANv2 Hayao style set (style/, smooth/) that " \
           "anime_gan/configs/hayao_v2.cfg trains on." in out
    assert out[-1] == f"train: python -m anime_gan.train --flagfile=anime_gan/configs/hayao_v2.cfg --dataset_dir={ds}"
    assert not any("holds no photos" in line for line in out)



def test_local_archive_is_unpacked_and_kept(tmp_path):
    archive = tmp_path / "Paprika.tar.gz"
    payload = v2_style_tar("Paprika", n=2, smoothed=(0, 1))
    archive.write_bytes(payload)
    res = _prepare(tmp_path / "ds", source=str(archive), styles=["paprika"])
    assert archive.read_bytes() == payload  # a local source is never removed
    members = _members(payload)
    got = {os.path.relpath(p, tmp_path / "ds" / "Paprika_v2"): open(p, "rb").read()
           for p in (tmp_path / "ds" / "Paprika_v2").glob("*/*")}
    assert got == {name[len("Paprika/"):]: data for name, data in members.items()}  # both shipped smooth kept
    assert res.smoothed[0].kept == 2 and res.layout_problems == []  # no count expected for a local file


def test_mirror_serves_the_v1_dataset_too(tmp_path):
    path = download.DATASET_URL[len(download.GITHUB) + 1:]
    with LocalServer({path: official_zip()}) as server:
        res = data_prep.prepare(source="official", dataset_dir=str(tmp_path / "ds"), mirror=server.url + "/",
                                img_size=32, progress=False)
    assert server.requests == [(path, None)]
    assert res.layout_problems == [f"{tmp_path / 'ds' / 'train_photo'} holds 5 images, expected 6656"]
    with pytest.raises(report.DataError) as e:
        data_prep.prepare(source="official", dataset_dir=str(tmp_path / "ds2"), mirror="mirror.example.org")
    assert str(e.value) == ("--mirror 'mirror.example.org' is not a URL; pass one such as https://example.org/github "
                            "(it replaces https://github.com in the download URL).")
    assert not (tmp_path / "ds2").exists()
