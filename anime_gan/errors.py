"""The errors a user can cause, and what each command exits with (see `data_prep.console`).

- `UserError`: something the user can fix (a flag, a path, a file); its message is one sentence
  naming the thing and the fix. Every command prints it as `error: <message>` and exits with
  EXIT_USER_ERROR (2). Its subclasses also derive from the builtin type a caller would catch
  (ValueError, FileNotFoundError, FileExistsError), so `except ValueError` keeps working.
- `TrainingStopped`: the work ran but could not go on (e.g. a non-finite loss); EXIT_FAILED (1).
- Anything else is a bug and keeps its traceback.

`data_prep` cannot import this module (it sits below `anime_gan`), so its `DataError` stands
beside `UserError` in USER_ERRORS.
"""

from __future__ import annotations

from data_prep.console import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR
from data_prep.report import DataError

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USER_ERROR", "EXIT_INTERRUPTED", "USER_ERRORS",
    "first_line", "UserError", "ConfigError", "ModelError", "PathNotFoundError", "OutputExistsError", "TrainingStopped",
]


class UserError(Exception):
    """Something the user can fix; the message is one sentence naming the thing and the fix."""


class ConfigError(UserError, ValueError):
    """A flag or argument out of range, unknown or contradicting another."""


class ModelError(UserError, ValueError):
    """A model path that holds something else than the AnimeGAN generator (a mismatched checkpoint,
    another SavedModel, a file that is not a model)."""


class PathNotFoundError(UserError, FileNotFoundError):
    """A path the user named does not exist, or holds nothing of what was asked for."""


class OutputExistsError(UserError, FileExistsError):
    """An output path that would replace something the user may want to keep."""


class TrainingStopped(Exception):
    """The work ran but stopped before its end (e.g. a non-finite loss); the command exits with 1."""


USER_ERRORS = (UserError, DataError)


def first_line(error) -> str:
    """The first line of an exception's message, without its full stop (its type name if empty): the
    reason quoted inside our own one-sentence errors."""
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
