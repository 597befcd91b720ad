"""Converts an official AnimeGAN TF1 checkpoint into our Keras 3 generator weights.

    python -m anime_gan.convert --tf1_checkpoint=checkpoint/AnimeGAN_Hayao/Hayao-60 --output=checkpoints/hayao

writes OUTPUT/generator.weights.h5 (read by `anime_gan.load_generator`) and, unless
--nosaved_model, OUTPUT/saved_model/ for TF Serving.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("tf1_checkpoint", None, "Prefix of the official TF1 checkpoint (the path before .index).")
flags.DEFINE_string("output", None, "Directory to write generator.weights.h5 (and saved_model/) into.")
flags.DEFINE_boolean("saved_model", True, "Also export OUTPUT/saved_model/ for TF Serving.")
flags.DEFINE_integer("max_side", 4096, "Largest image side the exported SavedModel accepts.", lower_bound=16)


def main(argv):
    from anime_gan.cli import quiet_tensorflow_import

    quiet_tensorflow_import()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.tf1_checkpoint or not FLAGS.output:
        raise app.UsageError("both --tf1_checkpoint=PREFIX and --output=DIR are required.")
    from anime_gan import weights

    try:
        generator = weights.tf1_to_generator(weights.read_tf1_checkpoint(FLAGS.tf1_checkpoint))
    except (FileNotFoundError, weights.CheckpointMismatchError) as e:
        sys.exit(f"error: {e}")
    path = weights.save_generator(generator, FLAGS.output)
    print(f"wrote {path}")
    if FLAGS.saved_model:
        from anime_gan.serving import export_saved_model

        out = export_saved_model(generator, f"{FLAGS.output}/saved_model", max_side=FLAGS.max_side)
        print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
