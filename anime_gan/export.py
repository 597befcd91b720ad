"""Export a generator as a SavedModel (TF Serving, `saved_model_cli`, `tf.saved_model.load`), an ONNX
model (ONNX Runtime, OpenVINO) or a TFLite model (LiteRT, phones).

    python -m anime_gan.export --checkpoint_dir=checkpoints/hayao --output=models/anime_gan/1
    python -m anime_gan.export --format=onnx --checkpoint_dir=checkpoints/hayao --output=hayao.onnx
    python -m anime_gan.export --format=tflite --precision=float16 --checkpoint_dir=... --output=hayao.tflite

--format=saved_model (the default) is described below; onnx: see `anime_gan.deploy.onnx` (uint8 in,
uint8 out, size kept, dynamic N/H/W; needs tf2onnx; --precision=int8 quantises its convolutions, see
`anime_gan.deploy.quantize`); tflite: see `anime_gan.deploy.tflite` (--precision float32, float16, int8
or int8_full).

--checkpoint_dir takes any model form (`anime_gan.constants.MODEL_FORMS`, listed by --help; a line on
stderr says which weights of a training run were used). The SavedModel has two signatures, `serving_default`
(uint8 images -> uint8 images, same size) and `stylize_bytes` (encoded images -> PNG bytes); see
`anime_gan.deploy.saved_model`. TF Serving wants a numbered version folder (the `/1` above).
"""

from __future__ import annotations

from anime_gan import constants as C
from anime_gan.deploy import CALIBRATION_PHOTOS, EXPORT_FORMATS, EXPORT_PRECISIONS


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string(
        "checkpoint_dir", None,
        f"The model to export: {C.ACCEPTED_FORMS}.", required=True)
    flags.DEFINE_enum("format", "saved_model", EXPORT_FORMATS, "What to write: a SavedModel directory, an .onnx "
                      "file or a .tflite file.")
    flags.DEFINE_enum("precision", "float32", C.TFLITE_PRECISIONS, "Weights and arithmetic: " + "; ".join(
        f"{f} {', '.join(p)}" for f, p in EXPORT_PRECISIONS.items()) + " (onnx int8: convolutions quantised, norms in "
                      "float, anime_gan.deploy.quantize; tflite: anime_gan.deploy.tflite).")
    flags.DEFINE_string("size", "256x256", "HEIGHTxWIDTH of a --format=tflite model (its size is fixed).")
    flags.DEFINE_string("calibration_dir", None, "A folder of real photos calibrating --precision=int8_full, and "
                        f"int8 of --format=onnx (the first {CALIBRATION_PHOTOS}, sorted by name; onnx int8 defaults "
                        "to scikit-image's sample photos).")
    flags.DEFINE_string("output", None, "SavedModel directory (e.g. models/anime_gan/1), or the .onnx / .tflite "
                        "file, to write.", required=True)
    flags.DEFINE_integer(
        "max_side", C.DEFAULT_MAX_SIDE, "Largest image side the SavedModel accepts; larger inputs get "
        "InvalidArgument.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing SavedModel at --output.")


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    from anime_gan import cli
    from anime_gan.deploy.export import export
    from anime_gan.deploy.onnx import OPSET

    cli.reject_arguments(argv)
    FLAGS = flags.FLAGS
    path = export(FLAGS.checkpoint_dir, FLAGS.output, FLAGS.max_side, FLAGS.overwrite, FLAGS.format,
                  FLAGS.precision, FLAGS.size, FLAGS.calibration_dir)
    if FLAGS.format == "saved_model":
        print(f"wrote {path} (signatures serving_default, stylize_bytes; max side {FLAGS.max_side})")
    elif FLAGS.format == "onnx":
        print(f"wrote {path} (ONNX opset {OPSET} {FLAGS.precision}: images uint8 [N,H,W,3] -> stylized uint8; "
              f"max side {FLAGS.max_side})")
    else:
        print(f"wrote {path} (TFLite {FLAGS.precision}, {FLAGS.size} only)")
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    cli.run(main, define_flags)
