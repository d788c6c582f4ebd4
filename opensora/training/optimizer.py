"""AdamW with PyTorch's semantics, optionally ZeRO-1 sharded across data-parallel ranks.

Why our own: MindSpore's ``nn.AdamWeightDecay`` has no bias correction (it is not torch's AdamW, which
upstream uses via ColossalAI's HybridAdam(adamw_mode=True)), and its parallel optimizer is Ascend/GPU
only. One implementation serves ``zero_stage: 0`` (full state on every rank) and ``zero_stage: 1``
(each rank holds the first/second moments of its 1/world slice of every parameter, updates that slice,
then an AllGather rebuilds the parameters), so the two give the same numbers.

Update (torch.optim.AdamW): p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from .parallel import rank_slice, shard_length


class AdamW(nn.Cell):
    """``construct(grads, lr)`` updates ``params`` in place; ``grads`` are full (already averaged).

    ``world``/``rank``: shard the moments over ``world`` ranks (ZeRO-1) when ``shard`` is true.
    The moments are Parameters named ``adam_m.<param>`` / ``adam_v.<param>``; the step count is
    ``adam_step``. All of them go into the training checkpoint (per rank when sharded).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, shard: bool = False, world: int = 1, rank: int = 0):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.base_lr = lr
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.shard = bool(shard) and world > 1
        self.world, self.rank = world, rank
        self.numels, self.chunks, self.shapes = [], [], []
        moments_m, moments_v = [], []
        for p in self.params:
            numel = int(np.prod(p.shape)) if len(p.shape) else 1
            chunk = shard_length(numel, world) if self.shard else numel
            state_shape = (chunk,) if self.shard else tuple(p.shape)
            self.numels.append(numel)
            self.chunks.append(chunk)
            self.shapes.append(tuple(p.shape))
            moments_m.append(Parameter(Tensor(np.zeros(state_shape, np.float32)), name=f"adam_m.{p.name}",
                                       requires_grad=False))
            moments_v.append(Parameter(Tensor(np.zeros(state_shape, np.float32)), name=f"adam_v.{p.name}",
                                       requires_grad=False))
        self.moments_m = ms.ParameterTuple(moments_m)
        self.moments_v = ms.ParameterTuple(moments_v)
        self.step = Parameter(Tensor(0, ms.int32), name="adam_step", requires_grad=False)
        self.hyper_map = ops.HyperMap()
        self.all_gather = ops.AllGather() if self.shard else None

    def state_parameters(self) -> list[Parameter]:
        """Everything the optimizer must save to resume: moments and the step count."""
        return list(self.moments_m) + list(self.moments_v) + [self.step]

    def state_bytes(self) -> int:
        return sum(int(np.prod(p.shape)) * 4 for p in list(self.moments_m) + list(self.moments_v))

    def construct(self, grads, lr):
        step = self.step + 1
        ops.assign(self.step, step)
        t = step.astype(ms.float32)
        bc1 = 1.0 - ops.pow(ms.Tensor(self.beta1, ms.float32), t)
        bc2 = 1.0 - ops.pow(ms.Tensor(self.beta2, ms.float32), t)
        lr = lr.astype(ms.float32)
        # HyperMap compiles one update per distinct parameter shape (blocks share them), where a Python
        # loop would unroll one per parameter: several times faster to compile for STDiT
        if self.shard:
            update = ops.partial(_sharded_update, self.all_gather, self.beta1, self.beta2, self.eps,
                                 self.weight_decay, self.world, self.rank, lr, bc1, bc2)
        else:
            update = ops.partial(_update, self.beta1, self.beta2, self.eps, self.weight_decay, lr, bc1, bc2)
        return self.hyper_map(update, self.params, grads, self.moments_m, self.moments_v)


def _adam(beta1, beta2, eps, weight_decay, lr, bc1, bc2, p32, g, m, v):
    g = g.astype(ms.float32)
    p32 = p32 - lr * weight_decay * p32
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * ops.square(g)
    p_new = p32 - (lr / bc1) * m_new / (ops.sqrt(v_new) / ops.sqrt(bc2) + eps)
    return p_new, m_new, v_new


_update = ops.MultitypeFuncGraph("adamw_update")
_sharded_update = ops.MultitypeFuncGraph("adamw_sharded_update")


@_update.register("Number", "Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                  "Tensor")
def _full(beta1, beta2, eps, weight_decay, lr, bc1, bc2, p, g, m, v):
    p_new, m_new, v_new = _adam(beta1, beta2, eps, weight_decay, lr, bc1, bc2, p.astype(ms.float32), g, m, v)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    return ops.assign(p, p_new.astype(p.dtype))


@_sharded_update.register("Function", "Number", "Number", "Number", "Number", "Number", "Number", "Tensor", "Tensor",
                          "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _sharded(all_gather, beta1, beta2, eps, weight_decay, world, rank, lr, bc1, bc2, p, g, m, v):
    """Update slice ``rank`` of the flattened, zero-padded parameter, then AllGather the slices."""
    numel = p.size
    chunk = m.shape[0]
    p_new, m_new, v_new = _adam(beta1, beta2, eps, weight_decay, lr, bc1, bc2,
                                rank_slice(p.astype(ms.float32), chunk, world, rank), rank_slice(g, chunk, world, rank),
                                m, v)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    full = all_gather(p_new)[:numel].reshape(p.shape)
    return ops.assign(p, full.astype(p.dtype))
