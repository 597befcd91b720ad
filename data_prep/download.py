"""Fetching the official dataset.zip: download with resume and retry, safe unpacking, layout check.

Nothing is trusted: a transfer that breaks resumes from the bytes already on disk (HTTP Range), the
finished file must have the size the server announced (and the SHA-256 if one is given), and no member
of the archive may land outside the output folder (absolute paths, `..`, symlinks are refused before
anything is written).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import stat
import time
import urllib.error
import urllib.request
import zipfile

from data_prep import report

log = logging.getLogger(__name__)

# The official release of the training set (ORIGINAL.md, "Data").
DATASET_URL = "https://github.com/TachibanaYoshino/AnimeGAN/releases/download/dataset-1/dataset.zip"
CHUNK = 1 << 20
# The official release (ORIGINAL.md, "Data"): 6,656 training photos.
OFFICIAL_COUNTS = {"train_photo": 6656}
OFFICIAL_STYLES = ("Hayao", "Paprika", "Shinkai")
TEST_FOLDERS = ("HR_photo", "real", "test_photo", "test_photo256")

_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
              TimeoutError, OSError)


class _Broken(Exception):
    """The transfer stopped before the announced size."""


def is_url(source: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I) is not None


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _total_from(resp, offset: int) -> int | None:
    cr = resp.headers.get("Content-Range")  # "bytes START-END/TOTAL"
    if cr:
        m = re.match(r"bytes\s+\d+-\d+/(\d+)", cr)
        return int(m.group(1)) if m else None
    cl = resp.headers.get("Content-Length")
    return int(cl) + offset if cl is not None else None


def download(url: str, dest: str, retries: int = 5, timeout: float = 60.0, sha256: str | None = None,
             backoff: float = 2.0, progress: bool = True) -> str:
    """Download `url` to `dest` (via `dest + '.part'`), resuming and retrying broken transfers.

    Returns `dest`. Raises DataError (one sentence) when every attempt failed, or when the size or the
    SHA-256 does not match (the bad file is then removed so the next run starts clean).
    """
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    bar = None
    total = None
    last_error = ""
    try:
        for attempt in range(retries + 1):
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if total is not None and have == total:
                break
            req = urllib.request.Request(url, headers={"User-Agent": "anime-gan-tf2 data_prep"})
            if have:
                req.add_header("Range", f"bytes={have}-")
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    status = getattr(resp, "status", 200)
                    if have and status != 206:  # the server ignored the range: start over
                        have = 0
                    total = _total_from(resp, have)
                    if progress and bar is None:
                        from tqdm import tqdm
                        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                   desc=os.path.basename(dest))
                    elif bar is not None:
                        bar.reset(total=total)
                        bar.update(have)
                    with open(part, "ab" if have else "wb") as out:
                        while True:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            if bar is not None:
                                bar.update(len(block))
                    got = os.path.getsize(part)
                    if total is not None and got < total:
                        raise _Broken(f"connection closed after {got} of {total} bytes")
                    break
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # range beyond the end: what we have may be complete
                    total = _total_from(e, 0) if e.headers.get("Content-Range") else None
                    if total is None or have == total:
                        break
                    os.remove(part)  # larger than the file: corrupt, restart
                    last_error = "stale partial file"
                elif 400 <= e.code < 500 and e.code not in (408, 429):
                    raise report.DataError(f"Download of {url} failed with HTTP {e.code} {e.reason}; "
                                           "check the URL or pass a local path to --source.") from None
                else:
                    last_error = f"HTTP {e.code} {e.reason}"
            except (_Broken, *_TRANSIENT) as e:
                last_error = str(e) or type(e).__name__
            if attempt < retries:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                wait = backoff * (2 ** attempt)
                log.warning("download of %s broke at %d bytes (%s); resuming in %.1f s (retry %d of %d)",
                            url, have, last_error, wait, attempt + 1, retries)
                time.sleep(wait)
        else:
            raise report.DataError(f"Download of {url} failed after {retries + 1} attempts ({last_error}); "
                                   f"run again to resume from {part} or pass a local path to --source.")
    finally:
        if bar is not None:
            bar.close()
    got = os.path.getsize(part)
    if total is not None and got != total:
        os.remove(part)
        raise report.DataError(f"Downloaded {got} bytes of {url} but the server announced {total}; "
                               "the partial file was removed, run again.")
    if sha256 and sha256_of(part).lower() != sha256.lower():
        os.remove(part)
        raise report.DataError(f"The SHA-256 of the file downloaded from {url} does not match {sha256}; "
                               "the file was removed, check the URL and --sha256.")
    os.replace(part, dest)
    return dest


def _unsafe_reason(info: zipfile.ZipInfo, out_root: str) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "path with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    target = os.path.realpath(os.path.join(out_root, name))
    if os.path.commonpath([target, out_root]) != out_root:
        return "path outside the output folder"
    return None


def _layout_prefix(names: list[str]) -> str:
    """The folder inside the archive that holds `train_photo/` ('' when it is at the top)."""
    for n in names:
        parts = n.split("/")
        if "train_photo" in parts[:-1]:
            return "/".join(parts[:parts.index("train_photo")]) + ("/" if parts.index("train_photo") else "")
    return ""


def safe_extract(zip_path: str, out_dir: str, progress: bool = True) -> list[str]:
    """Unpack the dataset archive into `out_dir` and return the written paths.

    Every member is checked before anything is written: an unsafe one (absolute, `..`, symlink)
    refuses the whole archive with DataError. If the layout sits in a top folder of the archive
    (e.g. `dataset/train_photo/...`), that folder is stripped so `out_dir/train_photo` results.
    """
    out_root = os.path.realpath(out_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise report.DataError(f"{zip_path} is not a readable zip archive ({e}); delete it and download again.") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
        for info in infos:
            reason = _unsafe_reason(info, out_root)
            if reason:
                raise report.DataError(f"{zip_path} holds the unsafe member {info.filename!r} ({reason}); "
                                       "nothing was unpacked, use the official dataset.zip.")
        names = [i.filename.replace("\\", "/") for i in infos]
        prefix = _layout_prefix(names)
        if not any(n.startswith(prefix + "train_photo/") for n in names):
            raise report.DataError(f"{zip_path} holds no train_photo/ folder, so it is not the official "
                                   "dataset.zip layout; check --source.")
        written = []
        members = [(i, n[len(prefix):]) for i, n in zip(infos, names) if n.startswith(prefix) and n[len(prefix):]]
        it = members
        if progress:
            from tqdm import tqdm
            it = tqdm(members, desc=f"unpacking {os.path.basename(zip_path)}", unit="file")
        for info, rel in it:
            target = os.path.join(out_root, rel)
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with zf.open(info) as src, open(target + ".tmp", "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)  # the CRC is checked as the member is read
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                if os.path.exists(target + ".tmp"):
                    os.remove(target + ".tmp")
                raise report.DataError(f"{zip_path} is damaged at {info.filename!r} ({e}); delete it and "
                                       "download again.") from None
            os.replace(target + ".tmp", target)
            written.append(target)
    return written


def verify_layout(dataset_dir: str, styles: list[str] | None = None,
                  expected_counts: dict[str, int] | None = None) -> list[str]:
    """Problems with the official layout under `dataset_dir` (empty list: all there).

    Checks train_photo/, val/, test/*, each style's style/ and smooth/, and, when given, the image
    count of each folder (relative path -> count).
    """
    problems = []
    styles = styles if styles is not None else report.find_styles(dataset_dir)
    if not styles:
        problems.append(f"no style folder (NAME/style/) under {dataset_dir}")
    needed = ["train_photo", "val"] + [os.path.join("test", t) for t in TEST_FOLDERS]
    needed += [os.path.join(s, sub) for s in styles for sub in ("style", "smooth")]
    for rel in needed:
        if not os.path.isdir(os.path.join(dataset_dir, rel)):
            problems.append(f"missing folder {os.path.join(dataset_dir, rel)}")
    for rel, n in (expected_counts or {}).items():
        folder = os.path.join(dataset_dir, rel)
        if os.path.isdir(folder):
            got = len(report.image_files(folder))
            if got != n:
                problems.append(f"{folder} holds {got} images, expected {n}")
    return problems


def fetch(source: str, dataset_dir: str, retries: int = 5, sha256: str | None = None,
          keep_archive: bool = False, progress: bool = True, backoff: float = 2.0) -> list[str]:
    """Download (if `source` is a URL) and unpack the dataset archive into `dataset_dir`.

    Returns the unpacked paths. A downloaded archive is kept only with `keep_archive` (a local
    `source` file is never removed).
    """
    os.makedirs(dataset_dir, exist_ok=True)
    if is_url(source):
        archive = os.path.join(dataset_dir, os.path.basename(source.split("?")[0]) or "dataset.zip")
        if not os.path.exists(archive):
            download(source, archive, retries=retries, sha256=sha256, progress=progress, backoff=backoff)
        downloaded = True
    else:
        if not os.path.isfile(source):
            raise report.DataError(f"--source {source} is neither 'demo', a URL nor an existing zip file; "
                                   "pass the path of dataset.zip or its URL.")
        if sha256 and sha256_of(source).lower() != sha256.lower():
            raise report.DataError(f"The SHA-256 of {source} does not match {sha256}; check the file and --sha256.")
        archive, downloaded = source, False
    written = safe_extract(archive, dataset_dir, progress)
    if downloaded and not keep_archive:
        os.remove(archive)
    return written
