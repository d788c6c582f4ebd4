"""Official STDiT / STDiT2 / STDiT3 (and PixArt-alpha) weights -> this port's parameter names. Torch-free.

The MindSpore models keep the official parameter names, so conversion is by name. THE table of true
differences (:data:`CONVERSION_TABLE`), used by ``from_pretrained`` and by ``tools/convert_pt2ms.py``:

==============================  ==========================================================================
official key                    here
==============================  ==========================================================================
``pos_embed``                   dropped: STDiT (1.0) buffer (1, S, C) recomputed from ``input_size`` and
                                ``space_scale`` (upstream's loader deletes it too); PixArt's likewise
``pos_embed_temporal``          dropped: STDiT (1.0) buffer (1, T, C) recomputed from ``input_size``/``time_scale``
``pos_embed.inv_freq``          dropped if present (non-persistent buffer of PositionEmbedding2D)
``y_embedder.y_embedding``      kept; upstream's buffer is a non-trainable Parameter here. Its length is
                                ``model_max_length`` (1.0/PixArt 120, 1.1 200, 1.2 300): a checkpoint of
                                another length is refused (build the model with the matching value)
``rope.freqs``                  kept (a non-trainable Parameter upstream too)
``*.attn.qkv.weight``           kept as one (3C, C) parameter (q, k, v rows), as upstream
``x_embedder.proj.weight``      kept (E, C, pt, ph, pw); PixArt's 2-D (E, C, ph, pw) -> (E, C, 1, ph, pw) only
                                when mapping PixArt onto STDiT (:func:`pixart_to_stdit`)
==============================  ==========================================================================
"""
from __future__ import annotations

import re
from typing import Iterator, Mapping

import numpy as np

# (pattern, action, why) — action "drop"; anything not listed is kept unchanged.
CONVERSION_TABLE = (
    (r"^pos_embed$", "drop", "STDiT 1.0 / PixArt spatial sin-cos buffer, recomputed from input_size/space_scale"),
    (r"^pos_embed_temporal$", "drop", "STDiT 1.0 temporal sin-cos buffer, recomputed from input_size/time_scale"),
    (r"(^|\.)inv_freq$", "drop", "non-persistent sin-cos frequencies, recomputed"),
)
_COMPILED = tuple((re.compile(p), action) for p, action, _ in CONVERSION_TABLE)

MODEL_NAMES = ("STDiT-XL/2", "STDiT2-XL/2", "STDiT3-XL/2", "STDiT3-3B/2", "PixArt-XL/2")
# constructor arguments of the official checkpoints (see shared/manifests): what --model builds by default
OFFICIAL_KWARGS = {
    "STDiT-XL/2": dict(caption_channels=4096, model_max_length=120, in_channels=4, input_size=(16, 32, 32),
                       space_scale=0.5, time_scale=1.0),
    "STDiT2-XL/2": dict(caption_channels=4096, model_max_length=200, in_channels=4, qk_norm=True,
                        input_sq_size=512),
    "STDiT3-XL/2": dict(caption_channels=4096, model_max_length=300, in_channels=4, qk_norm=True),
    "STDiT3-3B/2": dict(caption_channels=4096, model_max_length=300, in_channels=4, qk_norm=True),
    "PixArt-XL/2": dict(caption_channels=4096, model_max_length=120, in_channels=4),
}


def config_class(model: str):
    """The config class whose keys a checkpoint folder's ``config.json`` may set for ``model`` (None: PixArt)."""
    from .stdit import STDiTConfig
    from .stdit2 import STDiT2Config
    from .stdit3 import STDiT3Config

    return {"STDiT-XL/2": STDiTConfig, "STDiT2-XL/2": STDiT2Config, "STDiT3-XL/2": STDiT3Config,
            "STDiT3-3B/2": STDiT3Config}.get(model)


def rename(name: str, value) -> Iterator[tuple[str, object]]:
    """One official (name, tensor) -> the (name, tensor) pairs of this port (none when dropped)."""
    for pattern, action in _COMPILED:
        if pattern.search(name):
            if action == "drop":
                return
    yield name, value


def to_mindspore_params(params: Mapping[str, object]) -> dict:
    """Apply :func:`rename` to a whole name -> tensor mapping."""
    out = {}
    for name, value in params.items():
        for new_name, new_value in rename(name, value):
            out[new_name] = new_value
    return out


def guess_model(keys) -> str:
    """The upstream model name from a checkpoint's keys (and one shape, for STDiT3 XL vs 3B)."""
    keys = keys if isinstance(keys, Mapping) else {k: None for k in keys}
    if any(k.startswith("spatial_blocks.") for k in keys):
        shape = keys.get("spatial_blocks.0.scale_shift_table")
        if shape is not None and tuple(np.shape(shape) if not isinstance(shape, tuple) else shape)[-1] == 1872:
            return "STDiT3-3B/2"
        return "STDiT3-XL/2"
    if any(".scale_shift_table_temporal" in k for k in keys) or "fl_embedder.mlp.0.weight" in keys:
        return "STDiT2-XL/2"
    if any(".attn_temp." in k for k in keys):
        return "STDiT-XL/2"
    if "blocks.0.attn.qkv.weight" in keys and "y_embedder.y_embedding" in keys:
        return "PixArt-XL/2"
    raise ValueError("cannot tell the model from the checkpoint's keys (no spatial_blocks / attn_temp / blocks); "
                     f"pass --model (one of {', '.join(MODEL_NAMES)})")


def pixart_shapes(stdit_shapes: Mapping[str, tuple]) -> dict:
    """PixArt-alpha's key/shape list derived from the STDiT (1.0) model of the same size: STDiT minus
    the temporal attention, with a 2-D patch embedding."""
    shapes = {k: v for k, v in stdit_shapes.items() if ".attn_temp." not in k}
    w = shapes["x_embedder.proj.weight"]
    shapes["x_embedder.proj.weight"] = (w[0], w[1], w[3], w[4])
    return shapes


def pixart_to_stdit(params: Mapping[str, object]) -> dict:
    """PixArt-alpha weights (converted with their own keys) -> STDiT 1.0 names for training init:
    the 2-D patch kernel gains a time axis; ``attn_temp`` stays to be initialised by the model."""
    out = to_mindspore_params(params)
    w = out["x_embedder.proj.weight"]
    if len(w.shape) == 4:
        out["x_embedder.proj.weight"] = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2], w.shape[3])
    return out
