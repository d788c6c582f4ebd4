"""Finding and loading VAE weights: a Hugging Face-style directory or a single checkpoint file.

Layouts understood (no network, no torch):
- ``stabilityai/sd-vae-ft-ema``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers names)
- ``hpcai-tech/OpenSora-VAE-v1.2``: ``config.json`` + ``model.safetensors`` (``spatial_vae.module.*``,
  ``temporal_vae.*``, ``scale``, ``shift``)
- a MindSpore ``.ckpt`` written by ``tools/convert_vae.py`` (same names as the safetensors).
Every key and shape is checked (:func:`opensora.utils.checkpoint.load_into`); a checkpoint whose
names carry one extra or one missing leading prefix (``module.``, ``spatial_vae.module.``...) is
matched to the cell it is loaded into, never by position.
"""
from __future__ import annotations

import json
import os

from mindspore import nn

from ...utils.checkpoint import CheckpointError, load_into, model_shapes, read_checkpoint

WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "model.ckpt",
                "diffusion_pytorch_model.ckpt")
_HERE = os.path.dirname(os.path.abspath(__file__))
SD_VAE_CONFIG = os.path.join(_HERE, "sd_vae_config.json")  # stabilityai/sd-vae-ft-ema (SD 1.x VAE)
SDXL_VAE_CONFIG = os.path.join(_HERE, "sdxl_vae_config.json")  # the SDXL VAE used by Open-Sora 1.2


def read_json(path: str) -> dict:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def resolve_dir(path: str, subfolder: str | None = None) -> str:
    return os.path.join(path, subfolder) if subfolder else path


def find_weight_file(path: str) -> str:
    """A weight file, or the weight file of a Hugging Face-style directory."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in WEIGHT_NAMES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".ckpt")))
        if len(found) == 1:
            return os.path.join(path, found[0])
        raise CheckpointError(f"{path}: expected one of {', '.join(WEIGHT_NAMES)} (or a single .safetensors/.ckpt); "
                              f"found {found or 'none'}. PyTorch .bin/.pth files: convert them with tools/convert_vae.py")
    raise CheckpointError(f"VAE weights not found: {path} (give a directory laid out like the Hugging Face "
                          "repository, a .safetensors file, or a .ckpt written by tools/convert_vae.py)")


def _align_prefix(params: dict, expected: set) -> dict:
    """Rename ``params`` so that their names fit ``expected`` when they differ by one leading prefix
    (the prefix under which most model names are found wins; keys outside it are dropped)."""
    names = list(params)
    if not names or any(n in expected for n in names):
        return params
    # the checkpoint has an extra prefix (e.g. "spatial_vae.module." when loading the 2D part alone)
    candidates = {}
    for probe in list(expected)[:20]:
        for name in names:
            if name.endswith("." + probe):
                candidates[name[: -len(probe)]] = 0
    for prefix in candidates:
        candidates[prefix] = sum(1 for n in names if n.startswith(prefix) and n[len(prefix):] in expected)
    if candidates:
        best = max(candidates, key=candidates.get)
        return {n[len(best):]: v for n, v in params.items() if n.startswith(best)}
    # the model has an extra prefix (e.g. "module." of VideoAutoencoderKL)
    for name in expected:
        if name.endswith("." + names[0]):
            prefix = name[: -len(names[0])]
            return {prefix + n: v for n, v in params.items()}
    return params


def load_vae_weights(net: nn.Cell, path: str, strict: bool = True):
    """Load a file or HF-style directory into ``net`` with a full key/shape check."""
    weight_file = find_weight_file(path)
    params = read_checkpoint(weight_file)
    params = _align_prefix(params, set(model_shapes(net)))
    return load_into(net, params, source=weight_file, strict=strict)
