"""Stylize photos, folders and videos with a trained or converted generator.

    python -m anime_gan.stylize --model=checkpoints/hayao --input=photos/ --output=anime/

--model takes any model form (`anime_gan.constants.MODEL_FORMS`, listed by --help) or an exported
.onnx file.
--input is an image, a folder (sub-folders are mirrored under --output; the videos in it are
stylized too, each into NAME.mp4) or a video (written as H.264 in MP4 with the same frame timestamps,
frame count and size, and its audio track; see `anime_gan.inference.video`). Files are read and written in
threads beside the model, and a video is decoded and encoded beside it, so the model never waits.

Each image keeps its exact size (see `anime_gan.deploy.saved_model`). Files that cannot be stylized are
reported one line each (an image too large for --max_side is refused from its header, before it is
decoded); the others are still written, and the command exits with status 1 and a summary. So does
a video whose frames could not all be decoded (it is written without them). Ctrl-C stops after the
batch in hand is written, names what was written and exits with 130; a second Ctrl-C stops at once.
--faces stylizes each face aligned in its own --face_size square with --face_model (default --model) and
pastes it over the plain result (`anime_gan.inference.faces`; the `faces` extra); one line per image
says how many faces it found and used. The same things from Python:

    >>> import anime_gan
    >>> anime = anime_gan.stylize(photo_uint8, model="checkpoints/hayao")

(`anime_gan.stylize` is this module, and calling it calls `anime_gan.inference.stylize`.)
"""

from __future__ import annotations

import sys
import types

from anime_gan import cli
from anime_gan import constants as C
from anime_gan import inference
from anime_gan.deploy import CALIBRATION_PHOTOS
from anime_gan.errors import EXIT_FAILED


def _brightness_flag():
    """--adjust_brightness[=official|luma|none] and --noadjust_brightness: a string flag that also
    parses as a boolean (bare = official), so the original's boolean spelling still works."""
    from absl import flags

    class BrightnessParser(flags.ArgumentParser):
        def parse(self, argument):
            return inference.brightness_mode(argument)

        def flag_type(self):
            return "string"

    class BrightnessFlag(flags.Flag):
        def __init__(self):
            super().__init__(
                BrightnessParser(), flags.ArgumentSerializer(), "adjust_brightness", "none",
                "Match each result's mean brightness to its photo's, as the original's option does: "
                "=official, or the bare flag, weights the channel means as the original's image path does, "
                "0.114R+0.587G+0.299B (its helper assumes BGR but is given RGB); =luma uses true luma, "
                "0.299R+0.587G+0.114B; =none, or --noadjust_brightness, leaves the results as they are.",
                boolean=True)

        def _serialize(self, value):
            return f"--{self.name}={value}"

    return BrightnessFlag()


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string(
        "model", None,
        f"The model: {C.ACCEPTED_FORMS}; or an exported .onnx file.",
        required=True)
    flags.DEFINE_string(
        "input", None,
        "An image, a folder of images and videos (searched recursively) or a video.", required=True)
    flags.DEFINE_string(
        "output", None,
        "Where to write: a file or folder for an image, a folder (sub-folders mirrored, videos as "
        "NAME.mp4) for a folder, a file (.mp4, .m4v, .mov, .mkv, .avi: H.264 with the audio kept) or folder "
        "for a video.", required=True)
    flags.DEFINE_integer("batch_size", inference.DEFAULT_BATCH_SIZE,
                         "Images (of one size) or video frames per batch.", lower_bound=1)
    flags.DEFINE_flag(_brightness_flag())
    flags.DEFINE_integer(
        "max_side", None,
        f"Largest image side accepted when --model is weights (default {C.DEFAULT_MAX_SIDE}); a SavedModel "
        "keeps the cap it was exported with.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_enum(
        "runtime", None, list(C.RUNTIMES),
        "Where the generator runs (default: tensorflow for float32, auto for float16 and int8): tensorflow "
        "(large images in bounded memory), onnxruntime or "
        "openvino (float32 via ONNX, converted once and cached; an .onnx --model runs in one of them), "
        "litert, or auto: the fastest runtime measured on this machine at --precision (see "
        "python -m anime_gan.runtimes).")
    flags.DEFINE_enum(
        "precision", "float32", list(C.PRECISIONS),
        "Arithmetic of the generator: float32 (the default, every runtime), float16 (openvino, litert) or int8 "
        "(onnxruntime, openvino: convolutions quantised once on calibration photos and cached, norms in float; "
        "see docs/inference.md). With --runtime=auto the fastest runtime "
        "measured here at that precision runs it.")
    flags.DEFINE_string(
        "calibration_dir", None,
        f"A folder of real photos --precision=int8 is calibrated on (the first {CALIBRATION_PHOTOS}, sorted by name); default "
        "scikit-image's sample photos.")
    flags.DEFINE_boolean(
        "faces", False,
        "Face mode: find each face (MTCNN, the `faces` extra), stylize it aligned in a --face_size square with "
        "--face_model and paste it over the photo stylized by --model; says per image how many faces it used.")
    flags.DEFINE_string("face_model", None, "The model for the faces in --faces (the same forms; default: --model).")
    flags.DEFINE_integer("face_size", C.FACE_SIZE, "Side of the aligned square a face is stylized in (--faces).",
                         lower_bound=C.MIN_SIDE)


def main(argv):
    """The command (run by `anime_gan.cli.run`): 0 all written, 1 some inputs failed, 2 a user error."""
    from absl import flags

    FLAGS = flags.FLAGS
    word = argv[1] if len(argv) > 1 else None
    cli.reject_arguments(argv, hint=f"; write --adjust_brightness={word}" if word in inference.BRIGHTNESS_MODES
                         else "")
    try:
        summary = inference.run(FLAGS.model, FLAGS.input, FLAGS.output, FLAGS.batch_size, FLAGS.adjust_brightness,
                                FLAGS.max_side, runtime=FLAGS.runtime, precision=FLAGS.precision,
                                calibration_dir=FLAGS.calibration_dir, faces=FLAGS.faces,
                                face_model=FLAGS.face_model, face_size=FLAGS.face_size)
    except inference.Interrupted as stopped:
        stopped.warn()
        raise  # `anime_gan.cli.run` says "interrupted (Ctrl-C)" and exits with 130
    if not summary.ok:
        summary.warn()
        return EXIT_FAILED
    n_ok = len(summary.written)
    where = summary.written[0] if n_ok == 1 else FLAGS.output
    print(f"stylized {n_ok} input{'s' if n_ok != 1 else ''} into {where}")
    return 0


class _CallableModule(types.ModuleType):
    """`anime_gan.stylize` is this module; calling it calls `anime_gan.inference.stylize`."""

    def __call__(self, image_uint8, model=None, adjust_brightness=False, **options):
        return inference.stylize(image_uint8, model=model, adjust_brightness=adjust_brightness, **options)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    cli.run(main, define_flags)
