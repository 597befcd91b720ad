"""Export a generator as a SavedModel (TF Serving, `saved_model_cli`, `tf.saved_model.load`), an ONNX
model (ONNX Runtime, OpenVINO) or a TFLite model (LiteRT, phones).

    python -m anime_gan.export --checkpoint_dir=checkpoints/hayao --output=models/anime_gan/1
    python -m anime_gan.export --format=onnx --checkpoint_dir=checkpoints/hayao --output=hayao.onnx
    python -m anime_gan.export --format=tflite --precision=float16 --checkpoint_dir=... --output=hayao.tflite

--format=saved_model (the default) is described below; onnx: see `anime_gan.deploy.onnx` (uint8 in,
uint8 out, size kept, dynamic N/H/W; needs tf2onnx); tflite: see `anime_gan.deploy.tflite`
(--precision float32, float16 or int8).

--checkpoint_dir takes whatever `anime_gan.load_generator` reads: a training run's --checkpoint_dir
(its final generator/generator.weights.h5, else the generator of its newest checkpoint ckpt-N; a
line on stderr says which), a training checkpoint prefix (run/ckpt-12), a directory holding
generator.weights.h5 (`anime_gan.convert` output, run/epochs/epoch_NNN), a SavedModel directory
(re-exported, e.g. with another --max_side), a .weights.h5 file, or an official TF1 checkpoint
prefix. The SavedModel has two signatures, `serving_default`
(uint8 images -> uint8 images, same size) and `stylize_bytes` (encoded images -> PNG bytes); see
`anime_gan.deploy.saved_model`. TF Serving wants a numbered version folder (the `/1` above).
"""

from __future__ import annotations

import os

from anime_gan import constants as C
from anime_gan.errors import ConfigError, OutputExistsError

FORMATS = ("saved_model", "onnx", "tflite")
PRECISIONS = ("float32", "float16", "int8", "int8_full")  # anime_gan.deploy.tflite.PRECISIONS
CALIBRATION_PHOTOS = 32  # at most this many photos of --calibration_dir calibrate int8_full

def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string(
        "checkpoint_dir", None,
        "A training run's --checkpoint_dir (its generator/generator.weights.h5, else its newest ckpt-N), "
        "a training checkpoint prefix (run/ckpt-12), a directory holding generator.weights.h5, a "
        "SavedModel directory, a .weights.h5 file or an official TF1 checkpoint prefix.", required=True)
    flags.DEFINE_enum("format", "saved_model", FORMATS, "What to write: a SavedModel directory, an .onnx "
                      "file or a .tflite file.")
    flags.DEFINE_enum("precision", "float32", PRECISIONS, "Weights and arithmetic of --format=tflite (see "
                      "anime_gan.deploy.tflite).")
    flags.DEFINE_string("size", "256x256", "HEIGHTxWIDTH of a --format=tflite model (its size is fixed).")
    flags.DEFINE_string("calibration_dir", None, "A folder of real photos calibrating --precision=int8_full "
                        f"(the first {CALIBRATION_PHOTOS}, sorted by name).")
    flags.DEFINE_string("output", None, "SavedModel directory (e.g. models/anime_gan/1), or the .onnx / .tflite "
                        "file, to write.", required=True)
    flags.DEFINE_integer(
        "max_side", C.DEFAULT_MAX_SIDE, "Largest image side the SavedModel accepts; larger inputs get "
        "InvalidArgument.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing SavedModel at --output.")


def export(checkpoint_dir, output, max_side=C.DEFAULT_MAX_SIDE, overwrite=False, format="saved_model",
           precision="float32", size="256x256", calibration_dir=None):
    """Loads the generator and writes it in `format`; returns the written path. Errors are one sentence."""
    if format not in FORMATS:
        raise ConfigError(f"--format={format} is not one of {', '.join(FORMATS)}.")
    if precision != "float32" and format != "tflite":
        raise ConfigError(f"--precision={precision} applies to --format=tflite only; leave it out for {format}.")
    if format == "tflite":
        height, width = _parse_size(size)
        photos = _calibration_photos(calibration_dir) if calibration_dir else None
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise OutputExistsError(
            f"--output={output} already exists; pass --overwrite to replace it or choose another path.")
    writer = _writer(format)
    from anime_gan.weights.loading import load_generator

    generator = load_generator(checkpoint_dir)
    if format == "saved_model":
        return writer(generator, output, max_side=max_side)
    if format == "onnx":
        return writer(generator, output, max_side=max_side, overwrite=overwrite)
    return writer(generator, output, precision=precision, calibration_images=photos, height=height, width=width)


def _parse_size(size):
    try:
        height, width = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size={size} is not HEIGHTxWIDTH (e.g. 720x1280).") from None
    return height, width


def _calibration_photos(directory):
    import pathlib

    from anime_gan.errors import PathNotFoundError
    from anime_gan.image_io import is_image_path, read_image

    paths = sorted(p for p in pathlib.Path(directory).rglob("*") if p.is_file() and is_image_path(p))
    if not paths:
        raise PathNotFoundError(f"--calibration_dir={directory} holds no images; pass a folder of real photos.")
    return [read_image(p) for p in paths[:CALIBRATION_PHOTOS]]


def _writer(format):
    """The function that writes `format`, imported before the (slow) model load so a missing package is
    reported first."""
    if format == "saved_model":
        from anime_gan.deploy.saved_model import export_saved_model

        return export_saved_model
    if format == "onnx":
        import importlib.util

        if importlib.util.find_spec("tf2onnx") is None:
            raise ConfigError("tf2onnx is not installed; pip install 'anime-gan-tf2[onnx]' to export ONNX.")
        from anime_gan.deploy.onnx import write_onnx

        return write_onnx
    try:
        from anime_gan.deploy.tflite import write_tflite
    except ImportError as e:
        raise ConfigError(f"the TFLite export is not available ({e}).") from None
    return write_tflite


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    FLAGS = flags.FLAGS
    path = export(FLAGS.checkpoint_dir, FLAGS.output, FLAGS.max_side, FLAGS.overwrite, FLAGS.format,
                  FLAGS.precision, FLAGS.size, FLAGS.calibration_dir)
    if FLAGS.format == "saved_model":
        print(f"wrote {path} (signatures serving_default, stylize_bytes; max side {FLAGS.max_side})")
    elif FLAGS.format == "onnx":
        print(f"wrote {path} (ONNX opset 17: images uint8 [N,H,W,3] -> stylized uint8; max side {FLAGS.max_side})")
    else:
        print(f"wrote {path} (TFLite {FLAGS.precision}, {FLAGS.size} only)")
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
