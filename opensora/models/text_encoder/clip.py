"""CLIP's text tower (``openai/clip-vit-large-patch14``, Open-Sora 2.0's pooled text vector), as ``transformers``'
``CLIPTextModel`` computes it (``models/clip/modeling_clip.py``).

Token + learned position embeddings, pre-LN transformer layers (causal self attention, quick-GELU MLP), a
final LayerNorm; the pooled output is the final hidden state at the end-of-text token, found the way
``CLIPTextModel`` finds it:

* ``eos_token_id == 2`` (the value in ``openai/clip-vit-large-patch14``'s config, kept for compatibility by
  ``transformers``): the position of the largest token id, the first one on ties (``argmax``). With the
  CLIP tokenizer the largest id is ``<|endoftext|>`` (49407), also used for padding, so this is the first
  end-of-text token;
* any other ``eos_token_id``: the first position holding it (position 0 when there is none, as
  ``argmax`` of all-false).

Open-Sora 2.0 calls the model with ``attention_mask=None``: only the causal mask applies, padding tokens
come after the end-of-text token and cannot change it. This model takes no padding mask.

Parameter names are the official checkpoint's, ``text_model.`` prefix included
(``text_model.embeddings.token_embedding.weight``, ``text_model.encoder.layers.{i}.self_attn.q_proj.weight``,
``text_model.final_layer_norm.weight``...); see ``clip_weights.py`` for loading.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..layers.attention import attention
from ..layers.blocks import _split_heads
from ..layers.nn import Embedding, LayerNorm, Linear
from .hf_config import HFConfig

LEGACY_EOS_TOKEN_ID = 2  # configs written before transformers PR #24773 (openai/clip-vit-large-patch14's)


@dataclass
class CLIPTextConfig(HFConfig):
    """The keys of a CLIP text config that the model uses (``transformers``' ``CLIPTextConfig`` defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    @classmethod
    def from_dict(cls, data: dict) -> "CLIPTextConfig":
        """A text config, or a whole ``CLIPConfig`` (the official ``config.json``) whose ``text_config`` is used."""
        return super().from_dict((data["text_config"] or {}) if "text_config" in data else data)

    def check(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP config: hidden_act {self.hidden_act!r} is not supported (use one of "
                             f"{', '.join(ACTIVATIONS)}; openai/clip-vit-large-patch14 uses quick_gelu)")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"CLIP config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIP config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")


def quick_gelu(x):
    """``transformers``' ``QuickGELUActivation``: x * sigmoid(1.702 x)."""
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu}  # the activation of every OpenAI CLIP


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size, dtype)

    def construct(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class CLIPAttention(nn.Cell):
    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.scale = (d // self.num_heads) ** -0.5
        self.k_proj = Linear(d, d, dtype=dtype)
        self.v_proj = Linear(d, d, dtype=dtype)
        self.q_proj = Linear(d, d, dtype=dtype)
        self.out_proj = Linear(d, d, dtype=dtype)

    def construct(self, x, mask):
        b, n, c = x.shape
        q = _split_heads(self.q_proj(x), self.num_heads)
        k = _split_heads(self.k_proj(x), self.num_heads)
        v = _split_heads(self.v_proj(x), self.num_heads)
        out = attention(q, k, v, mask, self.scale)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, c))


class CLIPMLP(nn.Cell):
    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size, dtype=dtype)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, dtype=dtype)
        self.activation = ACTIVATIONS[config.hidden_act]

    def construct(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.self_attn = CLIPAttention(config, dtype)
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.mlp = CLIPMLP(config, dtype)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)

    def construct(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.layers = nn.CellList([CLIPEncoderLayer(config, dtype) for _ in range(config.num_hidden_layers)])

    def construct(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextTransformer(nn.Cell):
    """``text_model`` of the official checkpoint: ``input_ids`` (B, L) -> (last hidden state, pooled output)."""

    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config, dtype)
        self.encoder = CLIPEncoder(config, dtype)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.legacy_eos = config.eos_token_id == LEGACY_EOS_TOKEN_ID
        self.eos_token_id = int(config.eos_token_id)
        n = config.max_position_embeddings
        self.causal = Tensor(np.tril(np.ones((n, n), np.bool_)))  # True = attend (the layers' convention)

    def construct(self, input_ids):
        b, length = input_ids.shape
        mask = self.causal[:length, :length].reshape(1, 1, length, length)
        hidden = self.final_layer_norm(self.encoder(self.embeddings(input_ids), mask))
        index = ops.arange(b, dtype=ms.int32) * length + self.eos_positions(input_ids)
        pooled = ops.gather(hidden.reshape(b * length, -1), index, 0)
        return hidden, pooled

    def eos_positions(self, input_ids):
        """(B,) int32: where ``CLIPTextModel`` takes the pooled output (see the module docstring)."""
        length = input_ids.shape[1]
        positions = ops.broadcast_to(ops.arange(length, dtype=ms.int32).reshape(1, length), input_ids.shape)
        if self.legacy_eos:
            hit = input_ids == input_ids.max(axis=1, keepdims=True)
        else:
            hit = input_ids == self.eos_token_id
        # the first hit, as torch's argmax returns the first of equal maxima; rows without a hit give 0
        first = ops.masked_fill(positions, ops.logical_not(hit), length).min(axis=1)
        return ops.masked_fill(first, first == length, 0)


class CLIPTextModel(nn.Cell):
    """``transformers.CLIPTextModel`` for inference: ``input_ids`` (B, L) int -> ``(last_hidden_state`` (B, L, D),
    ``pooler_output`` (B, D)), both in ``dtype`` (the parameters' dtype)."""

    def __init__(self, config: CLIPTextConfig, dtype=ms.float32):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.text_model = CLIPTextTransformer(config, dtype)

    def construct(self, input_ids):
        return self.text_model(input_ids)
