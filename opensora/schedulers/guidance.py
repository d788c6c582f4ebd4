"""Classifier-free guidance shared by every sampler: the text condition, one batched model call, the mix.

Upstream runs the model on ``[z; z]`` with ``[caption; null]`` embeddings and mixes the two halves
as ``uncond + scale * (cond - uncond)``. The unconditional half uses the model's *learned* null
caption embedding (``model.y_embedder.y_embedding``), not T5 applied to "" — or, as an addition
over upstream 1.2, the embedding of a negative prompt. Upstream passes the caption's token mask to
both halves (the null embedding has no mask of its own); :class:`TextCondition` does the same unless
a negative prompt brings its own mask.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

import mindspore as ms
from mindspore import ops

logger = logging.getLogger(__name__)


def to_tensor(value, dtype=ms.float32) -> ms.Tensor:
    if isinstance(value, ms.Tensor):
        return value.astype(dtype) if dtype is not None else value
    return ms.Tensor(np.asarray(value), dtype)


@dataclass
class TextCondition:
    """Caption embeddings for one batch: ``y`` (B, 1, L, D), ``mask`` (B, L) with 1 = real token,
    ``y_null`` (B, 1, L, D) for the unconditional branch and its ``mask_null`` (None: the caption's)."""

    y: Any
    mask: Any
    y_null: Any
    mask_null: Any = None

    def __post_init__(self):
        self.y = to_tensor(self.y)
        self.y_null = to_tensor(self.y_null)
        if self.y.ndim == 3:  # (B, L, D) -> (B, 1, L, D) as the models expect
            self.y = self.y.expand_dims(1)
        if self.y_null.ndim == 3:
            self.y_null = self.y_null.expand_dims(1)
        if self.y.shape != self.y_null.shape:
            raise ValueError(f"caption embeddings {tuple(self.y.shape)} and unconditional embeddings "
                             f"{tuple(self.y_null.shape)} must have the same shape (B, 1, L, D)")
        if self.mask is not None:
            self.mask = to_tensor(self.mask, ms.int32)
        if self.mask_null is not None:
            self.mask_null = to_tensor(self.mask_null, ms.int32)

    @property
    def batch_size(self) -> int:
        return int(self.y.shape[0])

    def doubled(self):
        """``[caption; unconditional]`` embeddings and masks for the guided batch of 2B."""
        y = ops.concat([self.y, self.y_null], axis=0)
        if self.mask is None:
            return y, None
        mask_null = self.mask if self.mask_null is None else self.mask_null
        return y, ops.concat([self.mask, mask_null], axis=0)


def apply_guidance(cond, uncond, scale: float, channels: int | None = None):
    """``uncond + scale * (cond - uncond)`` on the first ``channels`` channels (all when None);
    the remaining channels (e.g. the learned variance of IDDPM) are the conditional branch's."""
    if channels is None or channels >= cond.shape[1]:
        return uncond + scale * (cond - uncond)
    guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return ops.concat([guided, cond[:, channels:]], axis=1)


def conditioning(model: Callable, y, mask) -> dict:
    """The forward's caption keyword arguments for a prompt batch: what the model prepares once
    (``model.prepare_conditioning``, e.g. the caption keys/values of every block), or ``y`` and ``mask`` as they
    are for a model that prepares nothing (a plain function, as the schedulers' tests use)."""
    prepare = getattr(model, "prepare_conditioning", None)
    return dict(prepare(y, mask)) if prepare is not None else {"y": y, "mask": mask}


class GuidedModel:
    """Calls ``model(x, timestep, **conditioning, **extra, x_mask=...)`` once on the doubled batch.

    ``conditioning`` is what the model prepares once per prompt batch from the doubled captions
    (``model.prepare_conditioning(y, mask)``: e.g. the caption keys/values of every block), reused by every
    step. ``extra`` are the model's additional inputs (``fps``, ``height``, ``width``, ``num_frames``,
    ``ar``), repeated to the guided batch of 2B: the pipeline passes those the model family takes. The
    output is cast to float32 and split into the conditional and unconditional halves.
    """

    def __init__(self, model: Callable, text: TextCondition, model_kwargs: Mapping[str, Any] | None = None,
                 dtype=ms.float32):
        self.model = model
        self.dtype = dtype
        self.batch_size = text.batch_size
        y, mask = text.doubled()
        self.kwargs: dict[str, Any] = conditioning(model, y.astype(dtype), mask)
        for key, value in (model_kwargs or {}).items():
            if value is not None:
                self.kwargs[key] = self._batch(value)

    def _batch(self, value) -> ms.Tensor:
        arr = value.asnumpy() if isinstance(value, ms.Tensor) else np.asarray(value, dtype=np.float32)
        arr = np.asarray(arr, dtype=np.float32).reshape(-1)
        if arr.size == 1:
            arr = np.repeat(arr, self.batch_size)
        if arr.size != self.batch_size:
            raise ValueError(f"model argument of {arr.size} values for a batch of {self.batch_size}")
        return ms.Tensor(np.concatenate([arr, arr]), self.dtype)

    def __call__(self, z, t, x_mask=None):
        """``z`` (B, C, T, H, W), ``t`` (B,) -> (conditional output, unconditional output), float32."""
        b = self.batch_size
        z2 = ops.concat([z, z], axis=0).astype(self.dtype)
        t2 = ops.concat([t, t], axis=0).astype(self.dtype)
        kwargs = dict(self.kwargs)
        if x_mask is not None:
            kwargs["x_mask"] = ops.concat([x_mask, x_mask], axis=0)
        out = self.model(z2, t2, **kwargs)
        if isinstance(out, dict):
            out = out["x"]
        out = out.astype(ms.float32)
        return out[:b], out[b:]
