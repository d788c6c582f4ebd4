"""Open-Sora 1.0 stage 1: start STDiT from a PixArt-alpha image checkpoint, as upstream does.

Upstream (v1.0 ``ckpt_utils.reparameter`` + ``STDiT.initialize_temporal``): the spatial blocks, embedders
and final layer come from PixArt; the 2-D patch-embedding weight (O, C, p, p) gains a time axis
(O, C, 1, p, p); PixArt's fixed ``pos_embed`` is dropped (STDiT computes its own); the temporal
attention blocks keep their initialisation with the output projection ``attn_temp.proj`` set to zero,
so the model starts as the image model applied frame by frame. Missing and unused keys are reported.
"""
from __future__ import annotations

import logging

import numpy as np

import mindspore as ms
from mindspore import nn

from ..utils.checkpoint import CheckpointError, KeyReport, load_into, read_checkpoint

logger = logging.getLogger(__name__)

DROP_KEYS = ("pos_embed",)
_PREFIXES = ("state_dict.", "ema.", "module.", "model.")


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def load_pixart(model: nn.Cell, path: str):
    """Load a ``PixArt-XL-2-512x512`` checkpoint converted by tools/convert_pt2ms.py into an STDiT;
    returns the key report. The name/shape mapping is the converter's own (``pixart_to_stdit``)."""
    from ..models.stdit.convert import pixart_to_stdit

    raw = {_strip(name): value for name, value in read_checkpoint(path).items() if _strip(name) not in DROP_KEYS}
    params = {}
    for name, value in pixart_to_stdit(raw).items():
        if not isinstance(value, ms.Parameter):
            value = ms.Parameter(value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value)), name=name)
        params[name] = value
    report = load_into(model, params, source=path, strict=False)
    if report.mismatched:  # as torch's load_state_dict(strict=False): a shape mismatch is an error
        raise CheckpointError(f"PixArt init from {path} (a y_embedding of another length: set model_max_length):\n"
                              f"{KeyReport(mismatched=report.mismatched).format()}")
    zeroed = []
    for p in model.get_parameters():
        if p.name in report.missing and ".attn_temp.proj." in p.name:
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)).astype(p.dtype))
            zeroed.append(p.name)
    temporal = [k for k in report.missing if "attn_temp" in k or "norm_temp" in k]
    other = [k for k in report.missing if k not in temporal]
    logger.info("PixArt init from %s: %d tensors loaded; %d temporal keys initialised (attn_temp.proj zeroed: %d)",
                path, len(params) - len(report.unexpected), len(temporal), len(zeroed))
    if other:
        logger.warning("PixArt init: %d other missing keys keep their initialisation: %s", len(other), other[:20])
    if report.unexpected:
        logger.warning("PixArt init: %d unused checkpoint keys: %s", len(report.unexpected), report.unexpected[:20])
    return report
