"""The ONE place for backend-specific formulations of the same arithmetic, and the one switch that picks them.

MindSpore's CPU backend has slow kernels in a few places, found with its per-op profiler on full-size
models: its LayerNorm kernel is single-threaded (8-9 ms per (2160, 1152) call, 3 ms in torch), its
broadcasting Mul/Add kernels are 3-4x slower than same-shape ones (a (2160, 1152) x (1, 1152) Mul 2.5 ms,
the same-shape Mul 0.7 ms, a K=1 MatMul that materialises the broadcast 0.5 ms), ReduceMean on a 4-D
tensor is slow, and its convolution is 10-30x slower than torch's for kernels larger than 1. There the
layers compute the same arithmetic in other forms: row statistics and broadcasts as small MatMuls,
RoPE's pair rotation as an exact ±1 MatMul, convolutions as MatMuls over shifted slices of the flattened
input, group norm on 2-D row views. Ascend and GPU keep the native operators (fused kernels; a float32 MatMul may run in reduced
precision on Ascend, so the MatMul forms are not used there), and only Ascend has flash attention.

The switch: the runtime calls :func:`set_backend` once (``opensora.runtime.init_runtime``); code that
never initialises a runtime (tests, notebooks) gets MindSpore's context device. Cells pick their
formulation when they are **built** (:meth:`Formulation.chosen`: a Python function held by the cell, a
constant of its compiled graph), so build a model after the switch is set; tests build the same model
under both with :func:`formulations`. Model files never name a backend: they use the layer cells.
Every pair below is tested against the PyTorch operator (tests/test_layers_norm.py, test_vae_conv.py)
and, through the models, against the references.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

import mindspore as ms
from mindspore import ops
from mindspore.ops import constexpr

BACKENDS = ("CPU", "GPU", "Ascend")
_backend: str | None = None  # set by the runtime; None: MindSpore's context at first use
_cpu_override: bool | None = None  # tests: formulations(cpu=...)


def set_backend(device_target: str) -> None:
    """Called once by the runtime with the device it set up."""
    global _backend
    if device_target not in BACKENDS:
        raise ValueError(f"device_target must be one of {BACKENDS}, got {device_target!r}")
    _backend = device_target


def backend() -> str:
    """The device the models are built for: the runtime's, or MindSpore's context when none was set."""
    return _backend if _backend is not None else ms.get_context("device_target")


def cpu_forms() -> bool:
    """True when the layers take the CPU backend's formulations."""
    return backend() == "CPU" if _cpu_override is None else _cpu_override


@contextlib.contextmanager
def formulations(cpu: bool):
    """Build cells with the CPU (``cpu=True``) or the native (``False``) formulations, whatever the device:
    for tests that check both forms on one machine."""
    global _cpu_override
    saved, _cpu_override = _cpu_override, bool(cpu)
    try:
        yield
    finally:
        _cpu_override = saved


def flash_attention_available() -> bool:
    """Ascend's fused attention kernel (``ops.flash_attention_score``) exists on Ascend only."""
    return backend() == "Ascend"


def builtin_optimizer_parallel_available(device_target: str | None = None) -> bool:
    """MindSpore's own optimizer sharding (``enable_parallel_optimizer``) runs on Ascend and GPU only; the CPU
    uses the project's collective ZeRO-1 (``training/parallel.py``). ``device_target``: ask for that device."""
    return (device_target or backend()) in ("Ascend", "GPU")


def all_to_all_available() -> bool:
    """MindSpore's ``AlltoAll`` collective: not on the CPU backend (checked under msrun, MindSpore 2.10), where
    sequence parallel exchanges heads by AllGather instead (``opensora/parallel/sequence.py``)."""
    return backend() != "CPU"


def reduce_scatter_available() -> bool:
    """``ReduceScatter`` (the backward of ``AllGather``): not on the CPU backend, where a differentiable all-gather
    is an AllReduce instead (``opensora/parallel/sequence.py``)."""
    return backend() != "CPU"


def subgroup_collectives_available() -> bool:
    """Collectives on a group smaller than the world: the CPU backend's AllGather takes the world group only."""
    return backend() != "CPU"


def reused_graph(cls):
    """``cls`` (a block cell class) such that every instance shares one compiled graph: on Ascend a subclass
    whose ``__init__`` is ``mindspore.lazy_inline``'d, so a whole model of many blocks compiles the block once
    and reuses it (what the CPU backend's blockwise runner does by hand, ``inference/blockwise.py``);
    elsewhere ``cls`` itself (``lazy_inline`` exists on Ascend only). Parameter names are unchanged."""
    if backend() != "Ascend":
        return cls
    return type(cls.__name__, (cls,), {"__init__": ms.lazy_inline(cls.__init__), "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})


def bfloat16_compute_available(device_target: str | None = None) -> bool:
    """MindSpore's CPU backend casts to bfloat16 but computes nothing in it (no matmul, norm or softmax).
    ``device_target``: ask for that device (e.g. a config's, before the runtime is set up)."""
    return (device_target or backend()) != "CPU"


def samples_in_host_memory(device_target: str | None = None) -> bool:
    """The CPU backend: sampling's activations live in the host's memory (checked against what is free before a
    run) and its compiled graphs hold memory of their own (compiling, and kernels that keep their outputs)."""
    return (device_target or backend()) == "CPU"


class Formulation:
    """Two implementations of one computation with the same signature and the same numbers up to float
    rounding: ``plain`` (native operators: Ascend, GPU) and ``cpu`` (the CPU backend's forms)."""

    def __init__(self, plain, cpu):
        self.plain, self.cpu = plain, cpu

    def chosen(self):
        """The implementation for cells built now (see the module docstring)."""
        return self.cpu if cpu_forms() else self.plain


# ---------------------------------------------------------------------------------------------------------
# helpers of the CPU forms
# ---------------------------------------------------------------------------------------------------------
_batch_matmul = ops.BatchMatMul()


def _prod(values) -> int:
    out = 1
    for v in values:
        out = out * v
    return out


def expand_rows(p, shape):
    """``p`` (..., 1, C), broadcastable to ``shape`` (..., R, C), materialised at ``shape`` as a batched K=1
    MatMul with a column of ones: on the CPU backend a Mul of two ``shape`` tensors plus this is faster
    than one broadcasting Mul."""
    lead, rows, c = tuple(shape[:-2]), shape[-2], shape[-1]
    groups = _prod(lead)
    p = ops.broadcast_to(p, lead + (1, c)).reshape(groups, 1, c)
    return _batch_matmul(ops.ones((groups, rows, 1), p.dtype), p).reshape(shape)


def _row_mean(h):
    """(M, C) float32 -> (M, 1) row means, as a MatMul with a column of 1/C (the CPU's ReduceMean is slow)."""
    c = h.shape[-1]
    return ops.matmul(h, ops.full((c, 1), 1.0 / c, dtype=ms.float32))


def _centred_inv_std(x, eps: float):
    """x (..., C) -> x - mean as float32 (M, C), and 1/std (M, 1): the CPU form of the row statistics."""
    c = x.shape[-1]
    h = x.astype(ms.float32).reshape(-1, c)
    h = h - ops.matmul(_row_mean(h), ops.ones((1, c), ms.float32))  # the column broadcast as a K=1 MatMul
    return h, ops.rsqrt(_row_mean(h * h) + eps)


# ---------------------------------------------------------------------------------------------------------
# layer norm over the last dimension, computed in float32, returned in the input dtype
# ---------------------------------------------------------------------------------------------------------
def _layer_norm_plain(x, weight, bias, eps: float):
    """``weight``/``bias``: float32 (C,) tensors (ones / zeros when the norm has no affine parameters)."""
    norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
    out, _, _ = norm(x.astype(ms.float32), weight, bias)
    return out.astype(x.dtype)


def _layer_norm_cpu(x, weight, bias, eps: float):
    centred, inv_std = _centred_inv_std(x, eps)
    out = ops.bias_add(centred * ops.matmul(inv_std, weight.reshape(1, -1)), bias)
    return out.reshape(x.shape).astype(x.dtype)


LAYER_NORM = Formulation(_layer_norm_plain, _layer_norm_cpu)


def _modulated_norm_plain(x, shift, scale, eps: float):
    """DiT's ``layer_norm(x)·(1+scale)+shift`` without affine parameters; ``shift``/``scale`` (..., 1, C)."""
    c = x.shape[-1]
    norm = _layer_norm_plain(x, ops.ones((c,), ms.float32), ops.zeros((c,), ms.float32), eps)
    return norm * (1 + scale) + shift


def _modulated_norm_cpu(x, shift, scale, eps: float):
    """(x - mean) · [1/std ⊗ (1+scale)] + shift: the outer product is one batched K=1 MatMul per group of rows
    sharing a modulation (per sample, or per frame under an x_mask). float32 inside, cast once."""
    centred, inv_std = _centred_inv_std(x, eps)
    lead, rows, c = x.shape[:-2], x.shape[-2], x.shape[-1]
    groups = _prod(lead)
    factor = ops.broadcast_to(1 + scale.astype(ms.float32), lead + (1, c)).reshape(groups, 1, c)
    out = centred.reshape(groups, rows, c) * _batch_matmul(inv_std.reshape(groups, rows, 1), factor)
    return (out.reshape(x.shape) + expand_rows(shift.astype(ms.float32), x.shape)).astype(x.dtype)


MODULATED_NORM = Formulation(_modulated_norm_plain, _modulated_norm_cpu)


# ---------------------------------------------------------------------------------------------------------
# RMS norm (T5 / QK norm): float32 statistics
# ---------------------------------------------------------------------------------------------------------
def _rms_norm_plain(h, weight, eps: float):
    """``h`` float32 (..., D), ``weight`` float32 (D,) -> float32 ``h / rms(h) · weight``."""
    return h * (ops.rsqrt((h * h).mean(axis=-1, keep_dims=True) + eps) * weight)


def _rms_norm_cpu(h, weight, eps: float):
    d = h.shape[-1]
    inv_rms = ops.rsqrt(_row_mean((h * h).reshape(-1, d)) + eps)
    return h * ops.matmul(inv_rms, weight.reshape(1, d)).reshape(h.shape)  # one full-size product


RMS_NORM = Formulation(_rms_norm_plain, _rms_norm_cpu)


# ---------------------------------------------------------------------------------------------------------
# adaLN gates: gate (..., 1, C) times a residual branch y (..., R, C)
# ---------------------------------------------------------------------------------------------------------
def _gate_plain(gate, y):
    return gate * y


def _gate_cpu(gate, y):
    return expand_rows(gate, y.shape) * y


GATE = Formulation(_gate_plain, _gate_cpu)


# ---------------------------------------------------------------------------------------------------------
# rotary embeddings: x·cos + rotate_half(x)·sin, rotate_half(a, b) = (-b, a) on interleaved pairs (2j, 2j+1)
# (ROTATE_PAIRS) or on the pairs (j, j + D/2) (ROTATE_HALVES)
# ---------------------------------------------------------------------------------------------------------
def rotate_half_matrix(dim: int, halves: bool = False) -> np.ndarray:
    """x @ R maps each interleaved pair (a, b) to (-b, a), or with ``halves`` the halves (x1, x2) to (-x2, x1)
    (Llama's ``rotate_half``: pairs (j, j + dim/2)): 0 and ±1, exact in float32."""
    matrix = np.zeros((dim, dim), np.float32)
    first = np.arange(dim // 2) if halves else np.arange(0, dim, 2)
    second = first + (dim // 2 if halves else 1)
    matrix[second, first] = -1.0
    matrix[first, second] = 1.0
    return matrix


def _rope_tables_plain(cos, sin, shape):
    return cos, sin


def _rope_tables_cpu(cos, sin, shape):
    """cos and sin broadcast to the (B, H, N, D) ``shape`` once for q and k: same-shape Muls afterwards."""
    return ops.broadcast_to(cos, shape), ops.broadcast_to(sin, shape)


ROPE_TABLES = Formulation(_rope_tables_plain, _rope_tables_cpu)


def _rotate_pairs_plain(x, matrix):
    """float32 (..., D) -> the pairs (a, b) mapped to (-b, a), by slicing (``matrix`` unused)."""
    shape = x.shape
    pairs = x.reshape(shape[:-1] + (shape[-1] // 2, 2))
    return ops.cat((-pairs[..., 1:2], pairs[..., 0:1]), axis=-1).reshape(shape)


def _rotate_pairs_cpu(x, matrix):
    """The same map as one small exact MatMul with :func:`rotate_half_matrix` (~2x faster on the CPU)."""
    shape = x.shape
    return ops.matmul(x.reshape(-1, shape[-1]), matrix).reshape(shape)


ROTATE_PAIRS = Formulation(_rotate_pairs_plain, _rotate_pairs_cpu)


def _rotate_halves_plain(x, matrix):
    """float32 (..., D) -> (x1, x2) mapped to (-x2, x1), by slicing (``matrix`` unused)."""
    x1, x2 = ops.split(x, x.shape[-1] // 2, axis=-1)
    return ops.cat((-x2, x1), axis=-1)


# the CPU form is the same MatMul as for the pairs, with ``rotate_half_matrix(dim, halves=True)``
ROTATE_HALVES = Formulation(_rotate_halves_plain, _rotate_pairs_cpu)


# ---------------------------------------------------------------------------------------------------------
# convolution (groups 1, symmetric zero padding), N-D as 3-D: a 2-D convolution is one over a depth of 1
# ---------------------------------------------------------------------------------------------------------
# Below this many multiply-adds per call the native CPU convolution is as fast as the GEMM form (2 cores)
TAPS_MIN_MACS = 3e7


def pad_columns(x2, before: int, after: int):
    """(M, L) -> (M, before + L + after), zeros either side, by one Concat: on the CPU backend ``ops.pad``
    (PadV3) runs at well under 1 GB/s, Concat at memory speed."""
    if before == 0 and after == 0:
        return x2
    parts = [x2]
    if before:
        parts = [ops.zeros((x2.shape[0], before), x2.dtype)] + parts
    if after:
        parts = parts + [ops.zeros((x2.shape[0], after), x2.dtype)]
    return ops.cat(parts, axis=1)


@functools.lru_cache(maxsize=None)
def _gemm_plan(x_shape, w_shape, stride, padding, dilation):
    """The static geometry of :func:`conv_as_gemms` (see there): per axis its stored extent and how it is
    padded, the flat length of one sample's output grid, the zeros before/after it, and per kernel row
    (the KW taps of one (i, j)) the (phase, flat offset) of each tap."""
    n, c = x_shape[:2]
    sizes, kernel = x_shape[2:], w_shape[2:]
    out, extent, pad_before, pad_after, head_shift = [], [], [], [], []
    for size, k, s, (p0, p1), d in zip(sizes, kernel, stride, padding, dilation):
        out.append((size + p0 + p1 - d * (k - 1) - 1) // s + 1)
        if s == 1 and min(p0, p1) <= d * (k - 1):
            # wrapped padding: max(p0, p1) zeros after each line serve as the line's right padding and the
            # next line's left padding; the left padding of the first line is a shift of the flat origin
            extent.append(size + max(p0, p1))
            pad_before.append(0)
            pad_after.append(max(p0, p1))
            head_shift.append(p0)
        else:  # real padding, rounded up to whole strides (the stride's phases are split apart below)
            e = -(-(size + p0 + p1) // s)
            extent.append(e)
            pad_before.append(p0)
            pad_after.append(e * s - size - p0)
            head_shift.append(0)
    ed, eh, ew = extent
    line = (eh * ew, ew, 1)  # flat stride of each axis inside one phase plane
    head = sum(h * st for h, st in zip(head_shift, line))
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            row = []
            for k in range(kernel[2]):
                phase, offset = 0, 0
                for idx, s, d, st, ax in ((i, stride[0], dilation[0], line[0], 0), (j, stride[1], dilation[1], line[1], 1),
                                          (k, stride[2], dilation[2], line[2], 2)):
                    phase = phase * s + (idx * d) % s
                    offset += (idx * d) // s * st
                row.append((phase, offset))
            taps.append(tuple(row))
    length = out[0] * eh * ew
    plane = ed * eh * ew
    tail = max(0, length + max(o for row in taps for _, o in row) - head - plane)
    return (tuple(out), tuple(extent), tuple(pad_before), tuple(pad_after), head, tail, length, tuple(taps))


@constexpr
def gemm_plan(x_shape, w_shape, stride, padding, dilation):
    return _gemm_plan(tuple(x_shape), tuple(w_shape), tuple(stride), tuple(padding), tuple(dilation))


def _stride1_rows(xs, group_weights, bases, length: int, kw_step: int):
    """The stride-1 case of :func:`conv_as_gemms` for one sample ``xs`` (C, L'), one GEMM per depth tap: the
    KW taps of a kernel row differ only by a shift of ``kw_step`` columns, so the KW shifted copies of the
    input are stacked, (C·KW, L''), and the KH kernel rows of one depth tap multiply them in one MatMul
    (KH·O, C·KW) @ (C·KW, L''); the output is then the sum over kernel rows r of that row's (O, L) block
    read at the row's offset ``bases[r]``. Fewer, larger ops than a stack and a MatMul per row: on the CPU
    backend ~30% faster on the VAEs' 3x3 layers (the slices and stacks were a third of the time). One GEMM
    per depth tap rather than one for all rows: each window then reaches only KH-1 lines beyond the
    output, not KD-1 frames (the causal VAE's 5-frame chunks computed ~40% more columns than they kept).
    ``group_weights``: per depth tap its rows' weights stacked, (KH·O, C·KW)."""
    c_kw = group_weights[0].shape[1]
    per_group = len(bases) // len(group_weights)
    o = group_weights[0].shape[0] // per_group
    kw = c_kw // xs.shape[0]
    terms = []
    for g, weights in enumerate(group_weights):
        first = bases[g * per_group]
        span = length + bases[(g + 1) * per_group - 1] - first  # every row's window of this group fits in it
        if kw == 1:
            x_rows = ops.narrow(xs, 1, first, span)
        else:
            cols = []
            for k in range(kw):
                cols.append(ops.narrow(xs, 1, first + k * kw_step, span))
            x_rows = ops.stack(cols, axis=1).reshape(c_kw, span)
        y = ops.matmul(weights, x_rows)
        if per_group == 1 and span == length:
            terms.append(y)
        else:
            y = y.reshape(per_group, o, span)
            for r in range(per_group):
                offset = bases[g * per_group + r] - first
                terms.append(ops.slice(y, (r, 0, offset), (1, o, length)).reshape(o, length))
    return terms[0] if len(terms) == 1 else ops.addn(terms)  # one pass: a few % faster than a chain of Adds


def _strided_rows(xs, flat_weight, taps, length: int):
    """A strided convolution for one sample ``xs`` (phases·C, L'): per kernel row one MatMul of its weights
    (O, C·KW) with its KW taps' slices, each read from its stride phase's plane."""
    o, c = flat_weight.shape[0], flat_weight.shape[1]
    kw = len(taps[0])
    out = None
    for r, row in enumerate(taps):
        cols = []
        for phase, offset in row:
            cols.append(ops.narrow(ops.narrow(xs, 0, phase * c, c), 1, offset, length))
        if kw == 1:
            term = ops.matmul(ops.narrow(flat_weight, 2, r, 1).reshape(o, c), cols[0])
        else:  # rows (c, k): the weight's own order
            term = ops.matmul(ops.narrow(flat_weight, 2, r * kw, kw).reshape(o, c * kw),
                              ops.stack(cols, axis=1).reshape(c * kw, length))
        out = term if out is None else out + term
    return out


def swap_adjacent_axes(x, axis: int):
    """``x`` with axes ``axis`` and ``axis + 1`` exchanged, by a Split along ``axis`` and a Stack (meant for a
    short ``axis``): in graph mode the CPU's Transpose kernel keeps about twice its output alive for the
    graph's lifetime (measured, MindSpore 2.10); Split and Stack keep nothing. Exact on every backend."""
    shape = x.shape
    # the pieces (.., 1, B, ..) stacked after B: (.., 1, B, A, ..); no Python loop (graph mode would recurse)
    swapped = ops.stack(ops.split(x, 1, axis=axis), axis=axis + 2)
    return swapped.reshape(shape[:axis] + (shape[axis + 1], shape[axis]) + shape[axis + 2:])


def split_phases(xs, extent, stride):
    """(N, C, D'·s0 · H'·s1 · W'·s2) -> (N, s0·s1·s2·C, D'·H'·W'): each stride phase (p0, p1, p2) of the
    input as a plane of its own, phases outermost. By Splits and one Concat: in graph mode the CPU's
    Transpose kernel keeps about twice its output alive for the graph's lifetime (measured, MindSpore 2.10),
    and a strided convolution's input is one of the larger activations."""
    n, c = xs.shape[0], xs.shape[1]
    (ed, eh, ew), (s0, s1, s2) = extent, stride
    planes = [xs.reshape(n * c * ed, s0 * eh * s1 * ew * s2)]
    for s, inner in ((s0, eh * s1 * ew * s2), (s1, ew * s2), (s2, 1)):
        split = []
        for plane in planes:  # (rows, ..., s · inner): the phase p of this axis is a Split piece
            rows = plane.shape[0]
            pieces = ops.split(plane.reshape(rows, -1, s, inner), 1, axis=2)
            for piece in pieces:
                split.append(piece.reshape(rows, -1))
        planes = split
    out = []
    for plane in planes:
        out.append(plane.reshape(n, c, ed * eh * ew))
    return out[0] if len(out) == 1 else ops.cat(out, axis=1)


def conv_as_gemms(x, weight, bias, stride, padding, dilation):
    """A 3-D convolution (groups 1, zero padding ``((d0, d1), (h0, h1), (w0, w1))``) as MatMuls over
    contiguous shifted slices of the padded input flattened per channel: the fast path of the CPU backend
    (2-D convolutions use it with a depth of 1).

    Each sample is stored as (C, D', H', W') flattened to (C, D'·H'·W'); kernel tap (i, j, k) then reads the
    same flat slice shifted by ``i·H'W' + j·W' + k``, so the output on the whole (D_out, H', W') grid is the
    sum over kernel rows of one MatMul ``weight[:, :, i, j, :] (O, C·KW) @ [KW shifted slices] (C·KW, L)``,
    and the grid is cropped to (D_out, H_out, W_out); with stride 1 the kernel rows of a depth tap share one
    MatMul (:func:`_stride1_rows`). Padding is shared between neighbouring lines (the
    zeros after a line are also the next line's left padding), so the extra columns are few. A strided
    axis is split into its stride's phases first (:func:`split_phases`). Only Slice, Split, Concat, Stack,
    MatMul and same-shape Add run: the CPU's strided-slice, pad and reference-convolution kernels are
    10-100x slower than memory speed, and its Transpose keeps memory in graph mode.
    """
    n, c = x.shape[0], x.shape[1]
    o = weight.shape[0]
    (od, oh, ow), (ed, eh, ew), before, after, head, tail, length, taps = gemm_plan(
        x.shape, weight.shape, stride, padding, dilation)
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    phases = stride[0] * stride[1] * stride[2]
    kw = weight.shape[4]
    flat_weight = weight.reshape(o, c, -1)  # (O, C, KD·KH·KW): the KW taps of a kernel row are adjacent
    xs = pad_columns(x.reshape(n * c * d * h, w), before[2], after[2])
    wp = w + before[2] + after[2]
    xs = pad_columns(xs.reshape(n * c * d, h * wp), before[1] * wp, after[1] * wp)
    hp = h + before[1] + after[1]
    group_weights = []
    bases = []  # per kernel row: the flat offset of its first tap (stride 1)
    for row in taps:
        bases.append(row[0][1])
    if phases == 1:
        xs = pad_columns(xs.reshape(n * c, d * hp * wp), head + before[0] * hp * wp, after[0] * hp * wp + tail)
        kd, kh = weight.shape[2], weight.shape[3]
        if kd * kh == 1:
            group_weights = [flat_weight.reshape(o, c * kw)]
        else:  # per depth tap: rows (j, o), columns (c, k), by a Split and Concats (a Transpose keeps memory)
            pieces = []
            for piece in ops.split(flat_weight, kw, axis=2):
                pieces.append(piece.reshape(1, o, c * kw))
            for i in range(kd):
                group_weights.append(ops.cat(pieces[i * kh:(i + 1) * kh], axis=0).reshape(kh * o, c * kw))
        xs = xs.reshape(n, c, -1)
    else:
        xs = pad_columns(xs.reshape(n * c, d * hp * wp), before[0] * hp * wp, after[0] * hp * wp)
        xs = split_phases(xs.reshape(n, c, -1), (ed, eh, ew), stride)
        xs = pad_columns(xs.reshape(n * phases * c, ed * eh * ew), head, tail).reshape(n, phases * c, -1)
    # one sample at a time, 2-D MatMuls only: a MatMul broadcasting the weight over a batch keeps about the
    # weight's size alive per call in graph mode (measured); a batch of images comes as one sample of depth N
    outs = []
    for s in range(n):
        xb = xs if n == 1 else ops.narrow(xs, 0, s, 1)
        xb = xb.reshape(xb.shape[1], xb.shape[2])
        if phases == 1:
            out = _stride1_rows(xb, group_weights, bases, length, dilation[2])
        else:
            out = _strided_rows(xb, flat_weight, taps, length)
        out = out.reshape(1, o, length)
        outs.append(out if bias is None else ops.bias_add(out, bias))
    out = outs[0] if n == 1 else ops.cat(outs, axis=0)
    # crop the (od, eh, ew) grid to (od, oh, ow): two Slices on 2-D views
    out = ops.narrow(out.reshape(n * o * od * eh, ew), 1, 0, ow).reshape(n * o * od, eh * ow)
    return ops.narrow(out, 1, 0, oh * ow).reshape(n, o, od, oh, ow)


def conv_spec(dims: int, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
              groups: int) -> tuple:
    """What a convolution cell fixes at build time, as the tuple the forms below take (graph-mode constants):
    (dims, native (stride, padding, dilation, groups), GEMM form (stride, (before, after) padding, dilation)
    as 3-D tuples (a 2-D convolution has a depth of 1), multiply-adds per output position)."""
    depth = (1,) if dims == 2 else ()
    gemm = (depth + tuple(stride), ((0, 0),) * len(depth) + tuple((p, p) for p in padding), depth + tuple(dilation))
    native = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return dims, native, gemm, in_channels * out_channels * _prod(tuple(kernel_size))


def _convolution_plain(x, weight, bias, spec, min_macs):
    dims, (stride, padding, dilation, groups), _, _ = spec
    conv = ops.conv2d if dims == 2 else ops.conv3d
    return conv(x, weight, bias, stride, "pad", padding, dilation, groups)


def _convolution_cpu(x, weight, bias, spec, min_macs):
    """:func:`conv_as_gemms` when the call is large enough to gain from it (below ``min_macs`` multiply-adds
    the per-op cost of the GEMM form outweighs the gain; groups other than 1 keep the native op). 1x1
    kernels too: one MatMul is about twice as fast as the CPU's 1x1 convolution."""
    dims, native, gemm, macs_per_output = spec
    positions = 1
    for size in x.shape[2:]:  # input positions ~ output positions; static shapes in graph mode
        positions = positions * size
    if native[3] != 1 or x.shape[0] * positions * macs_per_output < min_macs:
        return _convolution_plain(x, weight, bias, spec, min_macs)
    if dims == 3:
        # the weight's GEMM layouts after the layer's input (not the padded one, measured): CPU graph mode keeps
        # copies made from Parameters alone for the graph's lifetime (temporal decoder 1.57 GB -> 0.98 GB). Not for
        # 2-D layers: there it raised the SD encoder's peak by 0.16 GB (measured, unexplained; README Performance)
        return conv_as_gemms(x, ops.depend(weight, x), bias, *gemm)
    if x.shape[0] == 1:
        return conv_as_gemms(x.expand_dims(2), weight.expand_dims(2), bias, *gemm).squeeze(2)
    # a batch of images as one sample of depth N: one set of GEMMs for the whole batch (fewer, larger ops, a
    # third of the graph to compile next to a GEMM set per image); the axis swaps by Split + Stack
    out = conv_as_gemms(swap_adjacent_axes(x, 0).expand_dims(0), weight.expand_dims(2), bias, *gemm)
    return swap_adjacent_axes(out.squeeze(0), 0)


CONVOLUTION = Formulation(_convolution_plain, _convolution_cpu)


# ---------------------------------------------------------------------------------------------------------
# group norm over (N, C, *), computed in float32, returned in the input dtype
# ---------------------------------------------------------------------------------------------------------
def _group_norm_plain(x, weight, bias, groups: int, eps: float):
    """``weight``/``bias``: float32 (C,) tensors or None (no affine)."""
    shape = x.shape
    h = x.astype(ms.float32).reshape(shape[0], groups, -1)
    mean = h.mean(axis=-1, keep_dims=True)
    var = ((h - mean) ** 2).mean(axis=-1, keep_dims=True)
    h = ((h - mean) / ops.sqrt(var + eps)).reshape(shape)
    if weight is not None:
        param_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
        h = h * weight.reshape(param_shape) + bias.reshape(param_shape)
    return h.astype(x.dtype)


def _group_norm_cpu(x, weight, bias, groups: int, eps: float):
    """Statistics as reductions over 2-D (rows, elements) views, the centring a per-row BiasAdd, the affine a
    per-row scale then a per-channel BiasAdd: the CPU reduces a 3-D view's last axis and broadcasts
    (1, C, 1, 1) operands 10-20x slower than these, and its GroupNorm kernel is single-threaded. Same
    arithmetic (two-pass variance) up to float32 rounding; about 4x faster on the VAEs' activations."""
    shape = x.shape
    n, c = shape[0], shape[1]
    rows = n * groups
    h = x.astype(ms.float32).reshape(rows, -1)
    mean = h.mean(axis=-1, keep_dims=True)
    centred = ops.bias_add(h.reshape(1, rows, -1), -mean.reshape(rows))  # (1, rows, M): rows as channels
    var = (centred * centred).reshape(rows, -1).mean(axis=-1, keep_dims=True)
    inv_std = ops.rsqrt(var + eps).reshape(n, groups, 1)
    if weight is not None:  # per (sample, channel) scale: weight / std of the channel's group
        scale = (inv_std * weight.reshape(1, groups, c // groups)).reshape(n * c, 1)
    else:
        scale = ops.broadcast_to(inv_std, (n, groups, c // groups)).reshape(n * c, 1)
    positions = centred.size // (n * c)
    # the per-row scale materialised by a K=1 MatMul, then a same-shape Mul: a broadcasting (rows, 1) x (rows, M)
    # Mul is slower on the CPU backend, and in graph mode each such kernel keeps ~4x its output alive for the
    # graph's lifetime (measured: 135 MB per group norm of a 31 MB activation; the VAEs' decoders rose by GBs)
    out = centred.reshape(n * c, positions) * ops.matmul(scale, ops.ones((1, positions), ms.float32))
    if weight is not None:
        out = ops.bias_add(out.reshape(n, c, -1), bias)
    return out.reshape(shape).astype(x.dtype)


GROUP_NORM = Formulation(_group_norm_plain, _group_norm_cpu)
