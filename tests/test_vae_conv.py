"""Conv2d / Conv3d of opensora.models.layers.nn (CPU fast path: sum of 1x1 convolutions over the
kernel taps) against torch's conv2d / conv3d, in PyNative and graph mode."""
import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.models.layers import forms
from opensora.models.layers.nn import Conv2d, Conv3d

CASES_3D = [
    # in, out, kernel, stride, padding, dilation, input (N, C, D, H, W) spatial part
    (4, 6, 3, 1, 1, 1, (2, 5, 7, 6)),
    (4, 6, (3, 3, 3), (2, 1, 1), (0, 1, 1), 1, (1, 6, 5, 5)),  # causal-VAE temporal downsample
    (3, 5, (1, 2, 2), (1, 2, 2), 0, 1, (1, 3, 8, 8)),  # STDiT patch embedding
    (3, 5, (3, 1, 3), 1, (2, 0, 1), (2, 1, 1), (1, 7, 4, 5)),
    (4, 4, 1, 1, 0, 1, (1, 3, 4, 4)),  # 1x1x1: the native op
]
CASES_2D = [
    (4, 6, 3, 1, 1, 1, (2, 9, 7)),
    (4, 6, 3, 2, 0, 1, (1, 9, 8)),  # SD-VAE downsample (after its own asymmetric pad)
    (3, 5, 2, 2, 0, 1, (1, 8, 8)),
    (3, 5, 3, 1, 2, 2, (1, 9, 9)),
]


def _check(cls, torch_fn, case, mode):
    cin, cout, k, s, p, d, shape = case
    ms.set_context(mode=mode)
    conv = cls(cin, cout, k, stride=s, padding=p, dilation=d)
    conv.taps_min_macs = 0  # always the CPU fast path (these shapes are small)
    assert conv._convolution is forms.CONVOLUTION.cpu  # by kernel taps when the kernel is larger than 1
    x = np.random.default_rng(0).standard_normal((shape[0], cin) + shape[1:]).astype(np.float32)
    out = conv(ms.Tensor(x)).asnumpy()
    ref = torch_fn(torch.tensor(x), torch.tensor(conv.weight.asnumpy()), torch.tensor(conv.bias.asnumpy()),
                   stride=s, padding=p, dilation=d).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
@pytest.mark.parametrize("case", CASES_3D)
def test_conv3d_matches_torch(case, mode):
    _check(Conv3d, torch.nn.functional.conv3d, case, mode)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
@pytest.mark.parametrize("case", CASES_2D)
def test_conv2d_matches_torch(case, mode):
    _check(Conv2d, torch.nn.functional.conv2d, case, mode)
