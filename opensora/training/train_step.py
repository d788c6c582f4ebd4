"""One compiled training step: scaled loss -> gradients -> data-parallel average -> unscale ->
overflow check -> global-norm clipping -> AdamW (optionally ZeRO-1 sharded) -> EMA -> loss-scale update.

``loss_net(*inputs)`` returns the scalar loss of the local batch. Everything happens inside one Cell
so that graph mode compiles the whole step (the default); PyNative runs the same code.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .ema import EMA
from .loss_scaler import LossScaler
from .optimizer import AdamW
from .parallel import GradAverager, global_norm, scale_grads


class _ScaledLoss(nn.Cell):
    """loss * scale, the function whose gradient is taken (the scale is an input, not differentiated)."""

    def __init__(self, loss_net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net

    def construct(self, scale, *inputs):
        loss = self.loss_net(*inputs)
        return loss.astype(ms.float32) * scale


class TrainStep(nn.Cell):
    """``construct(lr, *inputs)`` -> (mean loss over ranks, finite flag, loss scale used, grad norm)."""

    def __init__(self, loss_net: nn.Cell, optimizer: AdamW, scaler: LossScaler | None = None,
                 clip_grad: float | None = None, ema: EMA | None = None, world: int = 1):
        super().__init__(auto_prefix=False)
        self.scaled = _ScaledLoss(loss_net)
        self.optimizer = optimizer
        self.scaler = scaler if scaler is not None else LossScaler("none")
        self.ema = ema
        self.use_ema = ema is not None
        self.clip = clip_grad is not None and clip_grad > 0
        self.clip_grad = float(clip_grad) if self.clip else 1.0
        self.averager = GradAverager(world)
        self.world = world
        if world > 1:
            self.loss_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.grad_fn = ops.value_and_grad(self.scaled, None, optimizer.params)

    def construct(self, lr, *inputs):
        scale = self.scaler.scale_value.value()
        loss, grads = self.grad_fn(scale, *inputs)
        grads = self.averager(grads)
        inv = 1.0 / scale
        grads = scale_grads(grads, inv)
        loss = loss / scale
        # an overflowed scaled loss can still give finite gradients (d(scale*loss) = scale*dloss): check both
        finite = ops.logical_and(ms.amp.all_finite(grads), ops.isfinite(loss))
        norm = global_norm(grads)
        if self.clip:
            factor = ops.minimum(self.clip_grad / (norm + 1e-6), ops.ones_like(norm))
            grads = scale_grads(grads, factor)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads, lr))
            if self.use_ema:
                loss = ops.depend(loss, self.ema())
        loss = ops.depend(loss, self.scaler(finite))
        if self.world > 1:
            loss = self.loss_reduce(loss) / self.world
        return loss, finite, scale, norm
