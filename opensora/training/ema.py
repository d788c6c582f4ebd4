"""Exponential moving average of the trainable weights (upstream ``update_ema``, decay 0.9999).

The EMA copies are Parameters named ``ema.<param>``; :meth:`EMA.plain_state` returns them under the
model's own names so that the EMA checkpoint loads into the model like any other (e.g. for inference).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops


class EMA(nn.Cell):
    def __init__(self, params, decay: float = 0.9999):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.decay = float(decay)
        self.ema = ms.ParameterTuple(
            [Parameter(p.value().astype(ms.float32).copy(), name=f"ema.{p.name}", requires_grad=False)
             for p in self.params])
        self.hyper_map = ops.HyperMap()

    def state_parameters(self):
        return list(self.ema)

    def plain_state(self) -> dict:
        """model parameter name -> EMA value (float32)."""
        return {p.name: e.value() for p, e in zip(self.params, self.ema)}

    def construct(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.ema, self.params)


_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Number", "Tensor", "Tensor")
def _update(decay, ema, param):
    return ops.assign(ema, ema * decay + param.astype(ms.float32) * (1.0 - decay))
