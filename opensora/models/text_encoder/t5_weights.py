"""How the official T5 names map onto :class:`T5EncoderModel` (loaded by ``pretrained.load_renamed``).

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

from typing import Iterable

EMBED_ALIAS = "encoder.embed_tokens.weight"
EMBED_NAME = "shared.weight"


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
