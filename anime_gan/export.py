"""Export a generator as a SavedModel for TF Serving, `saved_model_cli` and `tf.saved_model.load`.

    python -m anime_gan.export --checkpoint_dir=checkpoints/hayao --output=models/anime_gan/1

--checkpoint_dir takes whatever `anime_gan.load_generator` reads: a training run's --checkpoint_dir
(its final generator/generator.weights.h5, else the generator of its newest checkpoint ckpt-N; a
line on stderr says which), a training checkpoint prefix (run/ckpt-12), a directory holding
generator.weights.h5 (`anime_gan.convert` output, run/epochs/epoch_NNN), a SavedModel directory
(re-exported, e.g. with another --max_side), a .weights.h5 file, or an official TF1 checkpoint
prefix. The SavedModel has two signatures, `serving_default`
(uint8 images -> uint8 images, same size) and `stylize_bytes` (encoded images -> PNG bytes); see
`anime_gan.serving`. TF Serving wants a numbered version folder (the `/1` above).
"""

from __future__ import annotations

import os

from anime_gan import constants as C
from anime_gan.errors import ConfigError, OutputExistsError


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string(
        "checkpoint_dir", None,
        "A training run's --checkpoint_dir (its generator/generator.weights.h5, else its newest ckpt-N), "
        "a training checkpoint prefix (run/ckpt-12), a directory holding generator.weights.h5, a "
        "SavedModel directory, a .weights.h5 file or an official TF1 checkpoint prefix.", required=True)
    flags.DEFINE_string("output", None, "SavedModel directory to write (e.g. models/anime_gan/1).", required=True)
    flags.DEFINE_integer(
        "max_side", C.DEFAULT_MAX_SIDE, "Largest image side the SavedModel accepts; larger inputs get "
        "InvalidArgument.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing SavedModel at --output.")


def export(checkpoint_dir, output, max_side=C.DEFAULT_MAX_SIDE, overwrite=False):
    """Loads the generator and writes the SavedModel; returns its path. Errors are one sentence."""
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise OutputExistsError(
            f"--output={output} already exists; pass --overwrite to replace it or choose another path.")
    from anime_gan.serving import export_saved_model
    from anime_gan.weights import load_generator

    generator = load_generator(checkpoint_dir)
    return export_saved_model(generator, output, max_side=max_side)


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.")
    FLAGS = flags.FLAGS
    path = export(FLAGS.checkpoint_dir, FLAGS.output, FLAGS.max_side, FLAGS.overwrite)
    print(f"wrote {path} (signatures serving_default, stylize_bytes; max side {FLAGS.max_side})")
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
