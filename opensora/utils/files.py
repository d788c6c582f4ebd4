"""Reading the user's text files and writing every output atomically, with one temporary-file naming.

Every writer of the project (videos, npz caches, latents, checkpoints, converted weights, logs, random
weights) goes through :func:`atomic_write`: the data goes to ``.NAME.tmpPID.EXT`` next to the target and
is renamed onto it only when complete, so a crash or a signal never leaves a half file that a rerun would
trust. On an exception (also Ctrl-C and SIGTERM, see ``opensora.utils.cli``) the temporary is removed; a
process killed with SIGKILL cannot clean up, so each script calls :func:`remove_stale_temporaries` on its
output folder first: temporaries of this naming whose process is gone are deleted.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from contextlib import contextmanager
from typing import Iterator

from ..errors import InputError, MissingFileError, RunError

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(?P<ext>\.[^.]*)?$")


def temporary_path(path: str) -> str:
    """``dir/.NAME.tmpPID.EXT`` for ``dir/NAME.EXT`` (the extension kept: writers pick formats by it)."""
    directory, name = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(name)[1]
    return os.path.join(directory, f".{name}.tmp{os.getpid()}{ext}")


def is_temporary(name: str) -> bool:
    return _TEMPORARY.match(os.path.basename(name)) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from a reused pid: this process has not opened any yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def remove_stale_temporaries(folder: str, recursive: bool = False) -> int:
    """Delete temporaries (of :func:`temporary_path`'s naming) left in ``folder`` by processes that are gone;
    those of a process still running (another job writing there) are kept. Returns how many were removed."""
    if not folder or not os.path.isdir(folder):
        return 0
    removed = 0
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for directory, dirs, files in walk:
        for name in list(files) + list(dirs):
            match = _TEMPORARY.match(name)
            if match and not _alive(int(match.group("pid"))):
                _remove(os.path.join(directory, name))
                removed += 1
                if name in dirs:
                    dirs.remove(name)
    if removed:
        logger.info("removed %d temporary file(s) left in %s by an interrupted run", removed, folder)
    return removed


@contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """``with atomic_write(path) as tmp: write(tmp)``: ``tmp`` is renamed onto ``path`` when the block
    ends normally, and removed otherwise. ``tmp`` may also be made a directory (renamed as a whole; if
    ``path`` is by then a directory made by another process, that one is kept).
    An ``OSError`` while writing (disk full, permissions) becomes a :class:`RunError` naming ``path``."""
    path = os.path.abspath(path)
    tmp = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            return  # a directory another process finished meanwhile is kept (ours is removed below)
        os.replace(tmp, path)
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        _remove(tmp)


def write_text_atomically(path: str, text: str) -> str:
    """``text`` to ``path`` (UTF-8) through :func:`atomic_write`; -> the path."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def read_text(path: str, what: str = "file") -> str:
    """A UTF-8 text file; a missing or undecodable one is an :class:`InputError` naming it (and the line)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"{what} {path}: not UTF-8 text (line {line}: byte 0x{data[err.start]:02x} cannot be "
                         "decoded); save it as UTF-8") from None
