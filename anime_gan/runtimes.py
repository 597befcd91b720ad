"""Print (or measure) this machine's table of inference runtimes, the one `--runtime=auto` picks from.

    python -m anime_gan.runtimes               # prints this machine's table of measured runtimes
    python -m anime_gan.runtimes --calibrate --model=checkpoints/hayao   # measures it now

Runtimes: tensorflow (always), onnxruntime, openvino and litert (each an optional package). `auto` is
the fastest runtime this machine has measured at the precision asked (float32: at >= 60 dB from
TensorFlow float32; float16, int8: the fastest that runs it); one entry per architecture and precision,
each printed with how `auto` chose. `make bench` (sections runtimes and int8), `--calibrate` (every
precision with two runtimes or more) or the first `--runtime=auto` writes the entries. From Python:

    >>> from anime_gan.inference import load_model
    >>> stylizer = load_model("checkpoints/hayao", runtime="auto")
    >>> anime = stylizer(photos_uint8)          # uint8 [N, H, W, 3] -> uint8 [N, H, W, 3]

(see `anime_gan.inference.runtimes` and `anime_gan.inference.runners`).
"""

from __future__ import annotations

from anime_gan import cli
from anime_gan.errors import ConfigError
from anime_gan.inference import runtimes


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_boolean("calibrate", False, "Measure the installed runtimes now, at each precision, and store this "
                         "machine's entries.")
    flags.DEFINE_string("model", None, "The generator --calibrate times (anything load_generator reads).")


def main(argv):
    """`python -m anime_gan.runtimes [--calibrate --model=PATH]`: print (or measure) the table."""
    from absl import flags

    cli.reject_arguments(argv)
    FLAGS = flags.FLAGS
    if FLAGS.calibrate:
        if not FLAGS.model:
            raise ConfigError("--calibrate needs --model=PATH (the generator to time).")
        runtimes.calibrate_model(FLAGS.model)
    print(f"{runtimes.table_path()}:")
    print(runtimes.format_table(runtimes.read_table()))
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
