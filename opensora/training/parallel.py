"""Data parallel gradient averaging and the ZeRO-1 slice arithmetic, on collectives every backend has.

MindSpore's CPU backend has AllReduce, AllGather and Broadcast but no ReduceScatter, and its built-in
parallel optimizer (``enable_parallel_optimizer``) runs only on Ascend/GPU. So:

* data parallel: every rank computes gradients on its own batch, then :class:`GradAverager` AllReduces
  them and divides by the number of ranks (equal per-rank batch sizes make this the gradient of the
  mean loss over the global batch);
* ZeRO-1: every parameter is flattened and cut into ``world`` equal slices (zero-padded at the end);
  rank r keeps the optimizer state of slice r only, updates that slice, and an AllGather of the
  updated slices rebuilds the full parameter on every rank (see :mod:`opensora.training.optimizer`).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops


def shard_length(numel: int, world: int) -> int:
    """Elements per rank for a parameter of ``numel`` elements cut into ``world`` equal slices."""
    return int(math.ceil(numel / world))


def rank_slice(x, chunk: int, world: int, rank: int):
    """Slice ``rank`` (``chunk`` elements) of ``x`` flattened and zero-padded to ``chunk * world`` elements:
    what ZeRO-1 keeps of a parameter, its gradient or its EMA on that rank."""
    flat = x.reshape((-1,))
    pad = chunk * world - flat.shape[0]
    if pad > 0:
        flat = ops.concat((flat, ops.zeros((pad,), flat.dtype)))
    return flat[rank * chunk:(rank + 1) * chunk]


def world_info() -> tuple[int, int]:
    """(rank, world size) of the initialised communication group, or (0, 1) without one."""
    from ..runtime import current_runtime

    rt = current_runtime()
    return rt.rank_id, rt.device_num


class GradAverager(nn.Cell):
    """AllReduce(sum) every gradient and divide by the world size; identity on one process."""

    def __init__(self, world: int):
        super().__init__()
        self.world = world
        self.enabled = world > 1
        self.hyper_map = ops.HyperMap()
        if self.enabled:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.scale = 1.0 / world

    def construct(self, grads):
        if not self.enabled:
            return grads
        return self.hyper_map(ops.partial(_reduce_mean, self.all_reduce, self.scale), grads)


_reduce_mean = ops.MultitypeFuncGraph("reduce_mean")
_scale = ops.MultitypeFuncGraph("scale")
_square_sum = ops.MultitypeFuncGraph("square_sum")


@_reduce_mean.register("Function", "Number", "Tensor")
def _reduce_mean_one(all_reduce, scale, grad):
    return all_reduce(grad) * scale


@_scale.register("Tensor", "Tensor")
def _scale_one(factor, grad):
    return grad * factor.astype(grad.dtype)


@_square_sum.register("Tensor")
def _square_sum_one(grad):
    return ops.reduce_sum(ops.square(grad.astype(ms.float32)))


_HYPER_MAP = ops.HyperMap()


def scale_grads(grads, factor):
    """Every gradient times the scalar tensor ``factor``."""
    return _HYPER_MAP(ops.partial(_scale, factor), grads)


def global_norm(grads) -> ms.Tensor:
    """L2 norm over all gradients (float32), as torch.nn.utils.clip_grad_norm_ computes it."""
    return ops.sqrt(ops.addn(_HYPER_MAP(_square_sum, grads)))
