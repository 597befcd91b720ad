"""A local web page to try a model: drop a photo or a short clip, get the anime version beside it.

    python -m anime_gan.app --model=checkpoints/demo [--model=hayao-v2 ...] [--port=7860] [--host=127.0.0.1]
                            [--max_side=4096] [--max_upload_mb=50]

The page lists the models found (every --model, the official weights downloaded with
`anime_gan.pretrained`, the training runs in the weights folder) with the architecture and style
each holds; takes an image (file, drag and drop, paste, webcam) or a video; shows photo and result
side by side with a download (PNG, MP4); and offers --adjust_brightness and the size cap as controls.
Its live camera mode stylizes the webcam frame by frame (one stream at a time; `anime_gan.web.live`).
It runs the command line's own functions (`anime_gan.web`), so a bad upload gets the command line's
one-sentence message. Models load on first use and stay loaded; one request at a time runs through
them. Bound to 127.0.0.1 by default: the page has no login, so --host=0.0.0.0 opens it to the network.
"""

from __future__ import annotations

import tempfile

from anime_gan import cli
from anime_gan import constants as C
from anime_gan.errors import ConfigError
from anime_gan.web import DEFAULT_PORT, DEFAULT_UPLOAD_MB


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_multi_string(
        "model", [],
        "A model to offer (repeat for several): any path stylize --model takes, or a downloaded official name "
        "(hayao-v2). The official weights and training runs in the weights folder (./checkpoints or "
        "$ANIME_GAN_WEIGHTS_DIR) are listed too.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; the page has no login, so 0.0.0.0 opens "
                        "it to every machine that can reach this one.")
    flags.DEFINE_integer("port", DEFAULT_PORT, "Port to listen on (0: a free one).", lower_bound=0,
                         upper_bound=65535)
    flags.DEFINE_integer(
        "max_side", None,
        f"Largest image side accepted when a model is weights (default {C.DEFAULT_MAX_SIDE}); a SavedModel keeps "
        "the cap it was exported with. The page can set a lower cap.", lower_bound=C.MIN_SIDE)
    flags.DEFINE_integer("max_upload_mb", DEFAULT_UPLOAD_MB, "Largest upload (image or video) in MB.",
                         lower_bound=1)


def main(argv):
    """The command (run by `anime_gan.cli.run`): serves until Ctrl-C, then exits 0."""
    from absl import flags

    # Imported here: TensorFlow loads after cli.run's quiet import, and Flask only for this command.
    from anime_gan.web import choices, server

    FLAGS = flags.FLAGS
    cli.reject_arguments(argv)
    found = choices.find_models(FLAGS.model)
    if not found:
        raise ConfigError(choices.no_model_message())
    models = choices.Models(found, FLAGS.max_side)
    with tempfile.TemporaryDirectory(prefix="anime_gan_app-") as work_dir:
        page = server.Server(server.create_app(models, work_dir, FLAGS.max_upload_mb * 2**20), FLAGS.host,
                             FLAGS.port)
        listed = "; ".join(f"{c.name} ({c.style})" for c in found)
        print(f"models: {listed}", flush=True)
        page.warn_if_reachable()
        print(f"open {page.url} in a browser (Ctrl-C stops)", flush=True)
        page.serve_until_interrupted()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
