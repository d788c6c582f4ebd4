"""The official Open-Sora 2.0 MMDiT checkpoints: their constructor arguments, and which one a file is.

Conversion is by name with no renaming: this port's parameter names are the official keys
(``Open_Sora_v2.safetensors``, ``flux1-dev.safetensors``). Torch-free.
"""
from __future__ import annotations

from typing import Iterable

_SIZE = dict(in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24,
             depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True)
# upstream's configs/diffusion/inference/256px.py (model) and plugins/t2i2v.py (img_flux)
OFFICIAL_KWARGS = {
    "Open_Sora_v2": dict(_SIZE, guidance_embed=False, fused_qkv=False, use_liger_rope=True, cond_embed=True),
    "flux1-dev": dict(_SIZE, guidance_embed=True, fused_qkv=True, use_liger_rope=False, cond_embed=False),
}


def layout_of(keys: Iterable[str]) -> dict:
    """The layout flags a checkpoint's keys imply: ``fused_qkv`` (``qkv``/``linear1`` vs ``q_proj``...),
    ``guidance_embed`` (``guidance_in``), ``cond_embed`` (``cond_in``). (The RoPE form leaves no trace in
    the keys: it comes from the config.)"""
    keys = set(keys)
    if not any(k.startswith("double_blocks.") or k.startswith("single_blocks.") for k in keys):
        raise ValueError("not an MMDiT checkpoint: no double_blocks.* / single_blocks.* keys")
    return dict(fused_qkv=any(k.endswith(".img_attn.qkv.weight") or k.endswith(".linear1.weight") for k in keys),
                guidance_embed="guidance_in.in_layer.weight" in keys, cond_embed="cond_in.weight" in keys)


def official_kwargs(keys: Iterable[str]) -> tuple[str, dict]:
    """(name, constructor kwargs) of the official checkpoint whose layout ``keys`` have (sizes are the
    official ones; a smaller model needs its sizes given explicitly)."""
    layout = layout_of(keys)
    for name, kwargs in OFFICIAL_KWARGS.items():
        if all(kwargs[k] == v for k, v in layout.items()):
            return name, dict(kwargs)
    name = "Open_Sora_v2" if not layout["fused_qkv"] else "flux1-dev"
    return name, {**OFFICIAL_KWARGS[name], **layout}
