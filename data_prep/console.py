"""How every command of the project talks to the user: one plain logger, one error contract.

Every command (`python -m data_prep`, and `anime_gan.train`, `stylize`, `export`, `convert` through
`anime_gan.cli`) runs its `main` with `run`, and every library module logs to
`logging.getLogger(__name__)`. This lives at the bottom, in `data_prep`, because `data_prep` imports
nothing from `anime_gan` while `anime_gan` may import `data_prep`.

- Messages: `setup_logging(name)` gives the logger `name` (and so its children, e.g.
  "data_prep.report") one handler that writes plain lines to stderr, `warning: ` / `error: ` in
  front of warnings and errors, through `tqdm.write`, so a progress bar on the terminal is not torn.
- Exit codes: 0 on success; 2 (EXIT_USER_ERROR) on an error the user can fix (a flag, a path, a
  file), told in one sentence `error: ...` and no traceback; 1 (EXIT_FAILED) when the work ran but
  part of it failed (the command says which, e.g. the images `stylize` could not read); 130 on
  Ctrl-C. A flag absl cannot parse is a user error too. (absl's own --help exits with 1.)
"""
from __future__ import annotations

import logging
import re
import sys

from absl import app, flags

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class PlainHandler(logging.Handler):
    """Writes `message` (INFO), `warning: message`, `error: message` to stderr above any progress bar."""

    PREFIXES = ((logging.ERROR, "error: "), (logging.WARNING, "warning: "))

    def format(self, record: logging.LogRecord) -> str:
        prefix = next((p for level, p in self.PREFIXES if record.levelno >= level), "")
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def setup_logging(*names: str, level: int = logging.INFO) -> None:
    """Gives each logger in `names` (and so its children) one PlainHandler; repeated calls change nothing.

    The loggers stop propagating, so absl's handler on the root logger does not print the same
    message a second time in its own format.
    """
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, PlainHandler) for h in logger.handlers):
            logger.addHandler(PlainHandler())
        logger.setLevel(level)
        logger.propagate = False


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a flag error as a user error: `error: ...` and exit 2 (absl: 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        missing = re.findall(r"Flag (--\w+) must have a value other than None", str(e))
        if missing:  # absl says it once per required flag, in two sentences each
            message = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
        else:
            message = " ".join(str(e).split()).rstrip(".")  # absl's text may span lines
        print(f"error: {message}; pass --help to list the flags.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run(main, user_errors: tuple = (), failures: tuple = (), loggers: tuple = ("data_prep",), prepare=None):
    """Runs `main(argv)` as a command with absl's `app.run` and the exit codes of the module docstring.

    user_errors: exception types that mean "the user can fix this" (exit 2, one line); failures:
    types that mean "the work ran but stopped or partly failed" (exit 1, one line); loggers: the
    logger names given a PlainHandler; prepare(): called after the flags are parsed, before `main`.
    Any other exception is a bug and keeps its traceback.
    """
    log = logging.getLogger(loggers[0] if loggers else __name__)

    def wrapped(argv):
        setup_logging(*loggers)
        try:
            if prepare is not None:
                prepare()
            return main(argv)
        except KeyboardInterrupt:
            log.error("interrupted (Ctrl-C).")
            return EXIT_INTERRUPTED
        except app.UsageError as e:
            log.error("%s", e)
            return EXIT_USER_ERROR
        except user_errors as e:
            log.error("%s", e)
            return EXIT_USER_ERROR
        except failures as e:
            log.error("%s", e)
            return EXIT_FAILED

    app.run(wrapped, flags_parser=parse_flags)
