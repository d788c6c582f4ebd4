"""How the official CLIP names map onto :class:`~.clip.CLIPTextModel` (loaded by ``pretrained.load_renamed``).

The official file (``openai/clip-vit-large-patch14/model.safetensors``) is a whole ``CLIPModel``: the text
tower under ``text_model.*`` (196 entries, listed in ``/work/shared/manifests/clip_vit_l14_text.json``),
the vision tower and the projections. The table of differences:

* ``text_model.*``: used unchanged (the MindSpore model keeps the prefix);
* ``embeddings.*``, ``encoder.*``, ``final_layer_norm.*`` without the prefix (a ``CLIPTextModel`` saved by
  ``transformers`` 5.x, whose state dict drops it): ``text_model.`` is added;
* dropped, as ``CLIPTextModel.from_pretrained`` drops them: ``vision_model.*``, ``visual_projection.*``,
  ``text_projection.*``, ``logit_scale`` (the rest of ``CLIPModel``) and ``*.embeddings.position_ids``
  (a buffer older files store: the positions 0..76, recomputed here).

Every other key is an error, as are missing and mis-shaped ones.
"""
from __future__ import annotations

from typing import Iterable

from ...utils.checkpoint import CheckpointError

PREFIX = "text_model."
UNPREFIXED = ("embeddings.", "encoder.", "final_layer_norm.")
DROPPED_PREFIXES = ("vision_model.", "visual_projection.", "text_projection.")
DROPPED_NAMES = ("logit_scale",)


def official_to_ms(name: str) -> str | None:
    """The MindSpore name of an official CLIP key; ``None`` for keys the text model does not use."""
    if name.startswith(DROPPED_PREFIXES) or name in DROPPED_NAMES or name.endswith("embeddings.position_ids"):
        return None
    if name.startswith(UNPREFIXED):
        return PREFIX + name
    return name


def map_names(names: Iterable[str]) -> dict[str, str]:
    """Official name -> MindSpore name of the keys that are kept; a name given twice (with and without the
    prefix) is an error."""
    out, seen = {}, {}
    for name in names:
        new = official_to_ms(name)
        if new is None:
            continue
        if new in seen:
            raise CheckpointError(f"{new} is given twice ({seen[new]} and {name})")
        out[name], seen[new] = new, name
    return out
