"""The one attention function every model calls.

Layout: ``q`` (B, N, Sq, D), ``k``/``v`` (B, N, Sk, D) ("BNSD"). ``mask``: boolean (or 0/1) tensor
broadcastable to (B, N, Sq, Sk) where **True means attend** (PyTorch's convention for boolean
masks). Two implementations share this interface:

* ``math``: softmax(Q K^T * scale) V with the scores and softmax in float32; runs everywhere.
* ``flash``: Ascend's ``ops.flash_attention_score``. It wants half precision, a mask whose 1 means
  *discard*, and ``scalar_value`` for the scale; :func:`flash_attention` does that conversion.

Which path runs is chosen once per model (``enable_flash_attn`` and the device) and logged.
"""
from __future__ import annotations

import logging

import mindspore as ms
from mindspore import ops

from . import forms

logger = logging.getLogger(__name__)

_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform distribution rather than NaN


_scores = ops.BatchMatMul(transpose_b=True)  # Q K^T without materialising K^T (a Transpose per call)


def math_attention(q, k, v, mask=None, scale: float | None = None, bias=None):
    """Reference attention in float32; returns the dtype of ``q``.

    ``bias``: optional additive score bias broadcastable to (B, N, Sq, Sk), e.g. T5's relative
    position bias; added in float32 before the mask.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q = q.astype(ms.float32)
    if scale != 1.0:  # a Python constant: callers that folded the scale in skip this pass
        q = q * scale
    scores = _scores(q, k.astype(ms.float32))
    if bias is not None:
        scores = scores + bias.astype(ms.float32)
    if mask is not None:
        scores = ops.masked_fill(scores, ops.logical_not(mask.astype(ms.bool_)), _NEG_INF)
    probs = ops.softmax(scores, axis=-1)
    return ops.matmul(probs, v.astype(ms.float32)).astype(dtype)


def _flash_kernel(q, k, v, head_num, attn_mask, scalar_value):
    """The Ascend kernel; a separate function so tests can replace it with a reference on the CPU."""
    return ops.flash_attention_score(
        q, k, v, head_num, attn_mask=attn_mask, scalar_value=scalar_value, input_layout="BNSD"
    )


def flash_attention(q, k, v, mask=None, scale: float | None = None, dtype=ms.float16):
    """Ascend flash attention with this module's interface (BNSD, True = attend)."""
    out_dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn_mask = None
    if mask is not None:
        # The kernel's mask marks positions to DISCARD, as uint8, with shape (B, 1 or N, Sq, Sk).
        keep = ops.broadcast_to(mask.astype(ms.bool_), (q.shape[0], mask.shape[1], q.shape[2], k.shape[2]))
        attn_mask = ops.logical_not(keep).astype(ms.uint8)
    if q.dtype not in (ms.float16, ms.bfloat16):
        q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    out = _flash_kernel(q, k, v, q.shape[1], attn_mask, scale)
    return out.astype(out_dtype)


def use_flash_attention(enable_flash_attn: bool) -> bool:
    """Flash attention only where it has a kernel (Ascend); elsewhere the math path, said once in the log."""
    use = bool(enable_flash_attn) and forms.flash_attention_available()
    if enable_flash_attn and not use:
        logger.info("enable_flash_attn requested but the device is not Ascend: using math attention")
    logger.info("attention path: %s", "flash" if use else "math")
    return use


def attention(q, k, v, mask=None, scale: float | None = None, use_flash: bool = False, bias=None):
    """Dispatch to the flash or math path (``use_flash`` is a Python constant, fixed at build time).

    An additive ``bias`` (T5's relative position bias) always takes the math path: the flash
    kernel's ``real_shift`` has layout restrictions that this project does not test.
    """
    if use_flash and bias is None:
        return flash_attention(q, k, v, mask, scale)
    return math_attention(q, k, v, mask, scale, bias)
