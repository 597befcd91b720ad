"""What every command (`python -m anime_gan.train`, `stylize`, `export`, `convert`) shares: `run(main)`
(logging, exit codes, see below) and a quiet TensorFlow import.

`quiet_tensorflow_import()` runs before a command first imports TensorFlow. TensorFlow 2.21 prints
its start-up banner (oneDNN round-off notice, CPU feature guard, absl's "All log messages before
absl::InitializeLog()") from C++ straight to file descriptor 2 during `import tensorflow`, twice,
and TF_CPP_MIN_LOG_LEVEL no longer hides it. We catch that descriptor while TensorFlow loads and
replay every line that is not one of those known banner lines, so a real import error or warning
still reaches the user. ANIME_GAN_TF_BANNER=1 shows the banner again.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# The lines TensorFlow's import prints on every start, and nothing else.
_BANNER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions:.*rebuild TensorFlow"
)


def quiet_tensorflow_import() -> None:
    """Imports TensorFlow with its start-up banner filtered out (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines
    if "tensorflow" in sys.modules or os.environ.get("ANIME_GAN_TF_BANNER") == "1":
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not _BANNER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


# ---- running a command --------------------------------------------------------------------------
LOGGERS = ("anime_gan", "data_prep")  # the commands read datasets, so data_prep's messages show too


def setup_logging() -> None:
    """One plain handler on the "anime_gan" and "data_prep" loggers: `message`, `warning: message`,
    `error: message` on stderr, above any progress bar (see `data_prep.console`). `run` calls it."""
    from data_prep import console

    console.setup_logging(*LOGGERS)


def _quiet_tensorflow_logs() -> None:
    # TensorFlow logs a dozen INFO lines per SavedModel save/load and checkpoint write through absl's
    # handler; --verbosity=0 brings them back.
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _prepare() -> None:
    quiet_tensorflow_import()
    _quiet_tensorflow_logs()


def reject_arguments(argv, hint="") -> None:
    """Commands take flags only: words absl left unparsed are one sentence (`hint` may add a clause)."""
    from anime_gan.errors import ConfigError

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}{hint}; flags are written --name=value.")


def run(main, define_flags=None) -> None:
    """The one way every command (train, stylize, export, convert) runs `main(argv)`.

    absl's `app.run` with the project's contract (`anime_gan.errors`): a flag absl cannot parse or a
    USER_ERRORS exception prints `error: <message>` and exits 2; TrainingStopped prints its message
    and exits 1; Ctrl-C exits 130 without a traceback; `main`'s own return value is the exit status
    otherwise. Before `main`: `define_flags()` if given (flags exist only when a module runs as a
    command), logging (`setup_logging`) and a quiet TensorFlow import.
    """
    from anime_gan.errors import USER_ERRORS, TrainingStopped
    from data_prep import console

    if define_flags is not None:
        define_flags()
    console.run(main, user_errors=USER_ERRORS, failures=(TrainingStopped,), loggers=LOGGERS, prepare=_prepare)
