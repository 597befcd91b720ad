"""Turning raw folders and archives into an AnimeGAN training set (no TensorFlow needed).

`prepare` is what `make data` / `python -m data_prep` runs: get the images (the offline demo set or
the official dataset.zip), edge-smooth every style folder that needs it, and report every folder.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from data_prep import demo, download, files, report, smoothing
from data_prep.report import DataError

__all__ = ["DataError", "PrepareResult", "prepare", "demo", "download", "files", "report", "smoothing"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareResult:
    dataset_dir: str
    smoothed: list = dataclasses.field(default_factory=list)  # smoothing.SmoothResult per style
    reports: list = dataclasses.field(default_factory=list)  # report.FolderReport per folder
    layout_problems: list = dataclasses.field(default_factory=list)

    @property
    def bad(self) -> list[tuple[str, str]]:
        return [b for r in self.reports for b in r.bad] + [b for s in self.smoothed for b in s.bad]

    def text(self) -> str:
        lines = [s.summary() for s in self.smoothed] + [report.format_reports(self.reports)]
        lines += [f"layout: {p}" for p in self.layout_problems]
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
            keep_archive: bool = False, progress: bool = True, backoff: float = 2.0) -> PrepareResult:
    """Build or fetch the dataset under `dataset_dir`, smooth styles, report; see `python -m data_prep --help`.

    source: "demo" (offline smoke-test set), "existing" (use what is in dataset_dir), "official" (the
    official release URL), or a URL / local path of dataset.zip. With `strict`, any unusable image or
    layout problem raises DataError instead of being skipped with a warning (warnings go to the
    "data_prep" logger).
    """
    if smooth not in smoothing.SMOOTH_MODES:
        raise DataError(f"--smooth must be one of {', '.join(smoothing.SMOOTH_MODES)}, not {smooth!r}.")
    if img_size < 8:
        raise DataError(f"--img_size must be at least 8, not {img_size}.")
    report.not_a_folder(dataset_dir, "--out")
    result = PrepareResult(dataset_dir)
    expected = None
    if source == "demo":
        demo.ensure(dataset_dir, seed, num_photos, num_style, img_size, progress=progress)
        styles = styles or [demo.STYLE]
    elif source != "existing":
        url = download.DATASET_URL if source == "official" else source
        # The demo set goes only once the archive has passed every check: a refused archive leaves
        # the folder as it was.
        download.fetch(url, dataset_dir, retries=retries, sha256=sha256, keep_archive=keep_archive,
                       progress=progress, backoff=backoff, before_write=lambda: _remove_demo(dataset_dir))
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
    if strict and (result.bad or result.layout_problems):
        first = result.bad[0] if result.bad else (result.layout_problems[0], "")
        raise DataError(f"--strict: {first[0]} {('is unusable (' + first[1] + ')') if first[1] else ''}"
                        f" ({len(result.bad) + len(result.layout_problems)} problems in all, see the report above).")
    return result
