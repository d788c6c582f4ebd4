"""The project's error types and the exit status each one gives a script.

* :class:`InputError` (exit 2): the user's input is wrong (a flag, a config key, a file, a size). Raised
  where the input is checked, before the expensive part; the message names the option or file and says
  how to fix it. ``ConfigError``, ``CheckpointError``, ``CacheError``, ``PromptError``, ``OutputError``...
  all derive from it. It is a ``ValueError``, so older ``except ValueError`` code still sees it.
* :class:`RunError` (exit 1): the run could not finish its job for a reason that is not a bug in the
  program: a sampler produced NaN, no sample of the data could be read, fewer outputs than asked for were
  written, the disk is full. The message says what happened, where, and the likely cause.
* :class:`Interrupted` (exit 143): SIGTERM, raised in the main thread by the scripts' signal handler so that
  ``finally`` blocks remove temporary files; SIGINT is Python's ``KeyboardInterrupt`` (exit 130).
* Anything else is a bug: the scripts print its traceback and say so (exit 1).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # RunError, or a bug (with its traceback)
EXIT_BAD_INPUT = 2  # InputError (argparse's usage errors exit 2 too)
EXIT_SIGINT = 130  # 128 + SIGINT
EXIT_SIGTERM = 143  # 128 + SIGTERM


class InputError(ValueError):
    """Bad input from the user: one line naming the option or file, exit status 2."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class RunError(RuntimeError):
    """The run could not do its job (not a program bug): one line, exit status 1."""


class NonFiniteError(RunError):
    """A sampler, decoder or training step produced NaN or infinity. ``step`` (1-based, or None) and
    ``rows`` (positions in the batch) say where, so that callers can name the samples."""

    def __init__(self, message: str, step: int | None = None, rows: list[int] | None = None):
        super().__init__(message)
        self.step, self.rows = step, list(rows or [])


class Interrupted(BaseException):
    """SIGTERM received: unwinds like ``KeyboardInterrupt`` (not an ``Exception``: nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
