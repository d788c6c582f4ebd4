"""Random numbers for samplers: NumPy generators, so a seed gives the same latents everywhere.

Samplers draw their in-loop noise (IDDPM's per-step noise, the re-noising of conditioned frames)
from ``numpy.random.Generator`` objects instead of MindSpore's global RNG: results then depend only on
the seed, not on the device, the execution mode or what else ran in the process.

A sampler's ``generator`` may be one Generator for the whole batch, or one per sample (a list, or
:class:`PerSample`): then row b of every draw comes from generator b only, so a sample's noise does
not depend on which other samples share its batch (the inference pipeline seeds each with
(seed, prompt index, sample, loop): batch size 1 and 3 give the same latents).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import mindspore as ms


class PerSample:
    """One generator per batch row: a draw of shape (B, ...) takes row b from generator b."""

    def __init__(self, generators: Sequence[np.random.Generator]):
        self.generators = list(generators)

    def standard_normal(self, shape, dtype=np.float32) -> np.ndarray:
        shape = tuple(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"a draw of {shape[0]} rows from {len(self.generators)} per-sample generators")
        return np.stack([g.standard_normal(shape[1:], dtype=dtype) for g in self.generators])


def make_rng(generator=None):
    """A Generator from a Generator, an int seed, or None (seed 0); a :class:`PerSample` from a list of
    Generators (or a PerSample)."""
    if isinstance(generator, (np.random.Generator, PerSample)):
        return generator
    if isinstance(generator, (list, tuple)):
        return PerSample([make_rng(g) for g in generator])
    return np.random.default_rng(0 if generator is None else int(generator))


def randn(rng, shape) -> ms.Tensor:
    return ms.Tensor(rng.standard_normal(tuple(shape), dtype=np.float32))


def progress(iterable, enabled, desc: str, total: int | None = None):
    """A sampler's step loop: ``enabled`` False (silent), True (a tqdm bar) or a callable ``report(done,
    total)`` run after each step (the web app's progress bar; raising in it stops the sampler there)."""
    if callable(enabled):
        return _reported(iterable, enabled, len(iterable) if total is None else total)
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _reported(iterable, report, total: int):
    for done, item in enumerate(iterable, 1):
        yield item
        report(done, total)  # the loop body of this item has finished
