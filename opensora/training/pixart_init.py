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

from ..utils.checkpoint import read_checkpoint, load_into

logger = logging.getLogger(__name__)

DROP_KEYS = ("pos_embed",)
_PREFIXES = ("state_dict.", "ema.", "module.", "model.")


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def load_pixart(model: nn.Cell, path: str):
    """Load a converted ``PixArt-XL-2-512x512`` checkpoint into an STDiT; returns the key report."""
    raw = read_checkpoint(path)
    shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    params = {}
    for name, value in raw.items():
        name = _strip(name)
        if name in DROP_KEYS:
            continue
        want = shapes.get(name)
        if want is not None and len(value.shape) == 4 and len(want) == 5 and name.endswith("x_embedder.proj.weight"):
            value = ms.Parameter(ms.Tensor(value.asnumpy()[:, :, None]), name=name)
        params[name] = value
    report = load_into(model, params, source=path, strict=False)
    zeroed = []
    for p in model.get_parameters():
        if p.name in report.missing and ".attn_temp.proj." in p.name:
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)).astype(p.dtype))
            zeroed.append(p.name)
    temporal = [k for k in report.missing if "attn_temp" in k or "norm_temp" in k]
    other = [k for k in report.missing if k not in temporal]
    logger.info("PixArt init from %s: %d tensors loaded; %d temporal keys initialised (attn_temp.proj zeroed: %d)",
                path, len(params) - len(report.unexpected) - len(report.mismatched), len(temporal), len(zeroed))
    if other:
        logger.warning("PixArt init: %d other missing keys keep their initialisation: %s", len(other), other[:20])
    if report.unexpected:
        logger.warning("PixArt init: %d unused checkpoint keys: %s", len(report.unexpected), report.unexpected[:20])
    if report.mismatched:
        logger.warning("PixArt init: %d keys with a different shape were skipped: %s", len(report.mismatched),
                       report.mismatched[:20])
    return report
