"""Random numbers for samplers: one NumPy generator, so a seed gives the same latents everywhere.

Samplers draw their in-loop noise (IDDPM's per-step noise, the re-noising of conditioned frames)
from a ``numpy.random.Generator`` instead of MindSpore's global RNG: results then depend only on
the seed, not on the device, the execution mode or what else ran in the process.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms


def make_rng(generator=None) -> np.random.Generator:
    """A Generator from a Generator, an int seed, or None (seed 0)."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(0 if generator is None else int(generator))


def randn(rng: np.random.Generator, shape) -> ms.Tensor:
    return ms.Tensor(rng.standard_normal(tuple(shape), dtype=np.float32))


def progress(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
