"""Turning raw folders and archives into an AnimeGAN training set (no TensorFlow needed).

`prepare` is what `make data` / `python -m data_prep` runs: get the images (the offline demo set, the
official dataset.zip, or the AnimeGANv2 style sets: `stylesets`), edge-smooth every style folder that
needs it, and report every folder.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from data_prep import demo, download, files, report, smoothing, stylesets
from data_prep.report import DataError

__all__ = ["DataError", "PrepareResult", "prepare", "demo", "download", "files", "report", "smoothing",
           "stylesets"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareResult:
    dataset_dir: str
    smoothed: list = dataclasses.field(default_factory=list)  # smoothing.SmoothResult per style
    reports: list = dataclasses.field(default_factory=list)  # report.FolderReport per folder
    layout_problems: list = dataclasses.field(default_factory=list)
    next_steps: list = dataclasses.field(default_factory=list)  # lines: what to run next

    @property
    def bad(self) -> list[tuple[str, str]]:
        return [b for r in self.reports for b in r.bad] + [b for s in self.smoothed for b in s.bad]

    def text(self) -> str:
        lines = [s.summary() for s in self.smoothed] + [report.format_reports(self.reports)]
        lines += [f"layout: {p}" for p in self.layout_problems]
        lines += self.next_steps
        return "\n".join(l for l in lines if l)


def _remove_demo(dataset_dir: str) -> None:
    """Take a demo set out of the way before the real dataset is unpacked over it."""
    m = demo.read_manifest(dataset_dir)
    if not m:
        return
    for f in m.get("files", []):
        p = os.path.join(dataset_dir, f)
        if os.path.isfile(p):
            os.remove(p)
    os.remove(os.path.join(dataset_dir, demo.MANIFEST))
    log.warning("removed the demo set from %s before unpacking the real dataset", dataset_dir)


def prepare(source: str = "demo", dataset_dir: str = "dataset", styles: list[str] | None = None,
            smooth: str = "auto", img_size: int = 256, seed: int = 0,
            num_photos: int = demo.DEFAULT_NUM_PHOTOS, num_style: int = demo.DEFAULT_NUM_STYLE,
            strict: bool = False, workers: int | None = None, retries: int = 5, sha256: str | None = None,
            keep_archive: bool = False, progress: bool = True, backoff: float = 2.0,
            mirror: str | None = None) -> PrepareResult:
    """Build or fetch the dataset under `dataset_dir`, smooth styles, report; see `python -m data_prep --help`.

    source: "demo" (offline smoke-test set), "existing" (use what is in dataset_dir), "official" (the
    official release URL), "official-v2" (the AnimeGANv2 style sets named by `styles`, into
    dataset_dir/STYLE_v2: `stylesets`), or a URL / local path of dataset.zip or of one v2 STYLE.tar.gz.
    `mirror` replaces https://github.com in the official URLs. With `strict`, any unusable image or
    layout problem raises DataError instead of being skipped with a warning (warnings go to the
    "data_prep" logger).
    """
    if smooth not in smoothing.SMOOTH_MODES:
        raise DataError(f"--smooth must be one of {', '.join(smoothing.SMOOTH_MODES)}, not {smooth!r}.")
    if img_size < 8:
        raise DataError(f"--img_size must be at least 8, not {img_size}.")
    report.not_a_folder(dataset_dir, "--out")
    fetch_kw = dict(retries=retries, sha256=sha256, keep_archive=keep_archive, progress=progress, backoff=backoff)
    if source == stylesets.SOURCE or stylesets.is_style_archive(source):
        result = _prepare_style_sets(source, dataset_dir, styles, mirror, smooth, img_size, workers, fetch_kw)
        _check_strict(result, strict)
        return result
    result = PrepareResult(dataset_dir)
    expected = None
    if source == "demo":
        demo.ensure(dataset_dir, seed, num_photos, num_style, img_size, progress=progress)
        styles = styles or [demo.STYLE]
    elif source != "existing":
        url = download.mirrored(download.DATASET_URL, mirror) if source == "official" else source
        # The demo set goes only once the archive has passed every check: a refused archive leaves
        # the folder as it was.
        download.fetch(url, dataset_dir, before_write=lambda: _remove_demo(dataset_dir), **fetch_kw)
        expected = download.OFFICIAL_COUNTS if source == "official" or url == download.DATASET_URL else None
    report.require_folder(dataset_dir)
    styles = styles or report.find_styles(dataset_dir)
    if not styles:
        raise DataError(f"Folder {dataset_dir} holds no style folder (NAME/style/); add one or run `make data`.")
    for style in styles:
        result.smoothed.append(smoothing.smooth_folder(
            os.path.join(dataset_dir, style, "style"), os.path.join(dataset_dir, style, "smooth"),
            img_size, smooth, workers, progress))
    if source != "existing":
        result.layout_problems = download.verify_layout(dataset_dir, styles, expected)
    result.reports = report.report_dataset(dataset_dir, styles)
    _check_strict(result, strict)
    return result


def _check_strict(result: PrepareResult, strict: bool) -> None:
    if strict and (result.bad or result.layout_problems):
        first = result.bad[0] if result.bad else (result.layout_problems[0], "")
        raise DataError(f"--strict: {first[0]} {('is unusable (' + first[1] + ')') if first[1] else ''}"
                        f" ({len(result.bad) + len(result.layout_problems)} problems in all, see the report above).")


def _prepare_style_sets(source: str, dataset_dir: str, styles, mirror, smooth: str, img_size: int,
                        workers, fetch_kw: dict) -> PrepareResult:
    """`prepare` for the AnimeGANv2 style sets: fetch each into dataset_dir/STYLE_v2, smooth, report."""
    styles = stylesets.check_styles(styles)
    official = source == stylesets.SOURCE
    if not official and len(styles) != 1:
        raise DataError(f"--source={source} is one style archive; name its style with one --style "
                        f"({', '.join(stylesets.STYLES)}).")
    if fetch_kw["sha256"] and len(styles) != 1:
        raise DataError("--sha256 checks one archive; fetch one --style at a time to check each.")
    result = PrepareResult(dataset_dir)
    for style in styles:
        folder = os.path.join(dataset_dir, stylesets.folder_name(style))
        style_dir = os.path.join(folder, "style")
        have = len(report.image_files(style_dir)) if os.path.isdir(style_dir) else 0
        if official and have == stylesets.COUNTS[style]:
            log.info("%s already holds the %d images of %s.tar.gz; not downloaded again", style_dir, have, style)
        else:
            url = download.mirrored(stylesets.URL.format(style=style), mirror) if official else source
            stylesets.fetch(style, url, dataset_dir, **fetch_kw)
        result.smoothed.append(smoothing.smooth_folder(style_dir, os.path.join(folder, "smooth"), img_size,
                                                       smooth, workers, fetch_kw["progress"]))
    folders = [os.path.join(dataset_dir, stylesets.folder_name(s), sub) for s in styles for sub in stylesets.SUBFOLDERS]
    folders += [os.path.join(dataset_dir, f) for f in ("train_photo", "val")]
    result.reports = [report.scan_folder(f) for f in folders if os.path.isdir(f)]
    result.layout_problems = stylesets.layout_problems(dataset_dir, styles, result.reports, official)
    photos = ("demo" if demo.read_manifest(dataset_dir) else
              "v1" if os.path.isdir(os.path.join(dataset_dir, "train_photo")) else "none")
    result.next_steps = stylesets.next_steps(dataset_dir, styles, photos)
    return result
