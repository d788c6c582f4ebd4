"""The T5 (v1.1) encoder stack in MindSpore, with the parameter names of ``transformers``' ``T5EncoderModel``.

What is reproduced from ``transformers`` (``models/t5/modeling_t5.py``):
- relative position bias: computed by block 0's ``SelfAttention.relative_attention_bias`` and shared
  by every block; buckets from ``_relative_position_bucket`` (bidirectional, log-spaced), with the
  bucket arithmetic done in float32 exactly as PyTorch does it (see :func:`relative_position_buckets`);
- no 1/sqrt(d) scaling of the scores (T5 folds it into the initialisation);
- RMS norm with the variance in float32 (``layers.nn.RMSNorm`` = ``T5LayerNorm``);
- gated-GELU feed-forward (``gelu_new`` = tanh approximation) for v1.1, ReLU for the original T5;
- float16: hidden states are clamped to the finite range after every sub-layer, as ``T5Block`` does.

Differences, on purpose: the attention scores and softmax are computed in float32 whatever the
model dtype (``layers.attention.math_attention``); Open-Sora casts the whole model to one dtype
(``self.t5.model.to(dtype)``), so ``wo`` is not kept in float32 here (``_keep_in_fp32_modules``
only applies to ``from_pretrained`` in ``transformers``, and Open-Sora undoes it).

Parameter names: ``shared.weight`` (the token embedding; ``transformers`` also lists the same
tensor as ``encoder.embed_tokens.weight``, see ``t5_weights.py``), ``encoder.block.{i}.layer.0.
SelfAttention.{q,k,v,o}.weight``, ``encoder.block.0.layer.0.SelfAttention.relative_attention_bias
.weight``, ``encoder.block.{i}.layer.{0,1}.layer_norm.weight``, ``encoder.block.{i}.layer.1.
DenseReluDense.{wi_0,wi_1,wo}.weight``, ``encoder.final_layer_norm.weight``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..layers.attention import attention
from ..layers.nn import Embedding, Linear, RMSNorm, gelu_tanh
from .hf_config import HFConfig

FP16_MAX = 65504.0


@dataclass
class T5Config(HFConfig):
    """The keys of a Hugging Face T5 ``config.json`` that the encoder uses (others are ignored)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        return self.feed_forward_proj.split("-")[-1]

    def check(self) -> None:
        if self.feed_forward_proj not in ("gated-gelu", "relu", "gated-relu", "gelu"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not supported; "
                             "T5 v1.1 uses 'gated-gelu', the original T5 'relu'")
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"T5 config: {name} must be a positive integer, got {getattr(self, name)!r}")


# The Open-Sora text encoder: DeepFloyd/t5-v1_1-xxl (= google/t5-v1_1-xxl's encoder).
T5_V1_1_XXL = T5Config()


def t5_encoder_param_shapes(config: T5Config) -> dict[str, tuple]:
    """Name -> shape of every parameter of :class:`T5EncoderModel`, without building it.

    Used by the converter and the loader so that the full-size model (19 GB in float32) is checked
    key by key without allocating it; a test checks it against a built model and the manifest.
    """
    inner = config.num_heads * config.d_kv
    shapes = {"shared.weight": (config.vocab_size, config.d_model)}
    for i in range(config.num_layers):
        p = f"encoder.block.{i}.layer"
        for proj in ("q", "k", "v"):
            shapes[f"{p}.0.SelfAttention.{proj}.weight"] = (inner, config.d_model)
        shapes[f"{p}.0.SelfAttention.o.weight"] = (config.d_model, inner)
        if i == 0:
            shapes[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = (
                config.relative_attention_num_buckets, config.num_heads)
        shapes[f"{p}.0.layer_norm.weight"] = (config.d_model,)
        wi = ("wi_0", "wi_1") if config.is_gated else ("wi",)
        for name in wi:
            shapes[f"{p}.1.DenseReluDense.{name}.weight"] = (config.d_ff, config.d_model)
        shapes[f"{p}.1.DenseReluDense.wo.weight"] = (config.d_model, config.d_ff)
        shapes[f"{p}.1.layer_norm.weight"] = (config.d_model,)
    shapes["encoder.final_layer_norm.weight"] = (config.d_model,)
    return shapes


def relative_position_buckets(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """``T5Attention._relative_position_bucket`` (bidirectional) in NumPy, float32 like PyTorch.

    The log-spaced bucket is truncated to an integer, so the float32 rounding matters at the
    boundaries (e.g. distance 16 with 32 buckets / max distance 128): every step is done in
    float32 as ``torch`` does, and a test compares the table with ``transformers``' function.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(distance.astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    # distance 0 gives -inf here; it is a "small" distance, so the value is never used
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, distance, large)


class T5Attention(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.q = Linear(config.d_model, inner, bias=False, dtype=dtype)
        self.k = Linear(config.d_model, inner, bias=False, dtype=dtype)
        self.v = Linear(config.d_model, inner, bias=False, dtype=dtype)
        self.o = Linear(inner, config.d_model, bias=False, dtype=dtype)
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.max_distance = config.relative_attention_max_distance
            self.relative_attention_bias = Embedding(config.relative_attention_num_buckets, config.num_heads, dtype)
            # Buckets depend only on the clipped relative position: one small table for any length
            # (beyond max_distance every distance falls in the last bucket).
            rel = np.arange(-self.max_distance, self.max_distance + 1)
            table = relative_position_buckets(rel, config.relative_attention_num_buckets, self.max_distance)
            self.bucket_table = Tensor(table.astype(np.int32))

    def compute_bias(self, length: int):
        """(1, heads, L, L) float32 relative position bias."""
        pos = ops.arange(length, dtype=ms.int32)
        relative = pos.reshape(1, -1) - pos.reshape(-1, 1)  # memory - query
        relative = ops.clip(relative, -self.max_distance, self.max_distance) + self.max_distance
        buckets = ops.gather(self.bucket_table, relative, 0)
        values = ops.gather(self.relative_attention_bias.weight, buckets, 0)  # (L, L, H)
        return values.astype(ms.float32).transpose(2, 0, 1).expand_dims(0)

    def construct(self, x, mask, position_bias):
        b, s, _ = x.shape
        q = self.q(x).reshape(b, s, self.n_heads, self.d_kv).swapaxes(1, 2)
        k = self.k(x).reshape(b, s, self.n_heads, self.d_kv).swapaxes(1, 2)
        v = self.v(x).reshape(b, s, self.n_heads, self.d_kv).swapaxes(1, 2)
        out = attention(q, k, v, mask=mask, scale=1.0, bias=position_bias, scores_in_input_dtype=True)  # as transformers
        return self.o(out.swapaxes(1, 2).reshape(b, s, self.n_heads * self.d_kv))


class T5LayerSelfAttention(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, dtype)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon, dtype=dtype)

    def construct(self, x, mask, position_bias):
        return x + self.SelfAttention(self.layer_norm(x), mask, position_bias)


class T5DenseGatedActDense(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.wi_0 = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wi_1 = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, dtype=dtype)
        self.use_gelu = config.activation == "gelu"

    def construct(self, x):
        gate = self.wi_0(x)
        gate = gelu_tanh(gate) if self.use_gelu else ops.relu(gate)
        return self.wo(gate * self.wi_1(x))


class T5DenseActDense(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.wi = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, dtype=dtype)
        self.use_gelu = config.activation == "gelu"

    def construct(self, x):
        h = self.wi(x)
        return self.wo(gelu_tanh(h) if self.use_gelu else ops.relu(h))


class T5LayerFF(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        ff = T5DenseGatedActDense if config.is_gated else T5DenseActDense
        self.DenseReluDense = ff(config, dtype)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon, dtype=dtype)

    def construct(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


def clamp_fp16(x):
    """``T5Block``'s float16 guard: clip to the finite range (1000 below it when an inf appeared)."""
    has_inf = ops.isinf(x).any().astype(ms.float32)
    limit = (FP16_MAX - 1000.0 * has_inf).astype(x.dtype)
    return ops.clamp(x, -limit, limit)


class T5Block(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.layer = nn.CellList([T5LayerSelfAttention(config, has_relative_attention_bias, dtype),
                                  T5LayerFF(config, dtype)])
        self.clamp = dtype == ms.float16

    def construct(self, x, mask, position_bias):
        x = self.layer[0](x, mask, position_bias)
        if self.clamp:
            x = clamp_fp16(x)
        x = self.layer[1](x)
        if self.clamp:
            x = clamp_fp16(x)
        return x


class T5Stack(nn.Cell):
    """The encoder stack; the token embedding lives in :class:`T5EncoderModel` (``shared``)."""

    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.block = nn.CellList([T5Block(config, i == 0, dtype) for i in range(config.num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon, dtype=dtype)

    def construct(self, x, mask):
        position_bias = self.block[0].layer[0].SelfAttention.compute_bias(x.shape[1])
        for block in self.block:
            x = block(x, mask, position_bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Cell):
    """``transformers.T5EncoderModel`` for inference: ``(input_ids, attention_mask) -> last_hidden_state``.

    ``input_ids`` (B, L) int, ``attention_mask`` (B, L) with 1 for real tokens, or None for no mask (as
    ``transformers`` without one: Open-Sora 2.0's call). Returns (B, L, d_model)
    in ``dtype`` (the dtype of the parameters).
    """

    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.shared = Embedding(config.vocab_size, config.d_model, dtype)
        self.encoder = T5Stack(config, dtype)

    def construct(self, input_ids, attention_mask=None):
        x = self.shared(input_ids)
        if attention_mask is None:  # every position attends to every token, padding included (Open-Sora 2.0)
            return self.encoder(x, None)
        mask = attention_mask.astype(ms.bool_).reshape(attention_mask.shape[0], 1, 1, attention_mask.shape[1])
        return self.encoder(x, mask)
