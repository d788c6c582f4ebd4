"""Exponential moving average of the trainable weights (upstream ``update_ema``, decay 0.9999).

The EMA copies are Parameters named ``ema.<param>``; :meth:`EMA.plain_state` returns them under the
model's own names so that the EMA checkpoint loads into the model like any other (e.g. for inference).

Under ZeRO-1 (``shard``) every rank keeps the EMA of its 1/world slice of each flattened, zero-padded
parameter only, as upstream shards its EMA model across the data-parallel ranks: the same slices as the
optimizer moments (:mod:`opensora.training.parallel`). Saving gathers the slices into full tensors, so
``ema.ckpt`` is the same file with and without sharding; resuming takes this rank's slice of it.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..utils.checkpoint import require_shapes
from .parallel import rank_slice, shard_length


class EMA(nn.Cell):
    def __init__(self, params, decay: float = 0.9999, shard: bool = False, world: int = 1, rank: int = 0):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.decay = float(decay)
        self.shard = bool(shard) and world > 1
        self.world, self.rank = world, rank
        self.ema = ms.ParameterTuple(
            [Parameter(self._kept(p.value()), name=f"ema.{p.name}", requires_grad=False) for p in self.params])
        self.hyper_map = ops.HyperMap()
        self._gather = _GatherSlices(self.ema) if self.shard else None

    def _kept(self, value) -> Tensor:
        """A full value -> what this rank keeps of it (float32): all of it, or its slice when sharded."""
        value = Tensor(np.array(value.asnumpy() if hasattr(value, "asnumpy") else value, np.float32))
        if not self.shard:
            return value
        return rank_slice(value, shard_length(value.size, self.world), self.world, self.rank)

    def state_parameters(self):
        return list(self.ema)

    def state_bytes(self) -> int:
        return sum(int(np.prod(e.shape)) * 4 for e in self.ema)

    def plain_state(self) -> dict:
        """model parameter name -> EMA value (float32, full shape). Sharded: a collective, every rank calls it."""
        if not self.shard:
            return {p.name: e.value() for p, e in zip(self.params, self.ema)}
        gathered = self._gather()
        return {p.name: g[:int(np.prod(p.shape))].reshape(p.shape) for p, g in zip(self.params, gathered)}

    def load_plain_state(self, values: dict, what: str) -> None:
        """Set the EMA from full values by model parameter name (what :meth:`plain_state` returns)."""
        require_shapes(values, {p.name: p.shape for p in self.params}, what)
        for p, e in zip(self.params, self.ema):
            e.set_data(self._kept(values[p.name]))

    def construct(self):
        if self.shard:
            update = ops.partial(_ema_slice_update, self.decay, self.world, self.rank)
        else:
            update = ops.partial(_ema_update, self.decay)
        return self.hyper_map(update, self.ema, self.params)


class _GatherSlices(nn.Cell):
    """Every rank's EMA slices -> the flat, padded full tensors (AllGather), on every rank."""

    def __init__(self, slices):
        super().__init__()
        self.slices = slices
        self.all_gather = ops.AllGather()
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(self.all_gather, self.slices)


_ema_update = ops.MultitypeFuncGraph("ema_update")
_ema_slice_update = ops.MultitypeFuncGraph("ema_slice_update")


@_ema_update.register("Number", "Tensor", "Tensor")
def _update(decay, ema, param):
    return ops.assign(ema, ema * decay + param.astype(ms.float32) * (1.0 - decay))


@_ema_slice_update.register("Number", "Number", "Number", "Tensor", "Tensor")
def _update_slice(decay, world, rank, ema, param):
    own = rank_slice(param.astype(ms.float32), ema.shape[0], world, rank)
    return ops.assign(ema, ema * decay + own * (1.0 - decay))
