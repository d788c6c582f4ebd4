"""The one attention function every model calls.

Layout: ``q`` (B, N, Sq, D), ``k``/``v`` (B, N, Sk, D) ("BNSD"). ``mask``: boolean (or 0/1) tensor
broadcastable to (B, N, Sq, Sk) where **True means attend** (PyTorch's convention for boolean
masks). Two implementations share this interface:

* ``math``: softmax(Q K^T * scale) V with the softmax in float32; runs everywhere. Its precision follows the
  caller's upstream: ``scores_in_input_dtype=True`` is upstream's own math path (STDiT's ``Attention``,
  T5): Q·scale and QK^T in the input dtype, the softmax in float32, the probabilities cast back and PV in
  the input dtype; ``False`` (the default) computes everything in float32 from the inputs, as the fused
  kernels upstream calls elsewhere accumulate (xformers' memory-efficient attention, diffusers' VAE
  attention). In float32 both are the same.
* ``flash``: Ascend's ``ops.flash_attention_score`` in the inputs' half precision (a bfloat16 model stays
  bfloat16; float32 inputs take the math path, as upstream's flash-attn refuses them). It wants a mask whose
  1 means *discard* and ``scalar_value`` for the scale; :func:`flash_attention` does that conversion.

Whether a model may use flash attention is decided once (``enable_flash_attn`` and the device) and logged;
each call site then applies upstream's own rule (e.g. self attention only when the sequence is longer than
the batch), as Python constants of the compiled graph.
"""
from __future__ import annotations

import logging

import mindspore as ms
from mindspore import ops

from . import forms

logger = logging.getLogger(__name__)

_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform distribution rather than NaN


_scores = ops.BatchMatMul(transpose_b=True)  # Q K^T without materialising K^T (a Transpose per call)


HALF_PRECISION = (ms.float16, ms.bfloat16)


def math_attention(q, k, v, mask=None, scale: float | None = None, bias=None, scores_in_input_dtype: bool = False):
    """Reference attention; returns the dtype of ``q`` (see the module docstring for the precision).

    ``bias``: optional additive score bias broadcastable to (B, N, Sq, Sk), e.g. T5's relative
    position bias; added to the scores (in their dtype) before the mask.
    """
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = dtype if scores_in_input_dtype else ms.float32
    q = q.astype(compute)
    if scale != 1.0:  # a Python constant: callers that folded the scale in skip this pass
        q = q * scale
    scores = _scores(q, k.astype(compute))
    if bias is not None:
        scores = scores + bias.astype(compute)
    scores = scores.astype(ms.float32)
    if mask is not None:
        scores = ops.masked_fill(scores, ops.logical_not(mask.astype(ms.bool_)), _NEG_INF)
    probs = ops.softmax(scores, axis=-1).astype(compute)
    return ops.matmul(probs, v.astype(compute)).astype(dtype)


def _flash_kernel(q, k, v, head_num, attn_mask, scalar_value):
    """The Ascend kernel; a separate function so tests can replace it with a reference on the CPU."""
    return ops.flash_attention_score(
        q, k, v, head_num, attn_mask=attn_mask, scalar_value=scalar_value, input_layout="BNSD"
    )


def flash_attention(q, k, v, mask=None, scale: float | None = None):
    """Ascend flash attention with this module's interface (BNSD, True = attend), in the inputs' half precision."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn_mask = None
    if mask is not None:
        # The kernel's mask marks positions to DISCARD, as uint8, with shape (B, 1 or N, Sq, Sk).
        keep = ops.broadcast_to(mask.astype(ms.bool_), (q.shape[0], mask.shape[1], q.shape[2], k.shape[2]))
        attn_mask = ops.logical_not(keep).astype(ms.uint8)
    return _flash_kernel(q, k.astype(q.dtype), v.astype(q.dtype), q.shape[1], attn_mask, scale)


def use_flash_attention(enable_flash_attn: bool) -> bool:
    """Flash attention only where it has a kernel (Ascend); elsewhere the math path, said once in the log."""
    use = bool(enable_flash_attn) and forms.flash_attention_available()
    if enable_flash_attn and not use:
        logger.info("enable_flash_attn requested but the device is not Ascend: using math attention")
    logger.info("attention path: %s", "flash" if use else "math")
    return use


def attention(q, k, v, mask=None, scale: float | None = None, use_flash: bool = False, bias=None,
              scores_in_input_dtype: bool = False):
    """Dispatch to the flash or math path: flash when ``use_flash`` (a Python constant: the caller's
    decision for this call) and the inputs are half precision.

    An additive ``bias`` (T5's relative position bias) always takes the math path: the flash
    kernel's ``real_shift`` has layout restrictions that this project does not test.
    """
    if use_flash and bias is None and q.dtype in HALF_PRECISION:
        return flash_attention(q, k, v, mask, scale)
    return math_attention(q, k, v, mask, scale, bias, scores_in_input_dtype)
