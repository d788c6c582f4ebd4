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

    def _one(self, grad):
        return self.all_reduce(grad) * self.scale

    def construct(self, grads):
        if not self.enabled:
            return grads
        out = ()
        for g in grads:
            out = out + (self._one(g),)
        return out


def global_norm(grads) -> ms.Tensor:
    """L2 norm over all gradients (float32), as torch.nn.utils.clip_grad_norm_ computes it."""
    total = ops.zeros((), ms.float32)
    for g in grads:
        total = total + ops.reduce_sum(ops.square(g.astype(ms.float32)))
    return ops.sqrt(total)
