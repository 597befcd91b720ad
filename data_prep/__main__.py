"""`python -m data_prep` (= `make data`): build the training set under --out.

  make data                                   # offline demo set (smoke test only) in dataset/
  make data ARGS="--source=official"          # the official dataset.zip (downloads ~GBs)
  make data ARGS="--source=/path/dataset.zip" # a local copy of it
  make data ARGS="--source=official-v2 --style=Hayao"  # an AnimeGANv2 style set, into dataset/Hayao_v2
                                                       # (+ --source=official once, for the photos)
  make data ARGS="--source=existing --style=MyStyle"  # smooth + report your own folders

Exit status: 0 done, 2 a problem with the data or the flags (one sentence on stderr), 130 Ctrl-C
(see `data_prep.console`).
"""
from absl import app, flags

import data_prep
from data_prep import console, demo, download, smoothing, stylesets

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "demo", "Where the images come from: 'demo' (offline smoke-test set cut from "
                    "sample photos of installed packages, style 'Demo'), 'official' (the official "
                    f"dataset.zip release URL), '{stylesets.SOURCE}' (the AnimeGANv2 style sets named by "
                    f"--style, {', '.join(stylesets.STYLES)}: STYLE.tar.gz of the v2 release, unpacked into "
                    f"<out>/STYLE{stylesets.FOLDER_SUFFIX}/; they hold no photos: run --source=official once "
                    "too), a URL or local path of dataset.zip or of one v2 STYLE.tar.gz (with its --style), "
                    "or 'existing' (use the folders already under --out).")
flags.DEFINE_string("out", "dataset", "Dataset folder to write (official layout: train_photo/, "
                    "<Style>/style/, <Style>/smooth/, val/, test/...).")
flags.DEFINE_list("style", [], "Style folders to smooth and report (default: every <name>/style/ under --out); "
                  f"with --source={stylesets.SOURCE}, the v2 style sets to fetch "
                  f"({', '.join(stylesets.STYLES)}; required).")
flags.DEFINE_enum("smooth", "auto", list(smoothing.SMOOTH_MODES), "Edge smoothing of <Style>/style into "
                  "<Style>/smooth: 'auto' smooths the images whose smoothed copy is missing, 'always' redoes "
                  "all, 'never' skips it.")
flags.DEFINE_integer("img_size", 256, "Side of the smoothed (and demo) images, in pixels.", lower_bound=8)
flags.DEFINE_integer("seed", 0, "Seed of the demo set (same seed and library versions -> same bytes).")
flags.DEFINE_integer("num_photos", demo.DEFAULT_NUM_PHOTOS, "Demo set: number of photo crops.", lower_bound=1)
flags.DEFINE_integer("num_style", demo.DEFAULT_NUM_STYLE, "Demo set: number of style images.", lower_bound=1)
flags.DEFINE_bool("strict", False, "Treat any unusable image or layout problem as an error (default: skip "
                  "it with a warning).")
flags.DEFINE_integer("workers", None, "Parallel smoothing threads (default: number of CPUs).", lower_bound=1)
flags.DEFINE_integer("retries", 5, "Download: how many times to resume a broken transfer.", lower_bound=0)
flags.DEFINE_string("sha256", None, "Download: expected SHA-256 of the archive (checked when given; the "
                    "size announced by the server and the archive's integrity, a zip's central directory "
                    "and CRCs, a tar.gz's gzip CRC and length, are always checked, and a file that fails is "
                    "downloaded again).")
flags.DEFINE_string("mirror", None, f"Download: a URL that replaces {download.GITHUB} in the official "
                    "archives' URLs (a mirror serving the same paths).")
flags.DEFINE_bool("keep_archive", False, "Download: keep the downloaded archive after unpacking.")
flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    result = data_prep.prepare(
        source=FLAGS.source, dataset_dir=FLAGS.out, styles=FLAGS.style or None, smooth=FLAGS.smooth,
        img_size=FLAGS.img_size, seed=FLAGS.seed, num_photos=FLAGS.num_photos,
        num_style=FLAGS.num_style, strict=FLAGS.strict, workers=FLAGS.workers, retries=FLAGS.retries,
        sha256=FLAGS.sha256, keep_archive=FLAGS.keep_archive, progress=FLAGS.progress, mirror=FLAGS.mirror)
    print(result.text())
    if FLAGS.source == "demo":
        print(f"{FLAGS.out}: demo set (style '{demo.STYLE}') - a smoke test that the pipeline runs, not "
              "a dataset to learn a style from.")
    return 0


if __name__ == "__main__":
    console.run(main, user_errors=(data_prep.DataError,), loggers=("data_prep",))
