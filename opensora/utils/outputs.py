"""Output folders and output names: created and tested before any model is loaded, never escaped, never shared.

* :func:`prepare_output_dir`: the folder exists (created if needed) and a file can be written in it, or an
  :class:`OutputError` names the option; checked before anything expensive. Folders created by a run that
  then fails before writing anything are removed again (``opensora.utils.cli``).
* :func:`inside`: an output path built from user text (a sample name, a csv path, a prompt) must stay inside
  its output folder.
* :func:`check_distinct`: two inputs that would write one file are an error before any work, listing them
  (compared case-insensitively, so that a run behaves the same on case-insensitive file systems).
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable

from ..errors import InputError
from .files import remove_stale_temporaries, temporary_path

_created: list[str] = []  # folders this process created, topmost first


class OutputError(InputError):
    """An output folder or output name that cannot be used."""


def prepare_output_dir(path: str, option: str, clean_temporaries: bool = True) -> str:
    """Create ``path`` if needed and check that a file can be written in it -> its absolute path.

    ``option`` names it in errors (``--save-dir``). Stale temporaries a killed run left in it (or its
    subfolders) are removed."""
    if not path:
        raise OutputError(f"{option} is required")
    folder = os.path.abspath(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: exists and is not a folder")
    top = folder
    while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    existed = os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot create the folder ({err.strerror or err})") from None
    if not existed:
        _created.append(top)  # the highest folder this call created
    probe = temporary_path(os.path.join(folder, "write-test"))
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write in this folder ({err.strerror or err})") from None
    if clean_temporaries:
        remove_stale_temporaries(folder, recursive=True)  # outputs may sit in subfolders (latents/, a csv's)
    return folder


def remove_created_if_empty() -> None:
    """Remove the folders :func:`prepare_output_dir` created in this process if they are still empty."""
    for top in reversed(_created):
        for directory, _, _ in os.walk(top, topdown=False):  # children before their parent
            try:
                os.rmdir(directory)
            except OSError:
                pass
    _created.clear()


def forget_created() -> None:
    _created.clear()


def inside(folder: str, relative: str, what: str) -> str:
    """``folder/relative`` normalised; an :class:`OutputError` when it leaves ``folder``."""
    base = os.path.normpath(os.path.abspath(folder))
    target = os.path.normpath(os.path.join(base, relative))
    if os.path.isabs(relative) or os.path.commonpath([base, target]) != base:
        raise OutputError(f"{what} {relative!r} would be written outside {folder} (to {target}); output names "
                          "must stay inside their output folder")
    return os.path.normpath(os.path.join(folder, relative))


def check_distinct(items: Iterable[tuple[str, str]], what: str, limit: int = 5) -> None:
    """``items``: (input label, output path). Two different inputs mapped to one output are an error."""
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for label, path in items:
        groups[os.path.normcase(os.path.normpath(path)).casefold()].setdefault(label, path)
    clashes = [(path_by_label, key) for key, path_by_label in groups.items() if len(path_by_label) > 1]
    if not clashes:
        return
    lines = []
    for path_by_label, _ in clashes[:limit]:
        labels = list(path_by_label)
        lines.append(f"  {' and '.join(labels)} -> {path_by_label[labels[0]]}")
    more = f"\n  ... and {len(clashes) - limit} more" if len(clashes) > limit else ""
    raise OutputError(f"{len(clashes)} output file(s) would be written by more than one {what} (one would "
                      f"silently replace the other):\n" + "\n".join(lines) + more)
