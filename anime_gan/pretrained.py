"""The pretrained generators in one command: download, check, convert, export.

    python -m anime_gan.pretrained list
    python -m anime_gan.pretrained download hayao-v2 [--dir=checkpoints] [--force] [--mirror=URL]
    python -m anime_gan.stylize --model=hayao-v2 --input=photo.jpg --output=anime.jpg

`download NAME` fetches the official TF1 checkpoint of NAME (`anime_gan.weights.catalogue`), or the
PyTorch port's `.pt` file (face-paint-512-v2, face-paint-512-v1, celeba-distill: converted in the port's
own mode), converts it and exports a SavedModel (--nosaved_model skips it) into DIR/NAME/:
`generator.weights.h5`, `saved_model/` (TF Serving) and `SOURCE.json` (what was downloaded, its SHA-256,
the date); see `anime_gan.weights.install`. A failed transfer resumes when the same command runs again; a
second run of a complete download does nothing (--force does it again). Every model path (`stylize
--model`, `export --checkpoint_dir`, `anime_gan.load_generator`) then also accepts the bare name, looked
up in DIR (default `checkpoints`, or $ANIME_GAN_WEIGHTS_DIR). --mirror (or $ANIME_GAN_WEIGHTS_MIRROR)
replaces https://github.com in every URL. Offline (a host that does not resolve, a refused connection)
the command stops at once and names --mirror and the manual route (fetch the files elsewhere, then
`python -m anime_gan.convert`); `list` shows each model's origin and terms.
"""

from __future__ import annotations

import functools

from anime_gan import constants as C
from anime_gan.errors import ConfigError
from anime_gan.weights import catalogue


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string("dir", None, f"Folder the models are written into (default ${catalogue.DIR_ENV}, else "
                        f"./{catalogue.DEFAULT_DIR}); --model=NAME looks there.")
    flags.DEFINE_boolean("force", False, "Download (from the first byte) and convert again even if DIR/NAME "
                         "is complete; also replaces a DIR/NAME not written by this command.")
    flags.DEFINE_string("mirror", None, f"Replaces {catalogue.GITHUB} in every download URL (default "
                        f"${catalogue.MIRROR_ENV}).")
    flags.DEFINE_integer("retries", 5, "Retries of a broken transfer (each resumes where it broke); a server "
                         "that cannot be reached at all (offline) is not retried.", lower_bound=0)
    flags.DEFINE_boolean("saved_model", True, "Also export DIR/NAME/saved_model/ for TF Serving.")
    flags.DEFINE_integer("max_side", C.DEFAULT_MAX_SIDE, "Largest image side the exported SavedModel accepts.",
                         lower_bound=C.MIN_SIDE)


USAGE = "pass `list` or `download NAME...` (names: " + ", ".join(catalogue.CATALOGUE) + ")"


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    FLAGS = flags.FLAGS
    args = argv[1:]
    if not args or args[0] not in ("list", "download"):
        raise ConfigError(f"unknown command {' '.join(args)!r}; {USAGE}." if args else f"no command; {USAGE}.")
    if args[0] == "list":
        if len(args) > 1:
            raise ConfigError(f"list takes no names, got {' '.join(args[1:])}; {USAGE}.")
        print("\n".join(catalogue.listing(FLAGS.dir)))
        return 0
    names = args[1:]
    if not names:
        raise ConfigError(f"download needs a name; {USAGE}.")
    for name in names:
        catalogue.entry(name)  # every name checked before anything is downloaded
    # The model code is imported only now: `list` and a wrong name need none of it.
    from anime_gan.deploy.saved_model import export_saved_model
    from anime_gan.weights.install import download

    saved_model = functools.partial(export_saved_model, max_side=FLAGS.max_side) if FLAGS.saved_model else None
    for name in names:
        result = download(name, FLAGS.dir, FLAGS.force, FLAGS.mirror, retries=FLAGS.retries, saved_model=saved_model)
        print(result.sentence())
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    cli.run(main, define_flags)
