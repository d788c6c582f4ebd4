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

import glob
import logging
import os

import numpy as np

import mindspore as ms
from mindspore import Tensor
from mindspore.nn.utils import no_init_parameters

from ...dtypes import to_ms_dtype
from ..layers import forms
from ..registry import TEXT_ENCODERS
from .t5 import T5Config, T5EncoderModel
from .t5_weights import find_weights, load_t5_weights
from .tokenizer import load_t5_tokenizer, tokenize

logger = logging.getLogger(__name__)

def check_dtype_supported(dtype: ms.Type) -> None:
    """bfloat16 only where the device computes in it (see ``forms.bfloat16_compute_available``)."""
    if dtype == ms.bfloat16 and not forms.bfloat16_compute_available():
        raise ValueError(f"T5 in bfloat16 needs an Ascend device ({forms.backend()} has no bfloat16 "
                         "matmul/norm/softmax kernels); use dtype float32 or float16 here")


def resolve_pretrained(from_pretrained: str, cache_dir: str | None = None) -> str:
    """A local directory or weight file for ``from_pretrained`` (no network): see the module doc."""
    if from_pretrained is None:
        raise ValueError("T5Encoder needs from_pretrained: a local DeepFloyd/t5-v1_1-xxl directory or a converted .ckpt")
    tried = [from_pretrained]
    if os.path.exists(from_pretrained):
        return from_pretrained
    if cache_dir:
        org, _, name = from_pretrained.rpartition("/")
        candidates = [os.path.join(cache_dir, from_pretrained), os.path.join(cache_dir, name)]
        hub = os.path.join(cache_dir, f"models--{from_pretrained.replace('/', '--')}", "snapshots", "*")
        candidates += sorted(glob.glob(hub), key=os.path.getmtime, reverse=True)
        for candidate in candidates:
            tried.append(candidate)
            if os.path.isdir(candidate):
                return candidate
    raise FileNotFoundError(
        f"T5 weights not found; tried: {', '.join(tried)}. Download the Hugging Face repository "
        f"{from_pretrained} (config.json, spiece.model, tokenizer files, weights) to a local directory and pass "
        "it as from_pretrained (or set cache_dir); nothing is downloaded at run time")


class T5Embedder:
    """Tokenizer + :class:`T5EncoderModel` (upstream's ``T5Embedder``)."""

    def __init__(self, from_pretrained: str, model_max_length: int = 120, dtype=ms.float32,
                 cache_dir: str | None = None, tokenizer_path: str | None = None):
        self.dtype = to_ms_dtype(dtype)
        check_dtype_supported(self.dtype)
        location = resolve_pretrained(from_pretrained, cache_dir)
        if os.path.isdir(location):
            model_dir, weights = location, find_weights(location)
        else:
            model_dir, weights = os.path.dirname(os.path.abspath(location)), [location]
        config_path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no config.json next to the T5 weights in {model_dir}; copy it from the "
                                    "Hugging Face repository DeepFloyd/t5-v1_1-xxl")
        self.model_max_length = int(model_max_length)
        if self.model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {model_max_length}")
        self.tokenizer = load_t5_tokenizer(tokenizer_path or model_dir)  # fail fast, before the weights
        self.config = T5Config.from_json(config_path)
        with no_init_parameters():  # weights come from the checkpoint: skip the random initialisation
            self.model = T5EncoderModel(self.config, dtype=self.dtype)
        self.model.set_train(False)
        load_t5_weights(self.model, weights)
        for param in self.model.get_parameters():
            param.requires_grad = False
        logger.info("T5 encoder: %s (%s), max length %d", weights[0], self.dtype, self.model_max_length)

    def tokenize(self, texts) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(self.tokenizer, texts, self.model_max_length)

    def encode_tokens(self, input_ids, attention_mask) -> Tensor:
        """(B, L) ids and mask -> (B, L, d_model) last hidden state in the model dtype."""
        return self.model(Tensor(np.asarray(input_ids, np.int32)), Tensor(np.asarray(attention_mask, np.int32)))

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
