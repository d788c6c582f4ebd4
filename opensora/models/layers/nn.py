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
from typing import Sequence

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Uniform, initializer


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

    :meth:`modulate` is DiT's ``norm(x)·(1+scale)+shift``. On the CPU backend (``matmul_forms``) the row
    statistics and their broadcasts are small MatMuls, and the modulation is folded into the per-row
    1/std: MindSpore's CPU LayerNorm kernel is single-threaded and its broadcasting Mul/Add kernels are
    3-4x slower than same-shape ones, so this is ~2x faster than LayerNorm + two broadcasting ops
    (the same arithmetic up to float32 rounding). Other backends keep the fused LayerNorm kernel.
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
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.matmul_forms = cpu_target()
        self._mean_column = Tensor(np.full((shape[0], 1), 1.0 / shape[0], np.float32))

    def construct(self, x):
        dtype = x.dtype
        weight = self.weight.astype(ms.float32) if self.weight is not None else self._ones
        bias = self.bias.astype(ms.float32) if self.bias is not None else self._zeros
        if not self.matmul_forms:
            out, _, _ = self.layer_norm(x.astype(ms.float32), weight, bias)
            return out.astype(dtype)
        centred, inv_std = self._row_statistics(x)
        out = centred * ops.matmul(inv_std, weight.reshape(1, -1))
        if self.bias is not None:
            out = ops.bias_add(out, bias)
        return out.reshape(x.shape).astype(dtype)

    def modulate(self, x, shift, scale):
        """``self(x)·(1+scale)+shift`` for x (..., R, C) and ``shift``/``scale`` (..., 1, C) broadcastable to it."""
        if not self.matmul_forms or self.elementwise_affine:
            norm = self.construct(x)  # graph mode cannot call the cell itself from its own method
            return norm * (1 + scale) + shift
        # (x - mean) · [1/std ⊗ (1+scale)] + shift: the outer product is one batched K=1 MatMul per group of
        # rows sharing a modulation. Computed in float32 and cast once (the fused kernel's dtype path).
        centred, inv_std = self._row_statistics(x)
        lead, rows, c = x.shape[:-2], x.shape[-2], x.shape[-1]
        groups = _prod(lead)
        factor = ops.broadcast_to(1 + scale.astype(ms.float32), lead + (1, c)).reshape(groups, 1, c)
        out = centred.reshape(groups, rows, c) * _batch_matmul(inv_std.reshape(groups, rows, 1), factor)
        return (out.reshape(x.shape) + expand_rows(shift.astype(ms.float32), x.shape)).astype(x.dtype)

    def _row_statistics(self, x):
        """x (..., C) -> x - mean as float32 (M, C), and 1/std (M, 1); means as MatMuls with a 1/C column."""
        c = x.shape[-1]
        h = x.astype(ms.float32).reshape(-1, c)
        mean = ops.matmul(h, self._mean_column)
        h = h - ops.matmul(mean, ops.ones((1, c), ms.float32))  # the column broadcast as a K=1 MatMul
        return h, ops.rsqrt(ops.matmul(h * h, self._mean_column) + self.eps)


class GroupNorm(nn.Cell):
    """``torch.nn.GroupNorm`` for (N, C, *) inputs, computed in float32."""

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

    def construct(self, x):
        dtype = x.dtype
        shape = x.shape
        h = x.astype(ms.float32).reshape(shape[0], self.num_groups, -1)
        mean = h.mean(axis=-1, keep_dims=True)
        var = ((h - mean) ** 2).mean(axis=-1, keep_dims=True)
        h = ((h - mean) / ops.sqrt(var + self.eps)).reshape(shape)
        if self.affine:
            param_shape = (1, self.num_channels) + (1,) * (len(shape) - 2)
            h = h * self.weight.astype(ms.float32).reshape(param_shape) + self.bias.astype(ms.float32).reshape(param_shape)
        return h.astype(dtype)


class RMSNorm(nn.Cell):
    """T5-style RMS norm (no mean, no bias): variance in float32, as ``transformers``' ``T5LayerNorm``.

    Like upstream, the normalised value is cast to the weight's dtype when that is half
    precision before the scale is applied.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(hidden_size), dtype), name="weight")
        # CPU backend: the mean of squares as a MatMul with a column of 1/C is ~3x faster than ReduceMean,
        # and the (rows, 1) x (C,) product a K=1 MatMul rather than a broadcasting Mul. Not on Ascend,
        # where a float32 MatMul may run in reduced precision.
        self.matmul_forms = cpu_target()
        self._mean_column = Tensor(np.full((hidden_size, 1), 1.0 / hidden_size, np.float32))

    def construct(self, x, scale=None):
        """``scale``: an optional constant folded into the weight (e.g. attention's 1/sqrt(d) for queries)."""
        weight = self.weight if scale is None else self.weight * scale
        h = x.astype(ms.float32)
        if self.matmul_forms and weight.dtype == ms.float32:
            d = h.shape[-1]
            inv_rms = ops.rsqrt(ops.matmul((h * h).reshape(-1, d), self._mean_column) + self.eps)
            return h * ops.matmul(inv_rms, weight.reshape(1, d)).reshape(h.shape)  # one full-size product
        inv_rms = ops.rsqrt((h * h).mean(axis=-1, keep_dims=True) + self.eps)
        if weight.dtype in (ms.float16, ms.bfloat16):
            return weight * (h * inv_rms).astype(weight.dtype)
        return h * (inv_rms * weight)


class Embedding(nn.Cell):
    """``torch.nn.Embedding``: a ``weight`` table looked up with a gather."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(Tensor(np.random.normal(0, 1, (num_embeddings, embedding_dim)), dtype), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class _ConvNd(nn.Cell):
    """Shared part of Conv2d/Conv3d: PyTorch's signature, parameter names and initialisation."""

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
        self._conv = ops.conv2d if n == 2 else ops.conv3d
        # MindSpore's CPU convolution is 10-30x slower than torch's for kernels larger than 1 (a
        # reference kernel), while 1x1 convolutions are fast: there, sum 1x1 convolutions over the
        # kernel taps instead (same numbers up to float rounding). Ascend/GPU keep the native op.
        # Small convolutions stay native: there the per-op cost of the taps outweighs the gain.
        self._by_taps = groups == 1 and int(np.prod(self.kernel_size)) > 1 and cpu_target()
        # conv_by_taps is 3-D: a 2-D convolution is one over a depth of 1
        depth = (1,) if n == 2 else ()
        self._taps_geometry = (depth + self.stride, (0,) * len(depth) + self.padding, depth + self.dilation,
                               kernel_taps(depth + self.kernel_size))
        self._macs_per_output = in_channels * out_channels * int(np.prod(self.kernel_size))
        self.taps_min_macs = TAPS_MIN_MACS

    def construct(self, x):
        weight = self.weight.astype(x.dtype)
        bias = self.bias.astype(x.dtype) if self.bias is not None else None
        # multiply-adds of this call (input positions ~ output positions; static shapes in graph mode)
        positions = 1
        for size in x.shape[2:]:
            positions = positions * size
        if self._by_taps and x.shape[0] * positions * self._macs_per_output >= self.taps_min_macs:
            if self._dims == 2:
                return conv_by_taps(x.expand_dims(2), weight.expand_dims(2), bias, *self._taps_geometry).squeeze(2)
            return conv_by_taps(x, weight, bias, *self._taps_geometry)
        return self._conv(x, weight, bias, self.stride, "pad", self.padding, self.dilation, self.groups)


# Below this many multiply-adds per call the native CPU convolution is as fast (measured on 2 cores)
TAPS_MIN_MACS = 3e7


def cpu_target() -> bool:
    """True when compiling for the CPU backend: a few layers then take CPU-friendly formulations."""
    return ms.get_context("device_target") == "CPU"


_batch_matmul = ops.BatchMatMul()


def _prod(values) -> int:
    out = 1
    for v in values:
        out = out * v
    return out


def expand_rows(p, shape):
    """``p`` (..., 1, C), broadcastable to ``shape`` (..., R, C), materialised at ``shape`` as a batched K=1
    MatMul with a column of ones: on the CPU backend a Mul of two ``shape`` tensors plus this is faster
    than one broadcasting Mul (see :class:`LayerNorm`)."""
    lead, rows, c = tuple(shape[:-2]), shape[-2], shape[-1]
    groups = _prod(lead)
    p = ops.broadcast_to(p, lead + (1, c)).reshape(groups, 1, c)
    return _batch_matmul(ops.ones((groups, rows, 1), p.dtype), p).reshape(shape)


def kernel_taps(kernel_size) -> tuple:
    """Every index of a kernel, e.g. (3, 3) -> ((0, 0), (0, 1), ..., (2, 2))."""
    return tuple(tuple(int(i) for i in tap) for tap in np.ndindex(*kernel_size))


def _out_size(size, kernel, stride, dilation):
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def conv_by_taps(x, weight, bias, stride, padding, dilation, taps):
    """A 3-D convolution (groups 1, symmetric zero padding) as a sum over the kernel taps of 1x1
    convolutions of strided views of the input: the fast path of the CPU backend (2-D convolutions
    use it with a depth of 1).

    ``x`` (N, C, D, H, W), ``weight`` (O, C, *K), ``taps`` = :func:`kernel_taps` of K. Peak memory is
    about one padded input plus one view and two outputs (no im2col copy of the whole input).
    """
    x = ops.pad(x, (padding[2], padding[2], padding[1], padding[1], padding[0], padding[0]))
    n, c = x.shape[0], x.shape[1]
    od = _out_size(x.shape[2], weight.shape[2], stride[0], dilation[0])
    oh = _out_size(x.shape[3], weight.shape[3], stride[1], dilation[1])
    ow = _out_size(x.shape[4], weight.shape[4], stride[2], dilation[2])
    out = None
    for tap in taps:
        d0 = tap[0] * dilation[0]
        h0 = tap[1] * dilation[1]
        w0 = tap[2] * dilation[2]
        view = x[:, :, d0:d0 + (od - 1) * stride[0] + 1:stride[0], h0:h0 + (oh - 1) * stride[1] + 1:stride[1],
                 w0:w0 + (ow - 1) * stride[2] + 1:stride[2]]
        # (N, C, D, H, W) -> (N, C, D*H, W): a 1x1 convolution treats every position alike
        view = view.reshape(n, c, od * oh, ow)
        term = ops.conv2d(view, weight[:, :, tap[0], tap[1]:tap[1] + 1, tap[2]:tap[2] + 1])
        out = term if out is None else out + term
    out = out.reshape(n, weight.shape[0], od, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1)
    return out


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


def gelu(x):
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


def silu(x):
    return x * ops.sigmoid(x)
