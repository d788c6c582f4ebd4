"""The norms' two formulations (``forms.py``: the CPU backend's; plain: fused kernels elsewhere) against torch,
in graph mode (the way the models run), including DiT's modulation with per-sample and per-frame parameters."""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import nn

from opensora.models.layers import forms
from opensora.models.layers.forms import expand_rows
from opensora.models.layers.nn import LayerNorm, RMSNorm

RNG = np.random.default_rng(0)
TOL = 1e-5


class _Norm(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x):
        return self.cell(x)


class _Modulate(_Norm):
    def construct(self, x, shift, scale):
        return self.cell.modulate(x, shift, scale)


def _both_forms(make_cell, *args, wrapper=_Norm):
    """Outputs of the cell built with the CPU formulations and with the plain ones, each compiled in graph mode."""
    ms.set_context(mode=ms.GRAPH_MODE)
    outs = []
    for cpu in (True, False):
        with forms.formulations(cpu=cpu):
            cell = make_cell()
        outs.append(wrapper(cell)(*[ms.Tensor(a) for a in args]).asnumpy())
    return outs


def _random(*shape, offset=0.0):
    return (RNG.standard_normal(shape) + offset).astype(np.float32)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(affine):
    c = 48
    weight, bias = _random(c), _random(c)

    def make():
        norm = LayerNorm(c, eps=1e-6, elementwise_affine=affine)
        if affine:
            norm.weight.set_data(ms.Tensor(weight))
            norm.bias.set_data(ms.Tensor(bias))
        return norm

    x = _random(2, 3, 5, c, offset=3.0)  # a large mean: the centred variance must not cancel
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (c,), torch.from_numpy(weight) if affine else None,
        torch.from_numpy(bias) if affine else None, eps=1e-6).numpy()
    for got in _both_forms(make, x):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < TOL


@pytest.mark.parametrize("frames", [1, 3], ids=["per_sample", "per_frame"])
def test_layer_norm_modulate_matches_torch(frames):
    """``norm(x)·(1+scale)+shift`` with (B, 1, 1, C) parameters, or (B, T, 1, C) ones as under an x_mask."""
    b, nt, ns, c = 2, 3, 7, 32
    x = _random(b, nt, ns, c, offset=-2.0)
    shift, scale = _random(b, frames, 1, c), _random(b, frames, 1, c)
    normed = torch.nn.functional.layer_norm(torch.from_numpy(x), (c,), eps=1e-6)
    expected = (normed * (1 + torch.from_numpy(scale)) + torch.from_numpy(shift)).numpy()
    for got in _both_forms(lambda: LayerNorm(c, eps=1e-6, elementwise_affine=False), x, shift, scale,
                           wrapper=_Modulate):
        assert np.abs(got - expected).max() < TOL


def test_rms_norm_matches_torch():
    d = 24
    weight = _random(d)

    def make():
        norm = RMSNorm(d, eps=1e-6)
        norm.weight.set_data(ms.Tensor(weight))
        return norm

    x = _random(2, 4, 9, d)
    h = torch.from_numpy(x)
    expected = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.from_numpy(weight)).numpy()
    for got in _both_forms(make, x):
        assert np.abs(got - expected).max() < TOL


def test_expand_rows_is_a_broadcast():
    p = _random(2, 3, 1, 5)
    got = expand_rows(ms.Tensor(p), (2, 3, 4, 5)).asnumpy()
    np.testing.assert_array_equal(got, np.broadcast_to(p, (2, 3, 4, 5)))
    p = _random(2, 1, 1, 5)  # one row per sample, broadcast over frames and rows
    got = expand_rows(ms.Tensor(p), (2, 3, 4, 5)).asnumpy()
    np.testing.assert_array_equal(got, np.broadcast_to(p, (2, 3, 4, 5)))


def test_null_caption_repeats_the_learned_embedding():
    """The unconditional branch of guidance uses the diffusion model's learned null caption (moved here from the
    text encoder, which held a second way to get it)."""
    from opensora.models.layers.embeddings import CaptionEmbedder

    embedder = CaptionEmbedder(32, 16, uncond_prob=0.1, token_num=7)
    table = _random(7, 32)
    embedder.y_embedding.set_data(ms.Tensor(table))
    null = embedder.null(3).asnumpy()
    assert null.shape == (3, 1, 7, 32)
    for i in range(3):
        np.testing.assert_array_equal(null[i, 0], table)
