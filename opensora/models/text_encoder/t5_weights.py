"""Where the T5 weights are, how the official names map onto :class:`T5EncoderModel`, and loading them.

The official checkpoint (``DeepFloyd/t5-v1_1-xxl``, a ``transformers`` ``T5EncoderModel``; key list
in ``/work/shared/manifests/t5_v1_1_xxl_encoder.json``) has 220 entries: the names of
:func:`~.t5.t5_encoder_param_shapes` plus ``encoder.embed_tokens.weight``, which is the same
tensor as ``shared.weight`` (tied inside ``T5EncoderModel``). The one table of differences:

* ``encoder.embed_tokens.weight`` -> ``shared.weight`` (an alias: kept once; the converter checks
  that both copies are equal when a file holds both, and accepts a file that holds only one);
* ``decoder.*`` and ``lm_head.weight`` (a full ``T5ForConditionalGeneration`` checkpoint such as
  ``google/t5-v1_1-xxl``) are dropped, as ``T5EncoderModel`` does (``_keys_to_ignore_on_load_unexpected``).

Every other key is used unchanged; unknown keys are errors.
"""
from __future__ import annotations

import glob
import os
from typing import Iterable

import mindspore as ms

from ...utils.checkpoint import CheckpointError, KeyReport, load_into, read_checkpoint

EMBED_ALIAS = "encoder.embed_tokens.weight"
EMBED_NAME = "shared.weight"
CONVERTED_NAME = "model.ckpt"


def official_to_ms(name: str) -> str | None:
    """The MindSpore name of an official T5 key, or ``None`` for keys the encoder does not use."""
    if name.startswith("decoder.") or name == "lm_head.weight":
        return None
    if name == EMBED_ALIAS:
        return EMBED_NAME
    return name


def map_names(names: Iterable[str]) -> dict[str, str]:
    """Official name -> MindSpore name for the keys that are kept (the embedding alias once)."""
    names = list(names)
    out = {}
    for name in names:
        new = official_to_ms(name)
        if new is None or (name == EMBED_ALIAS and EMBED_NAME in names):
            continue
        out[name] = new
    return out


def find_weights(model_dir: str) -> list[str]:
    """The weight files of a T5 directory: ``model.ckpt`` (converted), else ``*.safetensors`` (the
    official shards, or a ``model.safetensors`` written by tools/convert_t5.py).

    ``.bin`` shards need converting first (reading them needs torch, which the package never imports).
    """
    converted = os.path.join(model_dir, CONVERTED_NAME)
    if os.path.isfile(converted):
        return [converted]
    shards = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if shards:
        return shards
    bins = sorted(glob.glob(os.path.join(model_dir, "*.bin")))
    if bins:
        raise CheckpointError(
            f"{model_dir} holds PyTorch .bin weights, which MindSpore cannot read; convert them once with\n"
            f"  python tools/convert_t5.py --src {model_dir} --target {converted}\n"
            f"(or --target {os.path.join(model_dir, 'model.safetensors')}, which MindSpore reads lazily: "
            "better for the 19 GB XXL encoder)")
    raise CheckpointError(f"no T5 weights in {model_dir}: expected {CONVERTED_NAME} (tools/convert_t5.py) or "
                          "the .safetensors files of DeepFloyd/t5-v1_1-xxl")


def read_t5_params(paths: list[str]) -> dict[str, ms.Parameter]:
    """Read converted ``.ckpt`` or official ``.safetensors`` file(s) into MindSpore names."""
    params: dict[str, ms.Parameter] = {}
    for path in paths:
        if path.endswith(".bin") or path.endswith(".pth") or path.endswith(".pt"):
            raise CheckpointError(f"{path}: PyTorch pickles cannot be read without torch; convert with "
                                  f"python tools/convert_t5.py --src {path} --target <file>.ckpt")
        raw = read_checkpoint(path)
        for name, new in map_names(raw).items():
            if new in params:
                raise CheckpointError(f"{new} is given twice (second time in {path})")
            params[new] = raw[name]
    return params


def load_t5_weights(model, paths: list[str]) -> KeyReport:
    """Strict load: any missing, unexpected or mis-shaped key raises with the full list, nothing loaded."""
    params = read_t5_params(paths)
    source = paths[0] if len(paths) == 1 else f"{os.path.dirname(paths[0])} ({len(paths)} files)"
    return load_into(model, params, source=source, strict=True)
