"""Holding a model's weights in a dtype, as upstream's ``model.to(dtype)``: every floating parameter converted
(buffers included: here they are non-trainable parameters). The layers then compute in the dtype of their
inputs, with float32 exactly where upstream upcasts (norm statistics, softmax, the sinusoidal features).

Inference holds the weights in the model dtype (half the memory in fp16/bf16); training keeps float32
master weights and computes in the model dtype (the layers cast the weights at use), as upstream's
mixed-precision training keeps float32 master copies in the optimizer.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

FLOATING = (ms.float32, ms.float16, ms.bfloat16, ms.float64)


def cast_parameters(net: nn.Cell, dtype) -> nn.Cell:
    """Convert every floating parameter of ``net`` to ``dtype`` in place (``Parameter.set_dtype``: ``set_data``
    would cast the new data back to the parameter's dtype). Parameters not drawn yet (a lazy build, see
    ``layers/init.py``) only change their declared dtype: they are drawn or loaded in ``dtype``, with no float32
    copy of the model in between."""
    for param in net.get_parameters():
        if param.dtype in FLOATING and param.dtype != dtype:
            param.set_dtype(dtype)
    return net
