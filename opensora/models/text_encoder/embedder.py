"""Upstream's ``T5Embedder`` / ``T5Encoder`` (registered as ``"t5"``): tokenizer + T5 encoder from local files.

``T5Encoder(from_pretrained=DIR, model_max_length=300)`` then ``encode(texts) -> {"y": (B, 1, L, D),
"mask": (B, L)}``. The null caption of classifier-free guidance is the diffusion model's learned one
(``model.y_embedder.null(n)``), not T5's: upstream's ``T5Encoder.null`` only forwards to it.

``from_pretrained``: a directory laid out like the Hugging Face repository ``DeepFloyd/t5-v1_1-xxl``
(``config.json``, ``spiece.model`` + tokenizer files, and ``model.ckpt`` from ``tools/convert_t5.py``
or ``.safetensors`` files: the official shards or a converted ``model.safetensors``, which MindSpore
reads lazily, so prefer them for the 19 GB XXL), or a converted ``.ckpt``/``.safetensors`` file whose directory
holds ``config.json`` and the tokenizer (``tokenizer_path`` may point elsewhere). A repository id
such as ``"DeepFloyd/t5-v1_1-xxl"`` is looked up under ``cache_dir`` (``cache_dir/t5-v1_1-xxl``,
``cache_dir/DeepFloyd/t5-v1_1-xxl`` or the Hugging Face cache layout); nothing is downloaded.
Captions are NOT cleaned here (upstream cleans in the inference script; use ``text_preprocessing``).
"""
from __future__ import annotations

import logging

import numpy as np

import mindspore as ms
from mindspore import Tensor

from ..registry import TEXT_ENCODERS
from .pretrained import PretrainedTextModel
from .t5 import T5Config, T5EncoderModel
from .t5_weights import map_names

logger = logging.getLogger(__name__)


class T5Embedder(PretrainedTextModel):
    """Tokenizer + :class:`T5EncoderModel` (upstream's ``T5Embedder``).

    ``use_attention_mask``: False runs the encoder without a mask, every position attending to all
    ``model_max_length`` tokens, padding included: Open-Sora 2.0 calls T5 so (``attention_mask=None``).
    """

    name = "T5"
    repo = "DeepFloyd/t5-v1_1-xxl"
    converter = "tools/convert_t5.py"
    config_class = T5Config
    model_class = T5EncoderModel
    map_names = staticmethod(map_names)

    def __init__(self, from_pretrained: str, model_max_length: int = 120, dtype=ms.float32,
                 cache_dir: str | None = None, tokenizer_path: str | None = None, use_attention_mask: bool = True):
        self.use_attention_mask = bool(use_attention_mask)
        super().__init__(from_pretrained, model_max_length, dtype, cache_dir, tokenizer_path)

    def encode_tokens(self, input_ids, attention_mask=None) -> Tensor:
        """(B, L) ids and mask -> (B, L, d_model) last hidden state in the model dtype (the mask is not
        used, and may be None, when ``use_attention_mask`` is False)."""
        ids = Tensor(np.asarray(input_ids, np.int32))
        if not self.use_attention_mask:
            return self.model(ids, None)
        return self.model(ids, Tensor(np.asarray(attention_mask, np.int32)))

    def get_text_embeddings(self, texts) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(texts)
        return self.encode_tokens(ids, mask), Tensor(mask.astype(np.int32))


@TEXT_ENCODERS.register("t5")
class T5Encoder:
    """Upstream's ``T5Encoder`` API: ``encode``, ``output_dim``, ``model_max_length``.

    ``device`` and ``shardformer`` are accepted for config compatibility: MindSpore places the model
    on the device set by ``init_runtime``, and ColossalAI's shardformer has no MindSpore counterpart.
    """

    def __init__(self, from_pretrained: str | None = None, model_max_length: int = 120, device=None, dtype="float32",
                 cache_dir: str | None = None, shardformer: bool = False, local_files_only: bool = True,
                 tokenizer_path: str | None = None):
        if shardformer:
            logger.info("T5Encoder: shardformer=True has no effect in the MindSpore port")
        self.t5 = T5Embedder(from_pretrained, model_max_length=model_max_length, dtype=dtype, cache_dir=cache_dir,
                             tokenizer_path=tokenizer_path)
        self.model_max_length = self.t5.model_max_length
        self.output_dim = self.t5.config.d_model
        self.dtype = self.t5.dtype

    def encode(self, text) -> dict:
        """-> ``{"y": (B, 1, L, D) model dtype, "mask": (B, L) int32}``."""
        y, mask = self.t5.get_text_embeddings(text)
        return {"y": y.expand_dims(1), "mask": mask}
