"""NaN/infinity checks: a run that computes non-finite numbers stops there, saying where.

Samplers check their latents after every step (a small reduction: negligible next to a model call),
the inference pipeline checks text embeddings and decoded videos, the decoding script its input latents.
"""
from __future__ import annotations

import numpy as np

from ..errors import NonFiniteError


def nonfinite_rows(x) -> list[int]:
    """Positions along the first axis of ``x`` (a MindSpore tensor or an array) holding NaN or infinity."""
    if hasattr(x, "isfinite") and not isinstance(x, np.ndarray):
        ok = x.isfinite().reshape(x.shape[0], -1).all(axis=1).asnumpy()
    else:
        arr = np.asarray(x)
        ok = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    return [int(i) for i in np.flatnonzero(~ok)]


def nonfinite_cause(dtype: str, guidance: str) -> str:
    """The likely cause of NaN/inf from a sampler running in ``dtype`` (a canonical name) with ``guidance``
    (the scale options as text, for the message)."""
    if dtype == "float16":
        return "float16 overflow (use --dtype bf16 on Ascend, or fp32)"
    return f"weights holding NaN/inf (check --ckpt_path / from_pretrained) or an extreme guidance scale ({guidance})"


def check_sampler_step(z, sampler: str, step: int, steps: int) -> None:
    """Raise :class:`NonFiniteError` when a row of the latents ``z`` (B, ...) is no longer finite."""
    rows = nonfinite_rows(z)
    if rows:
        raise NonFiniteError(f"{sampler}: the latents of batch position(s) {rows} became NaN/inf at step "
                             f"{step} of {steps}", step=step, rows=rows)
