"""Converts official AnimeGAN / AnimeGANv2 TF1 checkpoints, or the PyTorch port's `.pt` weights, into
our Keras 3 generator weights.

    python -m anime_gan.convert --tf1_checkpoint=checkpoint/AnimeGAN_Hayao/Hayao-60 --output=checkpoints/hayao
    python -m anime_gan.convert --pytorch=face_paint_512_v2.pt --output=checkpoints/face_paint_v2

writes OUTPUT/generator.weights.h5 (read by `anime_gan.load_generator`; `anime_gan.convert_checkpoint`
and `anime_gan.weights.convert_torch` from Python) and, unless --nosaved_model, OUTPUT/saved_model/
for TF Serving (`anime_gan.export`).

--pytorch reads a state_dict of bryandlee/animegan2-pytorch's Generator (torch is not needed; the
file's pickle may name nothing but tensors, see `anime_gan.weights.torch_port`). The generator computes as
the port's forward does (resize to the recorded sizes with align_corners=True, so the output keeps
the input's size; GroupNorm eps 1e-5); --resize=tf1 gives the official graph's legacy x2 upsampling
instead. Either way the choice is stored in the weights file, so nothing downstream needs a flag.
"""

from __future__ import annotations

import os

from anime_gan import cli
from anime_gan import constants as C
from anime_gan.errors import ConfigError


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string("tf1_checkpoint", None, "Prefix of an official TF1 checkpoint (the path before .index).")
    flags.DEFINE_string("pytorch", None, "A .pt file of bryandlee/animegan2-pytorch's generator (its "
                        "state_dict, e.g. face_paint_512_v2.pt); read without PyTorch.")
    flags.DEFINE_string("resize", None, "With --pytorch: how the generator upsamples; align_corners "
                        "(default: the port's forward, output = input size) or tf1 (the official graph).")
    flags.DEFINE_string("output", None, "Directory to write generator.weights.h5 (and saved_model/) into.",
                        required=True)
    flags.DEFINE_boolean("saved_model", True, "Also export OUTPUT/saved_model/ for TF Serving.")
    flags.DEFINE_integer("max_side", C.DEFAULT_MAX_SIDE, "Largest image side the exported SavedModel accepts.",
                         lower_bound=C.MIN_SIDE)


def _check_flags(FLAGS):
    """The flag combinations refused before any model code is imported."""
    if FLAGS.tf1_checkpoint and FLAGS.pytorch:
        raise ConfigError("pass one of --tf1_checkpoint and --pytorch, not both.")
    if not FLAGS.tf1_checkpoint and not FLAGS.pytorch:
        raise ConfigError("pass --tf1_checkpoint=PREFIX (an official TF1 checkpoint) or --pytorch=FILE "
                          "(a .pt file of bryandlee/animegan2-pytorch).")
    if FLAGS.resize and not FLAGS.pytorch:
        raise ConfigError("--resize applies to --pytorch only; an official checkpoint converts to the official graph.")


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    cli.reject_arguments(argv)
    FLAGS = flags.FLAGS
    _check_flags(FLAGS)
    from anime_gan.deploy.saved_model import export_saved_model
    from anime_gan.nets.generator_v2 import RESIZE_MODES
    from anime_gan.weights import PORT_RESIZE, convert_checkpoint, convert_torch, load_generator

    if FLAGS.resize and FLAGS.resize not in RESIZE_MODES:
        raise ConfigError(f"--resize must be one of {', '.join(RESIZE_MODES)} (got {FLAGS.resize!r}).")
    if FLAGS.pytorch:
        path = convert_torch(FLAGS.pytorch, FLAGS.output, FLAGS.resize or PORT_RESIZE)
    else:
        path = convert_checkpoint(FLAGS.tf1_checkpoint, FLAGS.output)
    print(f"wrote {path}")
    if FLAGS.saved_model:
        out = export_saved_model(load_generator(FLAGS.output), os.path.join(FLAGS.output, C.SAVED_MODEL_DIR),
                                 max_side=FLAGS.max_side)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
