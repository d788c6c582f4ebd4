"""Checkpoint reading, key/shape checking with readable reports, and atomic writing.

``mindspore.load_param_into_net`` does not raise on missing or unexpected keys, so every load
here goes through :func:`compare_shapes` first and refuses (or reports) what does not match.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

import mindspore as ms
from mindspore import nn

from ..errors import InputError
from .files import atomic_write


class CheckpointError(InputError):
    """A checkpoint does not fit the model; the message lists every problem."""


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)  # the model needs them, the checkpoint lacks them
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, unknown to the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, checkpoint, model)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 50) -> str:
        lines = []
        for title, items in (("missing from the checkpoint", self.missing),
                             ("not used by the model", self.unexpected)):
            if items:
                lines.append(f"{len(items)} key(s) {title}:")
                lines += [f"  {k}" for k in items[:limit]] + ([f"  ... {len(items) - limit} more"] if len(items) > limit else [])
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} key(s) with a different shape (checkpoint vs model):")
            lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:limit]]
        return "\n".join(lines)


def compare_shapes(checkpoint: Mapping[str, Iterable[int]], model: Mapping[str, Iterable[int]]) -> KeyReport:
    """Key-by-key and shape-by-shape comparison of two name -> shape maps."""
    report = KeyReport()
    for name, shape in model.items():
        if name not in checkpoint:
            report.missing.append(name)
        elif tuple(checkpoint[name]) != tuple(shape):
            report.mismatched.append((name, tuple(checkpoint[name]), tuple(shape)))
    report.unexpected = [name for name in checkpoint if name not in model]
    return report


def require_shapes(values: Mapping, shapes: Mapping[str, Iterable[int]], source: str) -> None:
    """Raise :class:`CheckpointError` listing every name of ``shapes`` that ``values`` lacks or holds with
    another shape. Extra names in ``values`` are allowed (e.g. an EMA file also holds frozen parameters)."""
    report = compare_shapes({k: v.shape for k, v in values.items()}, shapes)
    report.unexpected = []
    if not report.ok:
        raise CheckpointError(f"{source} does not match:\n{report.format()}")


def model_shapes(net: nn.Cell) -> dict[str, tuple]:
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def _mem_available_bytes() -> int | None:
    """Linux's MemAvailable: free memory plus what the kernel can reclaim (page cache)."""
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


@contextmanager
def _page_cache_counts_as_available():
    """MindSpore 2.10 refuses to load a ``.ckpt`` larger than *free* memory (``SC_AVPHYS_PAGES``), which
    excludes the page cache: right after writing a few-GB checkpoint, loading it fails although the
    kernel would give the memory back. Use MemAvailable for that check while loading."""
    from mindspore.train import serialization

    original = getattr(serialization, "_get_available_memory", None)
    available = _mem_available_bytes()
    if original is None or available is None:
        yield
        return
    serialization._get_available_memory = lambda: available
    try:
        yield
    finally:
        serialization._get_available_memory = original


def read_checkpoint(path: str) -> dict[str, ms.Parameter]:
    """Read a MindSpore ``.ckpt`` or a ``.safetensors`` file (no torch needed) into name -> Parameter."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        return ms.load_checkpoint(path, format="safetensors")
    if path.endswith(".ckpt"):
        with _page_cache_counts_as_available():
            return ms.load_checkpoint(path)
    raise CheckpointError(
        f"{path}: unsupported checkpoint format; use a MindSpore .ckpt or a .safetensors file "
        "(convert PyTorch .pth/.bin files with the scripts in tools/)"
    )


def load_into(net: nn.Cell, params: Mapping[str, ms.Parameter], source: str = "checkpoint",
              strict: bool = True, ignore: Iterable[str] = ()) -> KeyReport:
    """Load ``params`` into ``net`` after checking every key and shape.

    ``strict``: any missing, unexpected or mis-shaped key raises :class:`CheckpointError` with the
    full list and nothing is loaded. Otherwise matching keys are loaded and the report returned.
    ``ignore``: names that may be absent from the checkpoint (e.g. buffers recomputed at build).
    """
    report = compare_shapes({k: v.shape for k, v in params.items()}, model_shapes(net))
    ignore = set(ignore)
    report.missing = [k for k in report.missing if k not in ignore]
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not match the model:\n{report.format()}")
    bad = {name for name, _, _ in report.mismatched} | set(report.unexpected)
    usable = {k: v for k, v in params.items() if k not in bad}
    net_dtypes = {p.name: p.dtype for p in net.get_parameters()}
    for name, value in usable.items():
        if value.dtype != net_dtypes[name]:
            usable[name] = ms.Parameter(value.astype(net_dtypes[name]), name=name)
    ms.load_param_into_net(net, usable, strict_load=False)
    return report


def load_checkpoint(net: nn.Cell, path: str, strict: bool = True, ignore: Iterable[str] = ()) -> KeyReport:
    return load_into(net, read_checkpoint(path), source=path, strict=strict, ignore=ignore)


def save_checkpoint(params, path: str) -> None:
    """Write a ``.ckpt`` atomically (temporary file, then rename), so a crash never leaves half a file.

    ``params``: a Cell, or a list of ``{"name": ..., "data": Tensor}``, or a name -> array mapping.
    """
    if isinstance(params, Mapping):
        params = [{"name": k, "data": v if isinstance(v, ms.Tensor) else ms.Tensor(np.asarray(v))}
                  for k, v in params.items()]
    with atomic_write(path) as tmp:
        if tmp.endswith(".ckpt"):
            ms.save_checkpoint(params, tmp)
        else:  # MindSpore appends ".ckpt" to a name without it
            try:
                ms.save_checkpoint(params, tmp + ".ckpt")
                os.replace(tmp + ".ckpt", tmp)
            finally:
                if os.path.exists(tmp + ".ckpt"):
                    os.remove(tmp + ".ckpt")
