"""Entry points of the scripts and tools: one line for a user's mistake, a traceback for a bug.

Exit status (also in the README, "What happens when"):

====  ===========================================================================================
0     the job is done (every output asked for exists)
1     the run failed (:class:`~opensora.errors.RunError`: NaN from a sampler, unreadable data, fewer
      outputs than asked, disk full), or a bug in the program (its traceback is printed, and a line
      saying it is a bug)
2     bad input (:class:`~opensora.errors.InputError`: a flag, config key, file or size), found before
      the expensive part; the message names the option or file
130   interrupted by SIGINT (Ctrl-C); 143: terminated by SIGTERM. Finished outputs are kept, temporary
      files are removed, and a rerun of the same command removes any a killed run left behind
====  ===========================================================================================

Only the project's own error types become one line: they are raised where input is checked (a YAML
syntax error, a file that is not UTF-8, an unreadable image or npz are turned into them where the file is
read). Any other exception is a bug and keeps its traceback. ``OPENSORA_TRACEBACK=1`` prints the
traceback of every error.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import traceback
from typing import Callable

from ..errors import (EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_SIGINT, EXIT_SIGTERM, InputError, Interrupted,
                      RunError)

BUG_LINE = ("This is a bug in the program, not a problem with your input: please report it with the "
            "traceback above.")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _show_traceback() -> bool:
    return os.environ.get("OPENSORA_TRACEBACK", "").lower() not in ("", "0", "false", "no")


def exit_status(err: BaseException) -> int:
    """Print what a script prints for ``err`` and return the exit status it gives."""
    from . import outputs

    outputs.remove_created_if_empty()  # a failed run leaves no empty output folder behind
    if isinstance(err, KeyboardInterrupt):
        _say("interrupted (SIGINT): finished outputs are kept, no partial file is left")
        return EXIT_SIGINT
    if isinstance(err, Interrupted):
        # MindSpore's C++ SIGINT handler, installed again by every graph run, ends the process with SIGTERM:
        # a Ctrl-C during graph-mode work arrives here (runtime.py reclaims the handlers for the rest)
        _say(f"terminated ({signal.Signals(err.signum).name}; also Ctrl-C while MindSpore runs a graph): finished "
             "outputs are kept, no partial file is left")
        return EXIT_SIGTERM
    if isinstance(err, (InputError, RunError)):
        if _show_traceback():
            traceback.print_exception(err)
        _say(f"error: {err}")
        return EXIT_BAD_INPUT if isinstance(err, InputError) else EXIT_FAILURE
    traceback.print_exception(err)
    _say(BUG_LINE)
    return EXIT_FAILURE


def script_main(main: Callable) -> Callable:
    """Decorator for ``main(argv=None) -> int | None``: returns the exit status instead of raising (so tests
    can call ``main([...])`` in process and check it); a result that is not an int means 0."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except (Exception, KeyboardInterrupt, Interrupted) as err:  # noqa: BLE001 (sorted in exit_status)
            return exit_status(err)
        from . import outputs

        outputs.forget_created()
        return code if isinstance(code, int) else 0

    wrapper.unwrapped = main
    return wrapper


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


_installed = False


def install_signal_handlers() -> None:
    """SIGTERM unwinds the main thread like Ctrl-C does (``finally`` blocks run, temporaries go); Ctrl-C is
    Python's ``KeyboardInterrupt``."""
    global _installed
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _installed = True


def reclaim_signal_handlers() -> None:
    """Put the scripts' handlers back after MindSpore's runtime replaced them: when it first runs an operator
    it installs its own SIGINT handler (C++), which ends the process by SIGTERM, so Ctrl-C would exit 143
    "terminated" instead of 130 with ``finally`` blocks run in between. Only where :func:`run_main` installed
    them, and in the main thread (a library caller, e.g. a web app, keeps its own)."""
    if _installed and threading.current_thread() is threading.main_thread():
        install_signal_handlers()


def run_main(main: Callable) -> None:
    """``if __name__ == "__main__": run_main(main)``: signals handled, exit with main's status."""
    install_signal_handlers()
    if not hasattr(main, "unwrapped"):
        main = script_main(main)
    sys.exit(main())
