"""The AnimeGANv2 style sets: the v2 release's STYLE.tar.gz, checked, unpacked as a style folder.

The facts (the AnimeGANv2 release `1.0`; docs/training.md, "Data"): one archive per style at
`URL` = https://github.com/TachibanaYoshino/AnimeGANv2/releases/download/1.0/{Hayao,Shinkai,Paprika}.tar.gz,
with `COUNTS` = 1,752 / 1,445 / 1,284 anime frames of 256×256 (`IMAGE_SIDE`: the v2 loader neither crops
nor resizes). An archive unpacks to STYLE/style/ (and STYLE/smooth/ when it ships the smoothed
copies); it holds no photos: those (train_photo/, val/, test/) are the v1 dataset.zip's.

Where it goes: DATASET/STYLE_v2/{style,smooth} (`folder_name`), the folder the v2 configs
(anime_gan/configs/STYLE_v2.cfg, `--dataset=STYLE_v2`) train on. Not DATASET/STYLE: the v1 dataset.zip
fills that with its own Hayao, Paprika and Shinkai sets (a separate release), and unpacking one over
the other would mix or overwrite them without a word.

Nothing is trusted, as for dataset.zip (`download`): the transfer resumes and is verified; the whole
gzip stream is read once before anything is written (its CRC and length catch a cut transfer), and
every member is checked on the way: only plain files and folders, none landing outside the output
folder (absolute paths, `..`, symbolic and hard links, devices are refused), and the stream may not
expand beyond MAX_UNPACKED_BYTES, the free disk space, or MAX_RATIO times the archive's size (a gzip
stream has no per-member sizes, so the ratio is the whole archive's).
"""
from __future__ import annotations

import gzip
import logging
import os
import tarfile
import zlib

from data_prep import download, report

log = logging.getLogger(__name__)

SOURCE = "official-v2"  # --source value that fetches the official v2 style sets named by --style
STYLES = ("Hayao", "Shinkai", "Paprika")
URL = download.GITHUB + "/TachibanaYoshino/AnimeGANv2/releases/download/1.0/{style}.tar.gz"
COUNTS = {"Hayao": 1752, "Shinkai": 1445, "Paprika": 1284}
IMAGE_SIDE = 256
FOLDER_SUFFIX = "_v2"
SUBFOLDERS = ("style", "smooth")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def is_style_archive(source: str) -> bool:
    """True when `source` (a path or URL) names a v2 style archive (.tar.gz / .tgz) rather than a zip."""
    return source.split("?")[0].lower().endswith(ARCHIVE_SUFFIXES)


def folder_name(style: str) -> str:
    """The dataset's folder of a v2 style set: Hayao -> Hayao_v2 (the v2 configs' --dataset)."""
    return style + FOLDER_SUFFIX


def config_of(style: str) -> str:
    """The training recipe of a v2 style set."""
    return f"anime_gan/configs/{style.lower()}_v2.cfg"


def check_styles(styles) -> list[str]:
    """The v2 style names in `styles` (any case) spelled as the release does; DataError otherwise."""
    by_lower = {s.lower(): s for s in STYLES}
    wrong = [s for s in styles or [] if s.lower() not in by_lower]
    if wrong or not styles:
        got = f"not {', '.join(repr(s) for s in wrong)}" if wrong else "none was given"
        raise report.DataError(f"--style must name one or more AnimeGANv2 style sets of {', '.join(STYLES)} "
                               f"(e.g. --style=Hayao), {got}.")
    return list(dict.fromkeys(by_lower[s.lower()] for s in styles))


class _Incomplete(Exception):
    """The archive ends early or fails its checksum."""


class _Counted:
    """A read-only stream that refuses (DataError, `check_size`) to give more bytes than the limits allow."""

    def __init__(self, raw, archive: str, max_total: int | None, max_ratio: float | None):
        self.raw, self.archive, self.count = raw, archive, 0
        self.max_total = max_total
        self.max_ratio = max_ratio
        self.compressed = os.path.getsize(archive)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        check_size(self.archive, self.count, self.compressed, self.max_total, self.max_ratio)
        return data


def check_size(archive: str, total: int, compressed: int, max_total: int | None = None,
               max_ratio: float | None = None) -> None:
    """DataError (one sentence) when `total` unpacked bytes from an archive of `compressed` bytes exceed
    `max_total` (default download.MAX_UNPACKED_BYTES) or `max_ratio` (default download.MAX_RATIO) : 1."""
    max_total = download.MAX_UNPACKED_BYTES if max_total is None else max_total
    max_ratio = download.MAX_RATIO if max_ratio is None else max_ratio
    fix = "nothing was unpacked; use the official archive, or unpack it yourself if you trust it"
    if total > max_total:
        raise report.DataError(f"{archive} would expand to more than {download.human_bytes(max_total)}, the "
                               f"limit (download.MAX_UNPACKED_BYTES); {fix}.")
    if total > download.RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        raise report.DataError(f"{archive} expands from {download.human_bytes(compressed)} to more than "
                               f"{download.human_bytes(total)} (above the {max_ratio:.0f}:1 limit for images, "
                               f"like a gzip bomb); {fix}.")


def _member_problem(m: tarfile.TarInfo, out_root: str) -> str | None:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if not (m.isreg() or m.isdir()):
        return "special file (device, FIFO)"
    return download.unsafe_path(m.name, out_root)


def _layout_prefix(names: list[str]) -> str | None:
    """The folder inside the archive that holds `style/` ('' at the top, None when there is none)."""
    for n in names:
        parts = n.split("/")
        if "style" in parts[:-1]:
            i = parts.index("style")
            return "/".join(parts[:i]) + ("/" if i else "")
    return None


def scan(path: str, out_dir: str, max_total: int | None = None, max_ratio: float | None = None) -> list[str]:
    """Reads the whole archive once, writing nothing, and returns its member names in order.

    DataError (one sentence) for an unsafe member, an archive that expands too far (`check_size`, the
    free space under `out_dir`) or one without a style/ folder; `_Incomplete` when the gzip stream or
    the tar inside it is cut short or damaged.
    """
    out_root = os.path.realpath(out_dir)
    names, declared, free = [], 0, download.free_bytes(out_root)
    try:
        with gzip.open(path, "rb") as gz:
            stream = _Counted(gz, path, max_total, max_ratio)
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for m in tf:  # each header is checked before the next read passes its data
                    reason = _member_problem(m, out_root)
                    if reason:
                        raise report.DataError(f"{path} holds the unsafe member {m.name!r} ({reason}); nothing "
                                               "was unpacked, use the official archive.")
                    declared += m.size if m.isreg() else 0
                    check_size(path, declared, stream.compressed, max_total, max_ratio)
                    if declared > free:
                        raise report.DataError(
                            f"{path} would expand to at least {download.human_bytes(declared)} but only "
                            f"{download.human_bytes(free)} are free under {out_dir}; nothing was unpacked, free "
                            "some space or pass another --out.")
                    names.append(m.name)
            while stream.read(download.CHUNK):  # to the end: the gzip CRC and length are checked there
                pass
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise _Incomplete(f"not a complete tar.gz archive ({e}; cut short?)") from None
    if _layout_prefix(names) is None:
        raise report.DataError(f"{path} holds no style/ folder, so it is not an AnimeGANv2 style archive "
                               "(STYLE/style/...); check --source.")
    return names


def verify(path: str, out_dir: str) -> str | None:
    """Why the archive at `path` is incomplete or damaged (None: whole); DataError when it is refused
    (`scan`). The `verify` of `download.fetch`."""
    try:
        scan(path, out_dir)
    except _Incomplete as e:
        return str(e)
    return None


def unpack(path: str, style_dir: str, progress: bool = True, before_write=None) -> list[str]:
    """Unpacks the style archive's style/ and smooth/ into `style_dir` (DATASET/STYLE_v2) and returns
    the written paths. Checks first (`scan`), writes only after; each file is written to a temporary
    name and moved into place. Members outside style/ and smooth/ are left out with one warning, and a
    name met twice keeps both (the later as NAME.dupN.EXT), loudly.
    """
    names = scan(path, style_dir)
    prefix = _layout_prefix(names)
    wanted = {n: n[len(prefix):] for n in names
              if n.startswith(prefix) and n[len(prefix):].split("/")[0] in SUBFOLDERS}
    if len(wanted) < len(names):
        log.warning("%s: %d members outside %sstyle/ and %ssmooth/ were not unpacked", path,
                    len(names) - len(wanted), prefix, prefix)
    out_root = os.path.realpath(style_dir)
    for name, rel in wanted.items():  # where it lands now, through any link already in style_dir
        reason = download.unsafe_path(rel, out_root)
        if reason:
            raise report.DataError(f"{path} holds the unsafe member {name!r} ({reason}); nothing was unpacked, "
                                   "use the official archive.")
    if before_write is not None:
        before_write()
    written, taken = [], set()
    with tarfile.open(path, "r:gz") as tf:
        members = tf if not progress else _progress(tf, len(names), f"unpacking {os.path.basename(path)}")
        for m in members:
            rel = wanted.get(m.name)
            if rel is None:
                continue
            target = os.path.join(out_root, rel)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            target = _unique(target, taken, path, m.name)
            download.write_member(lambda: tf.extractfile(m), target, path, m.name,
                                  (tarfile.TarError, gzip.BadGzipFile))
            written.append(target)
    return written


def _unique(target: str, taken: set, path: str, name: str) -> str:
    key = os.path.normpath(target)
    if key in taken:
        stem, ext = os.path.splitext(target)
        k = 2
        while os.path.normpath(f"{stem}.dup{k}{ext}") in taken:
            k += 1
        log.warning("%s holds %r more than once; kept both, the later one as %s", path, name, f"{stem}.dup{k}{ext}")
        target = f"{stem}.dup{k}{ext}"
    taken.add(os.path.normpath(target))
    return target


def _progress(it, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(it, total=total, desc=desc, unit="file")


def fetch(style: str, source: str, dataset_dir: str, retries: int = 5, sha256: str | None = None,
          keep_archive: bool = False, progress: bool = True, backoff: float = 2.0) -> list[str]:
    """Download (if `source` is a URL: `URL` or its mirror) and unpack one v2 style archive into
    DATASET/STYLE_v2; returns the written paths (see `download.fetch`: resume, verify, keep_archive)."""
    style_dir = os.path.join(dataset_dir, folder_name(style))
    report.not_a_folder(style_dir)  # e.g. a file of that name
    return download.fetch(source, dataset_dir, retries=retries, sha256=sha256, keep_archive=keep_archive,
                          progress=progress, backoff=backoff, verify=lambda p: verify(p, dataset_dir),
                          unpack=lambda p, bar, before: unpack(p, style_dir, bar, before))


def next_steps(dataset_dir: str, styles: list[str], photos: str) -> list[str]:
    """What the user runs next, as output lines; `photos` is 'v1' (train_photo/ holds the v1 photos),
    'demo' (the demo set's) or 'none'."""
    where = "" if os.path.normpath(dataset_dir) == "dataset" else f" --dataset_dir={dataset_dir}"
    lines = [f"{os.path.join(dataset_dir, folder_name(s))}: the AnimeGANv2 {s} style set (style/, smooth/) "
             f"that {config_of(s)} trains on." for s in styles]
    out = f" --out={dataset_dir}" if where else ""
    if photos != "v1":
        had = "holds only the demo set's photos" if photos == "demo" else "holds no photos yet"
        lines.append(f"{dataset_dir} {had}: a complete v2 training set also needs the v1 dataset.zip's "
                     f"train_photo/, val/ and test/, so run `make data ARGS=\"--source=official{out}\"` "
                     f"(= python -m data_prep --source=official{out}) before training.")
    lines += [f"train: python -m anime_gan.train --flagfile={config_of(s)}{where}" for s in styles]
    return lines


def layout_problems(dataset_dir: str, styles: list[str], reports: list, official: bool) -> list[str]:
    """Problems of the v2 style folders under `dataset_dir` (empty: all there): a missing style/ or
    smooth/, with `official` a count other than COUNTS, and style images that are not IMAGE_SIDE².
    `reports`: the report.FolderReport of every folder that exists."""
    by_folder = {r.folder: r for r in reports}
    problems = []
    for style in styles:
        for sub in SUBFOLDERS:
            folder = os.path.join(dataset_dir, folder_name(style), sub)
            rep = by_folder.get(folder)
            if rep is None:
                problems.append(f"missing folder {folder}")
                continue
            if sub != "style":
                continue
            if official and rep.count != COUNTS[style]:
                problems.append(f"{folder} holds {rep.count} images, expected {COUNTS[style]}")
            off = [i for i in rep.images if (i.width, i.height) != (IMAGE_SIDE, IMAGE_SIDE)]
            if off:
                problems.append(f"{folder} holds {len(off)} images that are not {IMAGE_SIDE}×{IMAGE_SIDE} (first: "
                                f"{off[0].path}, {off[0].width}×{off[0].height}); the v2 recipe expects "
                                f"{IMAGE_SIDE}², training resizes and crops the others")
    return problems
