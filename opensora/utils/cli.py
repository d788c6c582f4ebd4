"""Entry points of the scripts and tools: a user's mistake is one ``error: ...`` line and an exit code.

Bad input (a wrong flag value, a missing file, a checkpoint that does not fit) raises one of the
project's errors, all ``ValueError``/``FileNotFoundError`` subclasses (``ConfigError``,
``CheckpointError``, ``CacheError``, ...). A script prints that message instead of a traceback;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def report_user_errors(main: Callable | None = None, *, errors=USER_ERRORS, exit_code: int = 1):
    """Decorator for ``main(argv=None) -> int``: the listed errors become ``error: ...`` and ``exit_code``."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except errors as err:
                print(f"error: {err}", file=sys.stderr)
                return exit_code

        return wrapper

    return decorate(main) if main is not None else decorate


def run_main(main: Callable, *, errors=USER_ERRORS, exit_code: int = 1) -> None:
    """``if __name__ == "__main__": run_main(main)``: exit with main's code (0 for a non-int result)."""
    code = report_user_errors(main, errors=errors, exit_code=exit_code)()
    sys.exit(code if isinstance(code, int) else 0)
