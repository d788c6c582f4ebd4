"""The CPU backend's formulations of the VAE layers against the PyTorch operators, on random inputs, in
PyNative and graph mode: the convolution as GEMMs over shifted slices (``conv_as_gemms``) for every kernel /
stride / padding the VAEs use (2-D and 3-D, causal and symmetric), GroupNorm's row form, nearest x2
upsampling and the zero padding by Concat. Errors relative to the output's largest magnitude <= 1e-5."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms

from opensora.models.layers import forms
from opensora.models.layers.nn import Conv2d, Conv3d, GroupNorm, pad2d_zeros, upsample_nearest2x
from opensora.models.vae.vae_temporal import CausalConv3d

RTOL = 1e-5
MODES = pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])


def _close(out, ref):
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= RTOL, err


CONV_CASES = [
    # dims, in, out, kernel, stride, padding, dilation, batch + spatial input shape
    (2, 5, 6, 3, 1, 1, 1, (1, 9, 7)),            # SD/SDXL VAE 3x3 (one image)
    (2, 5, 6, 3, 1, 1, 1, (3, 6, 10)),           # a micro-batch of frames: folded into one sample
    (2, 5, 6, 3, 2, 0, 1, (2, 9, 8)),            # SD VAE downsample (after its own right/bottom pad)
    (2, 5, 6, 1, 1, 0, 1, (2, 5, 6)),            # 1x1 shortcut / quant convs
    (2, 3, 4, 3, 1, 2, 2, (1, 9, 9)),            # dilated, padding beyond one line
    (3, 5, 6, 3, 1, (0, 1, 1), 1, (1, 6, 5, 7)),   # causal VAE 3x3x3 (time padding done by CausalConv3d)
    (3, 5, 6, 3, (2, 1, 1), (0, 1, 1), 1, (1, 7, 5, 4)),  # causal VAE temporal downsample
    (3, 5, 6, 1, 1, 0, 1, (1, 4, 3, 5)),         # 1x1x1
    (3, 4, 5, 3, 1, 1, 1, (2, 5, 4, 6)),         # symmetric 3-D padding, batch of 2
    (3, 3, 5, (1, 2, 2), (1, 2, 2), 0, 1, (1, 3, 8, 8)),  # patch embedding
    (3, 3, 5, (3, 1, 3), 1, (2, 0, 1), (2, 1, 1), (1, 7, 4, 5)),
]


@MODES
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"{c[0]}d-k{c[3]}-s{c[4]}-p{c[5]}-n{c[7][0]}" for c in CONV_CASES])
def test_conv_as_gemms_matches_torch(case, mode):
    dims, cin, cout, k, s, p, d, shape = case
    ms.set_context(mode=mode)
    cls, fn = (Conv2d, F.conv2d) if dims == 2 else (Conv3d, F.conv3d)
    conv = cls(cin, cout, k, stride=s, padding=p, dilation=d)
    conv.taps_min_macs = 0  # the GEMM form even for these small shapes
    assert conv._convolution is forms.CONVOLUTION.cpu
    x = np.random.default_rng(0).standard_normal((shape[0], cin) + shape[1:]).astype(np.float32)
    out = conv(ms.Tensor(x)).asnumpy()
    ref = fn(torch.tensor(x), torch.tensor(conv.weight.asnumpy()), torch.tensor(conv.bias.asnumpy()),
             stride=s, padding=p, dilation=d).numpy()
    _close(out, ref)


@MODES
@pytest.mark.parametrize("shape,axis", [((3, 4, 5), 0), ((2, 3, 4, 5), 1), ((2, 5, 3, 7), 2)])
def test_swap_adjacent_axes_is_a_transpose(shape, axis, mode):
    """The Split + Stack form of exchanging two neighbouring axes (the CPU's Transpose keeps memory)."""
    ms.set_context(mode=mode)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    swap = ms.jit(forms.swap_adjacent_axes, static_argnums=1) if mode == ms.GRAPH_MODE else forms.swap_adjacent_axes
    np.testing.assert_array_equal(swap(ms.Tensor(x), axis).asnumpy(), np.swapaxes(x, axis, axis + 1))


@MODES
@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (1, 1)])
def test_causal_conv3d_matches_torch(stride, kernel, mode):
    """Causal time padding (zeros in front only) then the GEMM form, against torch's pad + conv3d."""
    ms.set_context(mode=mode)
    conv = CausalConv3d(4, 6, kernel, strides=(stride, 1, 1))
    conv.conv.taps_min_macs = 0
    x = np.random.default_rng(1).standard_normal((1, 4, 9, 5, 6)).astype(np.float32)
    out = conv(ms.Tensor(x)).asnumpy()
    pad_t, pad_s = kernel - stride if kernel > 1 else 0, kernel // 2
    xt = F.pad(torch.tensor(x), (pad_s, pad_s, pad_s, pad_s, pad_t, 0))
    ref = F.conv3d(xt, torch.tensor(conv.conv.weight.asnumpy()), torch.tensor(conv.conv.bias.asnumpy()),
                   stride=(stride, 1, 1)).numpy()
    _close(out, ref)


@MODES
@pytest.mark.parametrize("cpu", [True, False], ids=["cpu-form", "plain-form"])
@pytest.mark.parametrize("shape,groups,affine", [((2, 8, 5, 7), 4, True), ((1, 8, 3, 4, 5), 2, True),
                                                 ((3, 6, 4, 4), 3, False)])
def test_group_norm_matches_torch(shape, groups, affine, cpu, mode):
    ms.set_context(mode=mode)
    rng = np.random.default_rng(2)
    with forms.formulations(cpu=cpu):
        norm = GroupNorm(groups, shape[1], eps=1e-6, affine=affine)
    if affine:
        norm.weight.set_data(ms.Tensor(rng.standard_normal(shape[1]).astype(np.float32)))
        norm.bias.set_data(ms.Tensor(rng.standard_normal(shape[1]).astype(np.float32)))
    assert norm._group_norm is (forms.GROUP_NORM.cpu if cpu else forms.GROUP_NORM.plain)
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)  # a mean far from zero: two-pass variance
    out = norm(ms.Tensor(x)).asnumpy()
    w = torch.tensor(norm.weight.asnumpy()) if affine else None
    b = torch.tensor(norm.bias.asnumpy()) if affine else None
    _close(out, F.group_norm(torch.tensor(x), groups, w, b, 1e-6).numpy())


def test_upsample_and_padding_match_torch():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    up = upsample_nearest2x(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(up, F.interpolate(torch.tensor(x), scale_factor=2.0, mode="nearest").numpy())
    padded = pad2d_zeros(ms.Tensor(x), (0, 1, 2, 1)).asnumpy()
    np.testing.assert_array_equal(padded, F.pad(torch.tensor(x), (0, 1, 2, 1)).numpy())
