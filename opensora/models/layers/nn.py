"""Small cells with PyTorch parameter names, built on ops that have CPU, GPU and Ascend kernels.

MindSpore's ``nn.LayerNorm`` names its parameters ``gamma``/``beta`` and ``nn.Embedding``
``embedding_table``; most ``mint.nn`` cells keep PyTorch's names but lack CPU kernels. These
cells keep the official checkpoint keys unchanged (``norm.weight``, ``embed.weight``) so that
conversion is a change of file format, not a renaming table.

Mixed precision: parameters stay in the dtype they were created with; ``Linear`` and the
convolutions compute in the dtype of their input (weights are cast on the fly), and every
norm computes in float32 and returns the input dtype, as upstream keeps norms in float32.
"""
from __future__ import annotations

import math
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Uniform, initializer

from . import forms


def _pair(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class Linear(nn.Cell):
    """``torch.nn.Linear``: ``weight`` (out, in) and ``bias``, PyTorch's default initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=ms.float32,
                 weight_init=None, bias_init=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # weight_init / bias_init: optional MindSpore initializers (e.g. "zeros", XavierUniform()) so that a
        # model's own initialisation happens at creation (lazily under no_init_parameters), not by overwriting.
        weight_init = HeUniform(math.sqrt(5)) if weight_init is None else weight_init
        self.weight = Parameter(initializer(weight_init, (out_features, in_features), dtype), name="weight")
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        bias_init = Uniform(bound) if bias_init is None else bias_init
        self.bias = Parameter(initializer(bias_init, (out_features,), dtype), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        # One 2-D MatMul (weight transposed inside the kernel) and a BiasAdd: on the CPU backend
        # ``ops.dense`` on N-D input adds the bias with a broadcasting Add, about twice as slow.
        shape = x.shape
        out = self.matmul(x.reshape(-1, shape[-1]), self.weight.astype(x.dtype))
        if self.bias is not None:
            out = ops.bias_add(out, self.bias.astype(x.dtype))
        return out.reshape(shape[:-1] + (self.out_features,))


class LayerNorm(nn.Cell):
    """``torch.nn.LayerNorm`` over the last dimension, computed in float32.

    :meth:`modulate` is DiT's ``norm(x)·(1+scale)+shift``. Both are :mod:`.forms` formulations: on the CPU
    backend the row statistics and broadcasts are small MatMuls and the modulation is folded into the
    per-row 1/std (~2x faster there than the LayerNorm kernel plus two broadcasting ops); elsewhere the
    fused LayerNorm kernel.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=ms.float32):
        super().__init__()
        shape = _pair(normalized_shape, 1)
        if len(shape) != 1:
            raise ValueError("LayerNorm here normalises the last dimension only")
        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(Tensor(np.ones(shape), dtype), name="weight")
            self.bias = Parameter(Tensor(np.zeros(shape), dtype), name="bias") if bias else None
        else:
            self.weight, self.bias = None, None
        self._ones = Tensor(np.ones(shape), ms.float32)
        self._zeros = Tensor(np.zeros(shape), ms.float32)
        self._layer_norm = forms.LAYER_NORM.chosen()
        self._modulated = forms.MODULATED_NORM.chosen()

    def construct(self, x):
        weight = self.weight.astype(ms.float32) if self.weight is not None else self._ones
        bias = self.bias.astype(ms.float32) if self.bias is not None else self._zeros
        return self._layer_norm(x, weight, bias, self.eps)

    def modulate(self, x, shift, scale):
        """``self(x)·(1+scale)+shift`` for x (..., R, C) and ``shift``/``scale`` (..., 1, C) broadcastable to it."""
        if self.elementwise_affine:
            norm = self.construct(x)  # graph mode cannot call the cell itself from its own method
            return norm * (1 + scale) + shift
        return self._modulated(x, shift, scale, self.eps)


class GroupNorm(nn.Cell):
    """``torch.nn.GroupNorm`` for (N, C, *) inputs, computed in float32 (a :mod:`.forms` formulation)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, dtype=ms.float32):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = Parameter(Tensor(np.ones(num_channels), dtype), name="weight")
            self.bias = Parameter(Tensor(np.zeros(num_channels), dtype), name="bias")
        else:
            self.weight, self.bias = None, None
        self._group_norm = forms.GROUP_NORM.chosen()

    def construct(self, x):
        weight = self.weight.astype(ms.float32) if self.affine else None
        bias = self.bias.astype(ms.float32) if self.affine else None
        return self._group_norm(x, weight, bias, self.num_groups, self.eps)


class RMSNorm(nn.Cell):
    """RMS norm (no mean, no bias) as upstream's ``LlamaRMSNorm`` and ``transformers``' ``T5LayerNorm``: the
    statistics in float32, the normalised value cast back to the input dtype, then times the weight (in that
    dtype): a half-precision model stays in half precision."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype=ms.float32, weight_name: str = "weight"):
        super().__init__()
        self.eps = eps
        # weight_name: the parameter's name in the checkpoints (Flux calls it "scale")
        self.weight_name = weight_name
        setattr(self, weight_name, Parameter(Tensor(np.ones(hidden_size), dtype), name=weight_name))
        self._rms_norm = forms.RMS_NORM.chosen()

    def construct(self, x, scale=None):
        """``scale``: an optional constant folded into the weight (e.g. attention's 1/sqrt(d) for queries)."""
        weight = getattr(self, self.weight_name)
        weight = weight if scale is None else weight * scale
        dtype = x.dtype
        h = x.astype(ms.float32)
        if dtype in (ms.float16, ms.bfloat16):
            inv_rms = ops.rsqrt((h * h).mean(axis=-1, keep_dims=True) + self.eps)
            return weight.astype(dtype) * (h * inv_rms).astype(dtype)
        return self._rms_norm(h, weight.astype(ms.float32), self.eps)


class Embedding(nn.Cell):
    """``torch.nn.Embedding``: a ``weight`` table looked up with a gather."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(Tensor(np.random.normal(0, 1, (num_embeddings, embedding_dim)), dtype), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class _ConvNd(nn.Cell):
    """Shared part of Conv2d/Conv3d: PyTorch's signature, parameter names and initialisation; the
    computation is the :mod:`.forms` convolution (the CPU backend's as GEMMs, else the native op)."""

    _dims = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, dtype=ms.float32):
        super().__init__()
        n = self._dims
        self.kernel_size = _pair(kernel_size, n)
        self.stride, self.dilation = _pair(stride, n), _pair(dilation, n)
        self.padding = _pair(padding, n)  # symmetric, as torch's
        self.groups = groups
        fan_in = in_channels // groups * int(np.prod(self.kernel_size))
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(initializer(HeUniform(math.sqrt(5)), shape, dtype), name="weight")
        self.bias = Parameter(initializer(Uniform(1 / math.sqrt(fan_in)), (out_channels,), dtype), name="bias") \
            if bias else None
        self._spec = forms.conv_spec(n, in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                                     self.dilation, groups)
        self._convolution = forms.CONVOLUTION.chosen()
        self.taps_min_macs = forms.TAPS_MIN_MACS

    def construct(self, x):
        weight = self.weight.astype(x.dtype)
        bias = self.bias.astype(x.dtype) if self.bias is not None else None
        return self._convolution(x, weight, bias, self._spec, self.taps_min_macs)


class Conv2d(_ConvNd):
    """``torch.nn.Conv2d`` (NCHW)."""

    _dims = 2


class Conv3d(_ConvNd):
    """``torch.nn.Conv3d`` (NCDHW)."""

    _dims = 3


def gelu_tanh(x):
    """GELU with the tanh approximation written out in elementwise ops (faster than the fused op on CPU).

    Uses 0.5·(1 + tanh(z)) = sigmoid(2z): MindSpore's CPU ``tanh`` is off by up to 1e-4, its sigmoid by 1e-6.
    """
    # 2·sqrt(2/pi)·(x + 0.044715·x³) as x·(a + b·x²): one elementwise pass fewer
    return x * ops.sigmoid(x * (1.5957691216057308 + 0.07135481627260025 * (x * x)))


def upsample_nearest2x(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), nearest neighbour (each value repeated in a 2x2 block), exact.

    Two Stacks of 2-D views: on the CPU backend Stack runs at memory speed, while BroadcastTo is about 10x
    slower and ``interpolate`` depends on the kernels available."""
    b, c, h, w = x.shape
    rows = x.reshape(b * c * h, w)
    rows = ops.stack((rows, rows), axis=2).reshape(b * c * h, 2 * w)  # each column twice
    return ops.stack((rows, rows), axis=1).reshape(b, c, 2 * h, 2 * w)  # each row twice


def pad2d_zeros(x, pads):
    """``ops.pad(x, (left, right, top, bottom))`` with zeros for (..., H, W), by Concats of 2-D views (see
    :func:`.forms.pad_columns`: the CPU's pad kernel is ~20x slower); exact on every backend."""
    left, right, top, bottom = pads
    lead, h, w = x.shape[:-2], x.shape[-2], x.shape[-1]
    rows = forms.pad_columns(x.reshape(-1, w), left, right)
    wp = w + left + right
    out = forms.pad_columns(rows.reshape(-1, h * wp), top * wp, bottom * wp)
    return out.reshape(lead + (h + top + bottom, wp))


def silu(x):
    return x * ops.sigmoid(x)


class SiLU(nn.Cell):
    """:func:`silu` as a cell, for ``SequentialCell`` stacks with upstream's indices (``t_block.1.weight``)."""

    def construct(self, x):
        return silu(x)


class GELUTanh(nn.Cell):
    """:func:`gelu_tanh` as a cell (torch's ``nn.GELU(approximate="tanh")`` in ``SequentialCell`` stacks)."""

    def construct(self, x):
        return gelu_tanh(x)
