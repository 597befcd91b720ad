"""Converts an official AnimeGAN TF1 checkpoint into our Keras 3 generator weights.

    python -m anime_gan.convert --tf1_checkpoint=checkpoint/AnimeGAN_Hayao/Hayao-60 --output=checkpoints/hayao

writes OUTPUT/generator.weights.h5 (read by `anime_gan.load_generator`; `anime_gan.convert_checkpoint`
from Python) and, unless --nosaved_model, OUTPUT/saved_model/ for TF Serving (`anime_gan.export`).
"""

from __future__ import annotations

import os

from anime_gan import constants as C
from anime_gan.errors import ConfigError


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string("tf1_checkpoint", None, "Prefix of the official TF1 checkpoint (the path before .index).",
                        required=True)
    flags.DEFINE_string("output", None, "Directory to write generator.weights.h5 (and saved_model/) into.",
                        required=True)
    flags.DEFINE_boolean("saved_model", True, "Also export OUTPUT/saved_model/ for TF Serving.")
    flags.DEFINE_integer("max_side", C.DEFAULT_MAX_SIDE, "Largest image side the exported SavedModel accepts.",
                         lower_bound=C.MIN_SIDE)


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    from anime_gan.export import export
    from anime_gan.weights import convert_checkpoint

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    FLAGS = flags.FLAGS
    path = convert_checkpoint(FLAGS.tf1_checkpoint, FLAGS.output)
    print(f"wrote {path}")
    if FLAGS.saved_model:
        out = export(FLAGS.output, os.path.join(FLAGS.output, "saved_model"), FLAGS.max_side, overwrite=True)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
