"""Issue 12, data items 6-9: image headers, huge images, zip bombs and duplicates, incomplete downloads,
broken symbolic links, a dataset path that is a file. Nothing here decodes or allocates a huge image."""
import io
import json
import logging
import os
import resource
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib

import cv2
import numpy as np
import pytest

import data_prep
from data_prep import download, report
from data_prep.image_header import image_size
from helpers import LocalServer, official_zip, tree_digests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- files made by hand

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(h: int, w: int) -> bytes:
    """Signature + IHDR of an 8-bit RGB PNG: no pixel data at all."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))


def black_png(h: int, w: int, rows_per_block: int = 80) -> bytes:
    """A complete, valid black h x w RGB PNG built without holding its pixels (20000² -> 1.2 MB, 0.1 s).

    One deflate block of `rows_per_block` zero rows, ended by a full flush (so it does not refer to
    anything before it), is repeated; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    assert h % rows_per_block == 0
    row = bytes(1 + 3 * w)  # filter byte 0, then black pixels
    c = zlib.compressobj(9)
    block = row * rows_per_block
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)  # starts with the zlib header
    repeat = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()[:-4]  # final empty block, without the Adler-32 of what c saw
    n = len(row) * h
    idat = first + repeat * (h // rows_per_block - 1) + end + struct.pack(">I", ((n % 65521) << 16) | 1)
    return png_header(h, w) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_header(h: int, w: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b";"


def webp_vp8x(h: int, w: int) -> bytes:
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(4) + (w - 1).to_bytes(3, "little") \
        + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- image_header

@pytest.mark.parametrize("ext,params", [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                                        (".bmp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                                        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".tiff", [])])
def test_image_size_matches_what_opencv_wrote(tmp_path, ext, params):
    rng = np.random.default_rng(0)
    for h, w in [(37, 53), (1, 1), (301, 17), (256, 256)]:
        for shape in [(h, w), (h, w, 3)]:
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            ok, buf = cv2.imencode(ext, img, params)
            assert ok
            data = buf.tobytes()
            assert image_size(data) == (h, w), (ext, shape)
            path = tmp_path / f"x{ext}"
            path.write_bytes(data)
            assert image_size(str(path)) == (h, w), (ext, shape)
            assert cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).shape[:2] == (h, w)  # the writer agrees


def test_image_size_of_hand_made_headers(tmp_path):
    assert image_size(gif_header(123, 4567)) == (123, 4567)
    assert image_size(webp_vp8x(3001, 4999)) == (3001, 4999)
    assert image_size(png_header(20000, 20000)) == (20000, 20000)
    big = black_png(20000, 20000)
    assert len(big) < 2_000_000  # the 1.2 MB file of the issue
    (tmp_path / "big.png").write_bytes(big)
    assert image_size(str(tmp_path / "big.png")) == (20000, 20000)
    # A smaller one from the same builder decodes to what it claims (so the big one is a real PNG).
    small = cv2.imdecode(np.frombuffer(black_png(160, 77), np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (160, 77, 3) and small.max() == 0


def test_image_size_finds_a_jpeg_frame_beyond_the_first_64_kb(tmp_path):
    jpg = cv2.imencode(".jpg", np.zeros((33, 65, 3), np.uint8))[1].tobytes()
    app = b"\xff\xe5" + struct.pack(">H", 65000) + bytes(64998)  # three big APP5 segments first
    data = jpg[:2] + app * 3 + jpg[2:]
    assert len(data) > 128 * 1024
    (tmp_path / "late.jpg").write_bytes(data)
    assert image_size(str(tmp_path / "late.jpg")) == (33, 65)
    assert image_size(data) == (33, 65)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (33, 65, 3)


def test_image_header_is_pure_python():
    """stylize and the SavedModel import it too: no OpenCV, numpy or TensorFlow behind it."""
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('h', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "bad = {'cv2', 'numpy', 'tensorflow', 'PIL'} & set(sys.modules); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "data_prep", "image_header.py")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_image_size_never_raises_on_cut_or_foreign_headers():
    full = {
        "png": cv2.imencode(".png", np.zeros((9, 11), np.uint8))[1].tobytes(),
        "jpg": cv2.imencode(".jpg", np.zeros((9, 11), np.uint8))[1].tobytes(),
        "bmp": cv2.imencode(".bmp", np.zeros((9, 11), np.uint8))[1].tobytes(),
        "webp": cv2.imencode(".webp", np.zeros((9, 11, 3), np.uint8))[1].tobytes(),
        "tiff": cv2.imencode(".tiff", np.zeros((9, 11), np.uint8))[1].tobytes(),
        "gif": gif_header(9, 11),
    }
    for kind, data in full.items():
        assert image_size(data) == (9, 11), kind
        for n in range(min(len(data), 400)):
            assert image_size(data[:n]) in (None, (9, 11)), (kind, n)
        assert image_size(data[:5]) is None, kind
    for junk in (b"", b"hello world", bytes(100), b"\xff\xd8" + b"\x00" * 50, b"RIFF\x00\x00\x00\x00WEBPVP8 "):
        assert image_size(junk) is None


# ---------------------------------------------------------------- item 8: huge images

def _style_dataset(root, rng, huge_name="huge.png"):
    """A dataset whose style and smooth folders hold 3 good images and the 1.2 MB 20000² PNG."""
    for sub in ("train_photo", "Big/style", "Big/smooth", "val"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (5, 5), 2)
        for sub in ("train_photo", "Big/style", "val"):
            cv2.imwrite(str(root / sub / f"{i}.jpg"), img)
    big = black_png(20000, 20000)
    (root / "Big" / "style" / huge_name).write_bytes(big)
    return root / "Big" / "style" / huge_name


def test_huge_png_is_refused_from_its_header_in_data_prep(tmp_path, caplog):
    huge = _style_dataset(tmp_path, np.random.default_rng(0))
    rss = _max_rss_mb()
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        res = data_prep.prepare(source="existing", dataset_dir=str(tmp_path), img_size=32, progress=False,
                                workers=1)
    # Decoding it once would need 1.2 GB (and smoothing reads it twice): the high-water mark says no.
    assert _max_rss_mb() - rss < 300
    assert sorted(os.listdir(tmp_path / "Big" / "smooth")) == ["0.jpg", "1.jpg", "2.jpg"]
    lines = [m for m in caplog.messages if m.startswith(str(huge) + ":")]
    assert lines and all("20000×20000 pixels" in m and "400 MP" in m for m in lines), caplog.messages
    assert any(p == str(huge) and "too large to decode" in r for p, r in res.bad)


def test_image_cap_is_a_named_constant_applied_to_every_format(tmp_path, monkeypatch):
    assert report.MAX_IMAGE_PIXELS == 8192 * 8192
    monkeypatch.setattr(report, "MAX_IMAGE_PIXELS", 100 * 100)
    img = np.full((100, 101, 3), 128, np.uint8)
    for ext in (".jpg", ".png", ".bmp"):
        cv2.imwrite(str(tmp_path / f"over{ext}"), img)  # 10,100 pixels: one row too many
        cv2.imwrite(str(tmp_path / f"at{ext}"), img[:, :100])
        assert "too large to decode: 101×100 pixels" in report.sniff(str(tmp_path / f"over{ext}")).problem
        assert report.sniff(str(tmp_path / f"at{ext}")).ok, ext


def test_training_pipeline_skips_huge_png_at_build_time_with_one_warning(tmp_path, caplog):
    from anime_gan.training import data

    huge = _style_dataset(tmp_path, np.random.default_rng(1))
    for i in range(3):
        os.link(tmp_path / "Big" / "style" / f"{i}.jpg", tmp_path / "Big" / "smooth" / f"{i}.jpg")
    (tmp_path / "Big" / "smooth" / "huge.png").write_bytes(huge.read_bytes())
    rss = _max_rss_mb()
    with caplog.at_level(logging.WARNING):
        ds, steps, rep = data.make_train_dataset(str(tmp_path), "Big", batch_size=1, img_size=32, shuffle=False)
        build_warnings = [m for m in caplog.messages if "huge.png" in m]
        batches = list(ds.take(7).as_numpy_iterator())  # more than two epochs of the style stream
    assert len(batches) == 7 and steps == 3
    # At build time: one line per file naming it and its size; none while iterating.
    assert build_warnings == [f"{huge}: skipped (too large to decode: 20000×20000 pixels = 400 MP, above the "
                              "67 MP limit; shrink it, e.g. to 4096 pixels on its longer side)",
                              f"{tmp_path / 'Big' / 'smooth' / 'huge.png'}: skipped (too large to decode: "
                              "20000×20000 pixels = 400 MP, above the 67 MP limit; shrink it, e.g. to 4096 "
                              "pixels on its longer side)"]
    assert len([m for m in caplog.messages if "huge.png" in m]) == 2
    assert rep.anime.count == 3 and [p for p, _ in rep.anime.bad] == [str(huge)]
    assert _max_rss_mb() - rss < 500  # decoding it (as before) peaked at 6.3 GB


# ---------------------------------------------------------------- item 6: zip bombs and duplicates

def _prepared_demo_like(root):
    """An already prepared folder that a refused archive must leave untouched (a demo manifest too)."""
    (root / "train_photo").mkdir(parents=True)
    cv2.imwrite(str(root / "train_photo" / "0000.jpg"), np.full((40, 40, 3), 90, np.uint8))
    (root / ".demo_manifest.json").write_text(json.dumps({"files": ["train_photo/0000.jpg"]}))
    return tree_digests(root)


def _bomb_zip(path, mb=50):
    """The official layout plus one member of `mb` MB of zeros (deflated ~1000:1)."""
    with zipfile.ZipFile(io.BytesIO(official_zip())) as good, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in good.infolist():
            zf.writestr(info.filename, good.read(info))
        zf.writestr("dataset/train_photo/zzz_bomb.jpg", bytes(mb << 20))
    return path


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = _bomb_zip(tmp_path / "bomb.zip")
    assert os.path.getsize(bomb) < 200_000
    ds = tmp_path / "ds"
    before = _prepared_demo_like(ds)
    with pytest.raises(report.DataError) as e:
        data_prep.prepare(source=str(bomb), dataset_dir=str(ds), progress=False)
    msg = str(e.value)
    assert "'dataset/train_photo/zzz_bomb.jpg' that expands from" in msg and "to 52.4 MB" in msg
    assert "nothing was unpacked" in msg and msg.count(". ") == 0
    assert tree_digests(ds) == before  # not one member written, the demo set not removed
    out = tmp_path / "fresh"
    with pytest.raises(report.DataError, match="above the 200:1 limit"):
        download.safe_extract(str(bomb), str(out), progress=False)
    assert not out.exists()
    # Downloaded: refused as soon as the transfer ends, the archive removed, not retried.
    with _server(bomb.read_bytes()) as server:
        with pytest.raises(report.DataError, match="zzz_bomb.jpg' that expands from"):
            data_prep.prepare(source=server.url_of("dataset.zip"), dataset_dir=str(ds), progress=False, backoff=0.0)
    assert server.ranges == [None] and tree_digests(ds) == before


def test_archive_total_and_free_space_caps(tmp_path, monkeypatch):
    z = tmp_path / "ok.zip"
    z.write_bytes(official_zip())
    with zipfile.ZipFile(z) as zf:
        total = sum(i.file_size for i in zf.infolist())
        count = len(zf.infolist())
    monkeypatch.setattr(download, "MAX_UNPACKED_BYTES", total - 1)
    with pytest.raises(report.DataError, match=r"would expand to .*above the limit of"):
        download.safe_extract(str(z), str(tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(download, "MAX_UNPACKED_BYTES", total)
    monkeypatch.setattr(download, "free_bytes", lambda path: total - 1)
    with pytest.raises(report.DataError, match=r"but only .* are free under"):
        download.safe_extract(str(z), str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(download, "free_bytes", lambda path: total)
    assert len(download.safe_extract(str(z), str(tmp_path / "c"), progress=False)) == count


def test_duplicate_member_names_keep_both_loudly(tmp_path, caplog):
    rng = np.random.default_rng(3)
    first, second = (cv2.imencode(".jpg", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))[1].tobytes()
                     for _ in range(2))
    z = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's own "Duplicate name" warning
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("dataset/train_photo/a.jpg", first)
            zf.writestr("dataset/train_photo/a.jpg", second)  # other contents
            zf.writestr("dataset/train_photo/a.dup2.jpg", first)  # the first free name is then dup3
            zf.writestr("dataset/train_photo/b.jpg", first)
            zf.writestr("dataset/train_photo/b.jpg", first)  # same contents
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        written = download.safe_extract(str(z), str(out), progress=False)
    photos = out / "train_photo"
    assert sorted(os.listdir(photos)) == ["a.dup2.jpg", "a.dup3.jpg", "a.jpg", "b.jpg"]
    assert (photos / "a.jpg").read_bytes() == first and (photos / "a.dup3.jpg").read_bytes() == second
    assert len(written) == 4
    assert any("'dataset/train_photo/a.jpg' more than once with different contents; kept both, the later one as "
               "train_photo/a.dup3.jpg" in m for m in caplog.messages), caplog.messages
    assert any("'dataset/train_photo/b.jpg' more than once with the same contents; unpacked it once" in m
               for m in caplog.messages)


# ---------------------------------------------------------------- item 7: incomplete downloads

def _server(payload, length=True, cut=0):
    """dataset.zip on 127.0.0.1 without Range support; `length`: send Content-Length; `cut`: how many of
    the first GETs stop halfway. Every response ends with the connection shut down."""
    return LocalServer({"dataset.zip": payload}, ranges=False, length=length, cut=cut, hang_up=True)


def _unpacked_matches(ds, payload):
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        for info in zf.infolist():
            rel = info.filename[len("dataset/"):]
            assert (ds / rel).read_bytes() == zf.read(info), rel


def test_download_without_length_cut_short_is_downloaded_again(tmp_path, caplog):
    payload = official_zip()
    with _server(payload, length=False, cut=1) as server, caplog.at_level(logging.WARNING, logger="data_prep"):
        download.fetch(server.url_of("dataset.zip"), str(tmp_path / "ds"), backoff=0.0, progress=False)
    assert server.ranges == [None, None]  # the cut transfer was noticed and fetched again whole
    assert any("not a complete zip archive" in m for m in caplog.messages), caplog.messages
    _unpacked_matches(tmp_path / "ds", payload)
    assert not (tmp_path / "ds" / "dataset.zip").exists()


def test_incomplete_archive_left_by_an_earlier_run_is_downloaded_again(tmp_path, caplog):
    payload = official_zip()
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.zip").write_bytes(payload[:len(payload) // 2])  # what the old code accepted
    with _server(payload) as server, caplog.at_level(logging.WARNING, logger="data_prep"):
        data_prep.prepare(source=server.url_of("dataset.zip"), dataset_dir=str(ds), img_size=32, backoff=0.0,
                          progress=False)
    assert server.ranges == [None]
    assert any(m.startswith(f"{ds / 'dataset.zip'} from an earlier run is not a complete zip archive")
               for m in caplog.messages), caplog.messages
    _unpacked_matches(ds, payload)


def test_damaged_archive_is_retried_then_refused_and_removed(tmp_path):
    payload = bytearray(official_zip())
    with zipfile.ZipFile(io.BytesIO(bytes(payload))) as zf:
        info = zf.getinfo("dataset/val/0.jpg")
    # Flip a byte inside that member's stored data: the zip stays readable, its CRC does not match.
    name_len, extra_len = struct.unpack("<HH", payload[info.header_offset + 26:info.header_offset + 30])
    payload[info.header_offset + 30 + name_len + extra_len + 100] ^= 0xFF
    ds = tmp_path / "ds"
    with _server(bytes(payload)) as server:
        url = server.url_of("dataset.zip")
        with pytest.raises(report.DataError) as e:
            download.fetch(url, str(ds), retries=1, backoff=0.0, progress=False)
    assert len(server.requests) == 2
    assert str(e.value) == (f"Download of {url} failed after 2 attempts (the downloaded file is damaged "
                            "(member 'dataset/val/0.jpg' fails its CRC check)); run again or pass a local path "
                            "to --source.")
    assert os.listdir(ds) == []
    # A damaged local copy is refused before anything is written.
    (tmp_path / "bad.zip").write_bytes(bytes(payload))
    before = _prepared_demo_like(tmp_path / "ds2")
    with pytest.raises(report.DataError, match=r"bad.zip is damaged \(member 'dataset/val/0.jpg' fails its CRC "
                                               r"check\); nothing was unpacked"):
        data_prep.prepare(source=str(tmp_path / "bad.zip"), dataset_dir=str(tmp_path / "ds2"), progress=False)
    assert tree_digests(tmp_path / "ds2") == before


# ---------------------------------------------------------------- item 9: symlinks, a file as the folder

def test_dangling_symlinks_and_loops_are_reported(tmp_path, caplog):
    from anime_gan.training import data

    rng = np.random.default_rng(4)
    for sub in ("train_photo", "S/style", "S/smooth", "val"):
        (tmp_path / sub).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / sub / f"{i}.jpg"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    style = tmp_path / "S" / "style"
    os.symlink(tmp_path / "nowhere.jpg", style / "gone.jpg")
    os.symlink(style / "loop_b.jpg", style / "loop_a.jpg")
    os.symlink(style / "loop_a.jpg", style / "loop_b.jpg")
    os.symlink(style / "0.jpg", style / "fine.jpg")  # a working link is an image like any other
    (tmp_path / "Gone").mkdir()
    os.symlink(tmp_path / "unmounted", tmp_path / "Gone" / "style")  # a style folder on a missing disk
    expected = {str(style / "gone.jpg"): f"dangling symbolic link (-> {tmp_path / 'nowhere.jpg'}, which does "
                                         "not exist); fix or remove the link",
                str(style / "loop_a.jpg"): f"symbolic link loop (-> {style / 'loop_b.jpg'}); fix or remove the link",
                str(style / "loop_b.jpg"): f"symbolic link loop (-> {style / 'loop_a.jpg'}); fix or remove the link"}
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        res = data_prep.prepare(source="existing", dataset_dir=str(tmp_path), img_size=32, progress=False)
    style_report = next(r for r in res.reports if r.folder == str(style))
    assert dict(style_report.bad) == expected and style_report.count == 3
    for path, reason in expected.items():
        assert f"{path}: skipped ({reason})" in caplog.messages
    assert f"{tmp_path / 'Gone' / 'style'}: not a style folder (dangling symbolic link (-> " \
           f"{tmp_path / 'unmounted'}, which does not exist); fix or remove the link)" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, _, rep = data.make_train_dataset(str(tmp_path), "S", batch_size=1, img_size=32)
    assert dict(rep.anime.bad) == expected and rep.anime.count == 3
    assert sum(m.startswith(str(style / "loop_")) for m in caplog.messages) == 2


def test_dataset_dir_that_is_a_file_or_a_broken_link_is_one_sentence(tmp_path):
    from anime_gan.training import data
    from data_prep import demo

    f = tmp_path / "dataset"
    f.write_text("not a folder")
    with pytest.raises(report.DataError) as e:
        data.make_train_dataset(str(f), "Hayao", batch_size=1)
    assert str(e.value) == f"--dataset_dir {f} is a file, not a folder; point --dataset_dir at a folder."
    for source in ("demo", "existing", str(f)):
        with pytest.raises(report.DataError) as e:
            data_prep.prepare(source=source, dataset_dir=str(f), progress=False)
        assert str(e.value) == f"--out {f} is a file, not a folder; point --out at a folder."
    with pytest.raises(report.DataError, match=f"^Folder {f} is a file, not a folder; pass the path of a folder.$"):
        demo.ensure(str(f), progress=False)  # what `anime_gan.train --dataset=Demo` calls first
    link = tmp_path / "link"
    os.symlink(tmp_path / "moved", link)
    with pytest.raises(report.DataError) as e:
        data.make_train_dataset(str(link), "Hayao", batch_size=1)
    assert str(e.value) == (f"--dataset_dir {link} is a dangling symbolic link (-> {tmp_path / 'moved'}, which "
                            "does not exist); fix the link or point --dataset_dir at a folder.")
    r = subprocess.run([sys.executable, "-m", "data_prep", f"--out={f}", "--progress=false"], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert [l for l in r.stderr.splitlines() if l.strip()] == [
        f"error: --out {f} is a file, not a folder; point --out at a folder."]
