"""Open-Sora 2.0's text conditioner (upstream ``opensora/models/text/conditioner.py`` ``HFEmbedder``, registered as
``"text_embedder"``): one class for both of 2.0's text encoders, configured as upstream's configs do::

    t5 = dict(type="text_embedder", from_pretrained="./ckpts/google/t5-v1_1-xxl", max_length=512, shardformer=True)
    clip = dict(type="text_embedder", from_pretrained="./ckpts/openai/clip-vit-large-patch14", max_length=77)

``embedder(prompts) -> Tensor``: T5's ``last_hidden_state`` (B, 512, 4096), or CLIP's ``pooler_output``
(B, 768). As upstream, CLIP is chosen when the path contains ``"openai"`` (``is_clip`` says it explicitly),
the tokenizer pads to ``max_length`` and truncates, and the encoder runs **without an attention mask**:
T5's every position attends to all 512 tokens, padding included. ``added_tokens`` / ``seq_align``: the ids are
padded further with the pad token until ``added_tokens + length`` is a multiple of ``seq_align`` (upstream's
sequence-parallel alignment; 1 = none).

``shardformer`` only swaps in ColossalAI's fused dropout-add forward upstream, the same numbers in eval: it is
accepted and has no effect. ``device_map`` is accepted too (MindSpore places the model on the device of
``init_runtime``); ``torch_dtype`` is the dtype (bfloat16 on Ascend as upstream; float32/float16 elsewhere).
"""
from __future__ import annotations

import numpy as np

from mindspore import Tensor

from ...config import ConfigError
from ..registry import TEXT_ENCODERS
from .clip import CLIPTextConfig, CLIPTextModel
from .clip_weights import map_names as clip_map_names
from .embedder import T5Embedder
from .pretrained import PretrainedTextModel


class CLIPEmbedder(PretrainedTextModel):
    """Tokenizer + :class:`~.clip.CLIPTextModel` from a local ``openai/clip-vit-large-patch14``-like folder
    (``config.json`` of the whole ``CLIPModel`` or of the text model alone, ``vocab.json`` + ``merges.txt`` or
    ``tokenizer.json``, ``model.safetensors`` or a converted ``model.ckpt``)."""

    name = "CLIP"
    repo = "openai/clip-vit-large-patch14"
    tokenizer_files = ("vocab.json", "tokenizer.json")
    converter = "tools/convert_clip.py"
    config_class = CLIPTextConfig
    model_class = CLIPTextModel
    map_names = staticmethod(clip_map_names)

    def encode_tokens(self, input_ids, attention_mask=None) -> Tensor:
        """(B, L) ids -> (B, hidden) pooled output in the model dtype. Only the causal mask applies, as in
        upstream's call (``attention_mask`` is accepted for the embedders' common signature and not used)."""
        return self.model(Tensor(np.asarray(input_ids, np.int32)))[1]

    def check_max_length(self) -> None:
        if self.model_max_length > self.config.max_position_embeddings:
            raise ValueError(f"CLIP max_length {self.model_max_length} is longer than the model's "
                             f"{self.config.max_position_embeddings} positions")


@TEXT_ENCODERS.register("text_embedder")
class HFEmbedder:
    """Upstream's ``HFEmbedder`` (see the module docstring). ``output_dim``: 4096 (T5-XXL) or 768 (CLIP-L)."""

    def __init__(self, from_pretrained: str, max_length: int, shardformer: bool = False, is_clip: bool | None = None,
                 torch_dtype="float32", device_map=None, cache_dir: str | None = None):
        if not from_pretrained:
            raise ConfigError("text_embedder needs from_pretrained: a local google/t5-v1_1-xxl or "
                              "openai/clip-vit-large-patch14 folder")
        self.is_clip = "openai" in str(from_pretrained) if is_clip is None else bool(is_clip)
        self.max_length = int(max_length)
        if self.is_clip:
            if shardformer:
                raise ConfigError("shardformer is not supported for CLIP (upstream asserts the same)")
            self.embedder = CLIPEmbedder(from_pretrained, self.max_length, torch_dtype, cache_dir)
            self.output_dim = self.embedder.config.hidden_size
        else:
            self.embedder = T5Embedder(from_pretrained, self.max_length, torch_dtype, cache_dir,
                                       use_attention_mask=False)
            self.output_dim = self.embedder.config.d_model
        self.dtype = self.embedder.dtype
        self.tokenizer = self.embedder.tokenizer
        self.model = self.embedder.model

    def __call__(self, text, added_tokens: int = 0, seq_align: int = 1) -> Tensor:
        """Prompts (a string or a list) -> (B, L, 4096) T5 states or (B, 768) CLIP pooled vectors, model dtype."""
        ids, _ = self.embedder.tokenize(text)
        length = ids.shape[1]
        if (added_tokens + length) % seq_align:
            extra = seq_align - (added_tokens + length) % seq_align
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=self.tokenizer.pad_token_id)
        return self.embedder.encode_tokens(ids)
