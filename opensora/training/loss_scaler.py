"""Loss scaling for float16 training, as a Cell so that it compiles into the graph and is checkpointed.

Follows ``mindspore.amp.DynamicLossScaler`` (scale, then unscale the gradients; on overflow halve the
scale and skip the update; after ``scale_window`` finite steps double it) but keeps the counter as a
Parameter and adjusts with ``select`` instead of Python control flow, so graph mode and resume work.
``nn.TrainOneStepWithLossScaleCell`` is not used: its overflow check has no CPU kernel.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

KINDS = ("none", "static", "dynamic")


class LossScaler(nn.Cell):
    def __init__(self, kind: str = "none", scale_value: float = 65536.0, scale_factor: float = 2.0,
                 scale_window: int = 1000):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"loss_scaler_type must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.dynamic = kind == "dynamic"
        init = 1.0 if kind == "none" else float(scale_value)
        self.scale_value = Parameter(Tensor(init, ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)

    def state_parameters(self):
        return [self.scale_value, self.good_steps]

    def construct(self, finite):
        """Adjust after a step; ``finite`` says whether all gradients were finite."""
        if not self.dynamic:
            return self.scale_value
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.scale_window
        scale = self.scale_value
        grown = ops.select(grow, scale * self.scale_factor, scale)
        shrunk = ops.maximum(scale / self.scale_factor, ops.ones_like(scale))
        new_scale = ops.select(finite, grown, shrunk)
        good = ops.select(grow, ops.zeros_like(good), good)
        ops.assign(self.good_steps, good)
        return ops.assign(self.scale_value, new_scale)
