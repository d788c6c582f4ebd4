"""The Ascend flash path's layout / mask-polarity / scale handling, checked on the CPU: ``_flash_kernel`` is
replaced by a numpy model of ``ops.flash_attention_score``'s documented semantics (input_layout "BNSD",
attn_mask uint8 with 1 = DISCARD, broadcast over heads when its N is 1, ``scalar_value`` multiplies QK^T)."""
import numpy as np
import pytest

import mindspore as ms

from opensora.models.layers import attention as attn_mod

CALLS = []


def _kernel_reference(q, k, v, head_num, attn_mask, scalar_value):
    q, k, v = (t.astype(ms.float32).asnumpy() for t in (q, k, v))
    assert q.ndim == 4 and q.shape[1] == head_num, "layout must be BNSD"
    scores = np.einsum("bnqd,bnkd->bnqk", q, k) * scalar_value
    if attn_mask is not None:
        discard = attn_mask.asnumpy()
        assert discard.dtype == np.uint8 and discard.shape[2:] == scores.shape[2:]
        scores = np.where(discard.astype(bool), -1e30, scores)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    CALLS.append(attn_mask is not None)
    return ms.Tensor(np.einsum("bnqk,bnkd->bnqd", p, v).astype(np.float16))


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 7), (2, 1, 5, 7), (2, 3, 5, 7)])
def test_flash_path_equals_math_path(monkeypatch, mask_shape):
    monkeypatch.setattr(attn_mod, "_flash_kernel", _kernel_reference)
    rng = np.random.default_rng(0)
    # the flash path runs in the model's half precision (float32 inputs take the math path, see
    # tests/test_half_precision.py); float16 is the CPU's stand-in
    q = ms.Tensor(rng.standard_normal((2, 3, 5, 8)).astype(np.float16))
    k = ms.Tensor(rng.standard_normal((2, 3, 7, 8)).astype(np.float16))
    v = ms.Tensor(rng.standard_normal((2, 3, 7, 8)).astype(np.float16))
    mask = None
    if mask_shape is not None:
        keep = rng.random(mask_shape) > 0.4
        keep[..., 0] = True  # every query keeps at least one key
        mask = ms.Tensor(keep)
    CALLS.clear()
    flash = attn_mod.attention(q, k, v, mask, scale=0.3, use_flash=True)
    math = attn_mod.attention(q, k, v, mask, scale=0.3, use_flash=False)
    assert CALLS == [mask is not None]
    assert flash.dtype == ms.float16
    assert np.abs(flash.astype(ms.float32).asnumpy() - math.astype(ms.float32).asnumpy()).max() < 5e-3
    if mask is not None:  # the polarity matters: an inverted mask gives another result
        inverted = attn_mod.attention(q, k, v, ms.Tensor(~keep | (np.arange(7) == 0)), scale=0.3, use_flash=False)
        assert np.abs(inverted.astype(ms.float32).asnumpy() - flash.astype(ms.float32).asnumpy()).max() > 1e-2
