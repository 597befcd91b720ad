"""Fetching the official dataset.zip: download with resume and retry, safe unpacking, layout check.

A server that cannot be reached at all (a host name that does not resolve, a refused connection: the
machine is offline or the URL is wrong) ends the download at once (`Unreachable`); a transfer that
broke (a reset connection, a short read, HTTP 5xx) is retried with backoff.

Nothing is trusted: a transfer that breaks resumes from the bytes already on disk (HTTP Range), the
finished file must have the size the server announced (and the SHA-256 if one is given) and be a
complete zip (central directory present, every member's CRC right: `verify_archive`), or it is
downloaded again; an archive already on disk from an earlier run is verified the same way before it is
used. Before anything is written, every member is checked: none may land outside the output folder
(absolute paths, `..`, symlinks), and the archive may not expand beyond MAX_UNPACKED_BYTES, the free
disk space, or MAX_RATIO per member (a zip bomb). Members with the same name are all kept, loudly.
"""
from __future__ import annotations

import errno
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
import urllib.parse
import urllib.request
import zipfile
import zlib

from data_prep import report

log = logging.getLogger(__name__)

# The official releases live on GitHub; --mirror replaces this prefix (a mirror serves the same paths).
GITHUB = "https://github.com"
# The official release of the training set (docs/original.md, "Data").
DATASET_URL = f"{GITHUB}/TachibanaYoshino/AnimeGAN/releases/download/dataset-1/dataset.zip"
CHUNK = 1 << 20
# The official release (docs/original.md, "Data"): 6,656 training photos.
OFFICIAL_COUNTS = {"train_photo": 6656}
OFFICIAL_STYLES = ("Hayao", "Paprika", "Shinkai")
# What an archive may expand to, read from its central directory before anything is unpacked. The
# official set is about 20,000 images of ~256² (well under 2 GB); 16 GiB leaves room for a user's
# larger set while stopping a bomb. Images are already compressed (JPEG, PNG: ratio ~1), and even a
# flat uncompressed BMP stays far below 200:1, while deflate reaches ~1000:1 on zeros (the 1.5 MB zip
# with a 1 GiB member of issue 12). Members under RATIO_MIN_BYTES are too small to matter.
MAX_UNPACKED_BYTES = 16 << 30
MAX_RATIO = 200
RATIO_MIN_BYTES = 1 << 20
TEST_FOLDERS = ("HR_photo", "real", "test_photo", "test_photo256")

_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
              TimeoutError, OSError)


class _Broken(Exception):
    """The transfer stopped before the announced size."""


class Unreachable(report.DataError):
    """The server of `url` cannot be reached at all (`reason`: its host name does not resolve, it
    refused the connection, or there is no network), so `download` stops at once: retrying cannot
    help. `host`, `reason` and `part` (the partial file kept for a resume, or None) let a caller
    write its own sentence; the message names data_prep's --source."""

    def __init__(self, url: str, reason: str, part: str | None = None):
        self.url, self.reason, self.part = url, reason, part
        self.host = urllib.parse.urlsplit(url).netloc or url
        resume = f"run again to resume from {part} once it can" if part else "run again once it can"
        super().__init__(f"Cannot reach {self.host} ({reason}), so {url} was not downloaded and not retried; "
                         f"check the network and {resume}, or pass a local path to --source.")


def unreachable_reason(error: BaseException) -> str | None:
    """Why a request's server cannot be reached at all, in a few words, or None when the failure may
    pass (a timeout, a reset or cut connection, an HTTP error: those are retried). Only a failure to
    connect counts: urllib raises it as a URLError around the socket error."""
    if not isinstance(error, urllib.error.URLError) or isinstance(error, urllib.error.HTTPError):
        return None
    reason = error.reason
    if isinstance(reason, socket.gaierror):
        return f"its name does not resolve: {reason.strerror or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "it refused the connection"
    if isinstance(reason, OSError) and reason.errno == errno.ENETUNREACH:
        return "the network is unreachable"
    return None


def is_url(source: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I) is not None


def mirrored(url: str, mirror: str | None = None) -> str:
    """`url` with its https://github.com prefix replaced by `mirror` (unchanged without one).

    DataError (one sentence) when `mirror` is not a URL.
    """
    if not mirror:
        return url
    if not is_url(mirror):
        raise report.DataError(f"--mirror {mirror!r} is not a URL; pass one such as https://example.org/github "
                               f"(it replaces {GITHUB} in the download URL).")
    return mirror.rstrip("/") + url[len(GITHUB):] if url.startswith(GITHUB + "/") else url


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
             backoff: float = 2.0, progress: bool = True, verify=None) -> str:
    """Download `url` to `dest` (via `dest + '.part'`), resuming and retrying broken transfers.

    verify(path) -> reason or None: checks a finished transfer (e.g. `verify_archive`); a file it
    rejects is removed and downloaded again from the start, within the same `retries` (this is what
    catches a transfer cut short when the server announced no Content-Length). A DataError it raises
    ends the download (the file is removed).

    Returns `dest`. Raises DataError (one sentence) when every attempt failed, or when the size or the
    SHA-256 does not match (the bad file is then removed so the next run starts clean); Unreachable
    (a DataError) at once, without retrying, when the server cannot be reached at all
    (`unreachable_reason`: a host name that does not resolve, a refused connection, no network).
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
                if total is not None and os.path.getsize(part) != total:
                    break  # larger than announced: refused below
                problem = _verified(verify, part)
                if problem is None:
                    break
                os.remove(part)  # incomplete or damaged: start again from the first byte
                total = None
                raise _Broken(f"the downloaded file is {problem}")
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # range beyond the end: what we have may be complete
                    total = _total_from(e, 0) if e.headers.get("Content-Range") else None
                    if total is None or have == total:
                        problem = _verified(verify, part)
                        if problem is None:
                            break
                        last_error = f"the downloaded file is {problem}"
                    else:
                        last_error = "stale partial file"
                    os.remove(part)  # larger than the file, or damaged: restart
                    total = None
                elif 400 <= e.code < 500 and e.code not in (408, 429):
                    raise report.DataError(f"Download of {url} failed with HTTP {e.code} {e.reason}; "
                                           "check the URL or pass a local path to --source.") from None
                else:
                    last_error = f"HTTP {e.code} {e.reason}"
            except (_Broken, *_TRANSIENT) as e:
                unreachable = unreachable_reason(e)
                if unreachable:  # offline, a wrong host or nothing listening: no retry can help
                    raise Unreachable(url, unreachable, part if os.path.exists(part) else None) from None
                last_error = str(e) or type(e).__name__
            if attempt < retries:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                wait = backoff * (2 ** attempt)
                log.warning("download of %s broke at %d bytes (%s); resuming in %.1f s (retry %d of %d)",
                            url, have, last_error, wait, attempt + 1, retries)
                time.sleep(wait)
        else:
            again = f"run again to resume from {part}" if os.path.exists(part) else "run again"
            raise report.DataError(f"Download of {url} failed after {retries + 1} attempts ({last_error}); "
                                   f"{again} or pass a local path to --source.")
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


def _verified(verify, part: str) -> str | None:
    """verify(part), removing `part` when it raises DataError (a refusal, not a broken transfer)."""
    if verify is None:
        return None
    try:
        return verify(part)
    except report.DataError:
        os.remove(part)
        raise


def unsafe_path(name: str, out_root: str) -> str | None:
    """Why the archive member path `name` may not be unpacked under the folder `out_root` (a real
    path), or None: an absolute path, a `..` part, or a path that resolves outside `out_root`."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "path with '..'"
    target = os.path.realpath(os.path.join(out_root, name))
    if os.path.commonpath([target, out_root]) != out_root:
        return "path outside the output folder"
    return None


def _unsafe_reason(info: zipfile.ZipInfo, out_root: str) -> str | None:
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return unsafe_path(info.filename, out_root)


def _layout_prefix(names: list[str]) -> str:
    """The folder inside the archive that holds `train_photo/` ('' when it is at the top)."""
    for n in names:
        parts = n.split("/")
        if "train_photo" in parts[:-1]:
            return "/".join(parts[:parts.index("train_photo")]) + ("/" if parts.index("train_photo") else "")
    return ""


def human_bytes(n: float) -> str:
    """A byte count for a message: "512 bytes", "1.5 MB" (powers of 1000)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def free_bytes(path: str) -> int:
    """Free space on the file system that holds `path` (or would, once created)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return shutil.disk_usage(path).free


def check_expansion(zf: zipfile.ZipFile, zip_path: str, out_dir: str, max_total: int | None = None,
                    max_ratio: float | None = None) -> int:
    """Refuses (DataError, one sentence) an archive that would expand too far; returns its total size.

    Read from the central directory alone, before anything is unpacked: the members' sizes together
    may not exceed `max_total` (default MAX_UNPACKED_BYTES) nor the free disk space under `out_dir`,
    and no member above RATIO_MIN_BYTES may expand more than `max_ratio` (default MAX_RATIO) times.
    zipfile stops every member at its declared size (a lying header then fails its CRC), so these
    declared sizes bound what unpacking writes.
    """
    max_total = MAX_UNPACKED_BYTES if max_total is None else max_total
    max_ratio = MAX_RATIO if max_ratio is None else max_ratio
    fix = "nothing was unpacked; use the official dataset.zip, or unpack the archive yourself if you trust it"
    total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise report.DataError(
                f"{zip_path} holds the member {info.filename!r} that expands from {human_bytes(info.compress_size)} "
                f"to {human_bytes(info.file_size)} ({info.file_size / max(info.compress_size, 1):.0f}:1, above the "
                f"{max_ratio:.0f}:1 limit for images, like a zip bomb); {fix}.")
    if total > max_total:
        raise report.DataError(f"{zip_path} would expand to {human_bytes(total)}, above the limit of "
                               f"{human_bytes(max_total)} (download.MAX_UNPACKED_BYTES); {fix}.")
    free = free_bytes(os.path.abspath(out_dir))
    if total > free:
        raise report.DataError(f"{zip_path} would expand to {human_bytes(total)} but only {human_bytes(free)} are free "
                               f"under {out_dir}; nothing was unpacked, free some space or pass another --out.")
    return total


def verify_archive(path: str, out_dir: str | None = None) -> str | None:
    """Why the zip at `path` is incomplete or damaged (None: it is whole), without unpacking it.

    Checks the central directory (missing when a transfer was cut short) and every member's CRC
    (`ZipFile.testzip`). With `out_dir`, `check_expansion` runs first, so a zip bomb is refused
    (DataError) before its members are read.
    """
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        return f"not a complete zip archive ({e}; cut short?)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    with zf:
        if out_dir is not None:
            check_expansion(zf, path, out_dir)
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
            return f"damaged ({e})"
        if bad is not None:
            return f"damaged (member {bad!r} fails its CRC check)"
    return None


def _plan_duplicates(zip_path: str, members: list) -> list:
    """Gives every file member its own target: members with one name are all kept, loudly.

    Identical copies (same CRC and size) are unpacked once; a copy with other contents is unpacked as
    NAME.dupN.EXT beside the first, so neither overwrites the other.
    """
    taken = {os.path.normpath(rel) for info, rel in members}
    first: dict[str, zipfile.ZipInfo] = {}
    plan = []
    for info, rel in members:
        if info.is_dir():
            plan.append((info, rel))
            continue
        key = os.path.normpath(rel)
        if key not in first:
            first[key] = info
            plan.append((info, rel))
            continue
        orig = first[key]
        if (orig.CRC, orig.file_size) == (info.CRC, info.file_size):
            log.warning("%s holds %r more than once with the same contents; unpacked it once", zip_path,
                        info.filename)
            continue
        stem, ext = os.path.splitext(rel)
        k = 2
        while os.path.normpath(f"{stem}.dup{k}{ext}") in taken:
            k += 1
        new = f"{stem}.dup{k}{ext}"
        taken.add(os.path.normpath(new))
        log.warning("%s holds %r more than once with different contents; kept both, the later one as %s",
                    zip_path, info.filename, new)
        plan.append((info, new))
    return plan


def safe_extract(zip_path: str, out_dir: str, progress: bool = True, max_total: int | None = None,
                 max_ratio: float | None = None, before_write=None) -> list[str]:
    """Unpack the dataset archive into `out_dir` and return the written paths.

    Every member is checked before anything is written: an unsafe one (absolute, `..`, symlink), or
    an archive that would expand too far (`check_expansion`: a zip bomb), refuses the whole archive
    with DataError, leaving `out_dir` as it was. Members sharing a name are all kept (see
    `_plan_duplicates`). If the layout sits in a top folder of the archive (e.g.
    `dataset/train_photo/...`), that folder is stripped so `out_dir/train_photo` results.
    `before_write()` runs once every check has passed, before the first write.
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
        check_expansion(zf, zip_path, out_dir, max_total, max_ratio)
        names = [i.filename.replace("\\", "/") for i in infos]
        prefix = _layout_prefix(names)
        if not any(n.startswith(prefix + "train_photo/") for n in names):
            raise report.DataError(f"{zip_path} holds no train_photo/ folder, so it is not the official "
                                   "dataset.zip layout; check --source.")
        written = []
        members = [(i, n[len(prefix):]) for i, n in zip(infos, names) if n.startswith(prefix) and n[len(prefix):]]
        members = _plan_duplicates(zip_path, members)
        if before_write is not None:
            before_write()
        it = members
        if progress:
            from tqdm import tqdm
            it = tqdm(members, desc=f"unpacking {os.path.basename(zip_path)}", unit="file")
        for info, rel in it:
            target = os.path.join(out_root, rel)
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            # the CRC is checked as the member is read
            write_member(lambda: zf.open(info), target, zip_path, info.filename, (zipfile.BadZipFile,))
            written.append(target)
    return written


def write_member(open_member, target: str, archive: str, name: str, errors: tuple = ()) -> None:
    """Copies the archive member that open_member() opens to target through target + ".tmp" (no half
    file is ever left under its name); a read error (OSError, EOFError, zlib.error or one of errors)
    is one DataError naming the archive and the member."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with open_member() as src, open(target + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except (OSError, EOFError, zlib.error, *errors) as e:
        if os.path.exists(target + ".tmp"):
            os.remove(target + ".tmp")
        raise report.DataError(f"{archive} is damaged at {name!r} ({e}); delete it and download again.") from None
    os.replace(target + ".tmp", target)


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
          keep_archive: bool = False, progress: bool = True, backoff: float = 2.0,
          before_write=None, verify=None, unpack=None) -> list[str]:
    """Download (if `source` is a URL) and unpack the dataset archive into `dataset_dir`.

    Returns the unpacked paths. The archive is verified first (`verify(path)` -> reason or None,
    default `verify_archive`): a downloaded one that is incomplete or damaged is downloaded again, and
    so is one left on disk by an earlier run; a local `source` that fails is refused.
    `unpack(archive, progress, before_write)` (default `safe_extract` into `dataset_dir`) writes;
    `before_write()` runs after every check passed, before the first write into `dataset_dir`. A
    downloaded archive is kept only with `keep_archive` (a local `source` file is never removed).
    """
    report.not_a_folder(dataset_dir, "--out")
    verify = verify or (lambda path: verify_archive(path, dataset_dir))
    unpack = unpack or (lambda path, bar, before: safe_extract(path, dataset_dir, bar, before_write=before))
    if is_url(source):
        os.makedirs(dataset_dir, exist_ok=True)  # the archive is downloaded into it
        archive = os.path.join(dataset_dir, os.path.basename(source.split("?")[0]) or "dataset.zip")
        if os.path.exists(archive):
            problem = verify(archive)
            if problem is None and sha256 and sha256_of(archive).lower() != sha256.lower():
                problem = f"not the file of SHA-256 {sha256}"
            if problem:
                log.warning("%s from an earlier run is %s; downloading it again", archive, problem)
                os.remove(archive)
        if not os.path.exists(archive):
            download(source, archive, retries=retries, sha256=sha256, progress=progress, backoff=backoff,
                     verify=verify)
        downloaded = True
    else:
        if not os.path.isfile(source):
            raise report.DataError(f"--source {source} is neither one of the names --help lists, a URL nor an "
                                   "existing archive file; pass the path of dataset.zip (or of a v2 style "
                                   "archive STYLE.tar.gz) or its URL.")
        if sha256 and sha256_of(source).lower() != sha256.lower():
            raise report.DataError(f"The SHA-256 of {source} does not match {sha256}; check the file and --sha256.")
        problem = verify(source)
        if problem:
            raise report.DataError(f"{source} is {problem}; nothing was unpacked, copy or download it again.")
        archive, downloaded = source, False
    written = unpack(archive, progress, before_write)
    if downloaded and not keep_archive:
        os.remove(archive)
    return written
