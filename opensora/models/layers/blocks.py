"""Transformer pieces shared by STDiT / STDiT2 / STDiT3 (upstream ``opensora/models/layers/blocks.py``).

Layout conventions used by every model here:
* video tokens are kept 4-D, ``(B, T, S, C)`` (S = H'·W' patches per frame), so that spatial attention
  is a free reshape to ``(B·T, S, C)``, cross attention a free reshape to ``(B, T·S, C)``, and only
  temporal attention needs a transpose;
* adaLN modulation parameters are ``(B, 1, 1, C)``, or ``(B, T, 1, C)`` when an ``x_mask`` selects,
  frame by frame, between the modulation of timestep t and of t=0 (upstream's ``t_mask_select``,
  done here on the parameters, which is the same arithmetic and avoids computing everything twice);
* attention goes through :func:`opensora.models.layers.attention.attention` (BNSD, mask True=attend).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from . import forms
from .attention import attention, use_flash_attention
from .nn import LayerNorm, Linear, RMSNorm, gelu_tanh


def modulation_params(table, t, n: int):
    """``table`` (n, C) + ``t`` (B, n·C) -> n tensors (B, 1, 1, C) (upstream's ``scale_shift_table[None] + t``)."""
    b = t.shape[0]
    params = table.astype(t.dtype).reshape(1, n, -1) + t.reshape(b, n, -1)
    return tuple(params[:, i].reshape(b, 1, 1, -1) for i in range(n))


def select_frames(x_mask, params, params0):
    """Per-frame choice between modulations: ``x_mask`` (B, T) True -> ``params`` (t), False -> ``params0`` (t=0).

    Returns (B, T, 1, C) tensors that broadcast over the S tokens of each frame.
    """
    if x_mask is None:
        return params
    keep = x_mask.astype(ms.bool_).reshape(x_mask.shape[0], x_mask.shape[1], 1, 1)
    return tuple(ops.where(keep, p, p0) for p, p0 in zip(params, params0))


def frame_modulations(table, t, n: int, x_mask=None, t0=None):
    """``n`` modulation tensors for timestep embedding ``t``, switched to ``t0``'s where ``x_mask`` is False."""
    params = modulation_params(table, t, n)
    if x_mask is None:
        return params
    return select_frames(x_mask, params, modulation_params(table, t0, n))


class Mlp(nn.Cell):
    """timm's ``Mlp`` (fc1 -> act -> fc2, no dropout). Default activation: tanh GELU in elementwise ops."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=gelu_tanh):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.fc2 = Linear(hidden_features, out_features)
        self.act = act_layer

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Cell):
    """Stochastic depth per sample (training only); identity when ``drop_prob`` is 0 or in eval."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def construct(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(keep + ops.rand(shape, dtype=ms.float32)).astype(x.dtype)
        return x / keep * mask


def _init_heads(cell, dim: int, num_heads: int, attn_drop, proj_drop, enable_flash_attn):
    """What self and cross attention set up alike: ``num_heads``, ``head_dim``, ``scale``, ``use_flash``."""
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    if attn_drop or proj_drop:
        raise NotImplementedError("attention dropout is not used by any STDiT and is not implemented")
    cell.num_heads, cell.head_dim = num_heads, dim // num_heads
    cell.scale = cell.head_dim ** -0.5
    cell.use_flash = use_flash_attention(enable_flash_attn)


class Attention(nn.Cell):
    """Multi-head self attention with upstream's ``qkv``/``proj``/``q_norm``/``k_norm`` parameters.

    ``qk_norm``: RMS norm (eps 1e-6) over each head's features of q and k. ``rope``: True (or any
    non-None value, as upstream passes a function) when the cell applies rotary embeddings; the
    (cos, sin) tables are passed to ``construct``. ``qk_norm_legacy`` (STDiT2) applies RoPE *before*
    the norm, as Open-Sora 1.1 did. The 1/sqrt(d) scale is folded into q before the product.
    ``sequence_parallel`` (:class:`opensora.parallel.sequence.SequenceGroups`): ``construct`` receives this rank's
    shard of each sequence and attends over the whole sequence with its share of the heads (Ulysses).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer=RMSNorm,
                 enable_flash_attn: bool = False, rope=None, qk_norm_legacy: bool = False, sequence_parallel=None):
        super().__init__()
        self.dim = dim
        _init_heads(self, dim, num_heads, attn_drop, proj_drop, enable_flash_attn)
        self.to_heads = self.to_sequence = None
        if sequence_parallel is not None:  # tokens sharded across ranks: attend over the whole sequence by heads
            from ...parallel.sequence import HeadsToSequence, SequenceToHeads, check_divisible

            check_divisible(0, num_heads, sequence_parallel.sp_size, "sequence")
            self.to_heads = SequenceToHeads(sequence_parallel, seq_axis=3, head_axis=2)  # stacked (3, B, H, N, D)
            self.to_sequence = HeadsToSequence(sequence_parallel, seq_axis=2, head_axis=1)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.qk_norm = bool(qk_norm)
        if qk_norm:
            self.q_norm = norm_layer(self.head_dim, eps=1e-6)
            self.k_norm = norm_layer(self.head_dim, eps=1e-6)
        self.qk_norm_legacy = qk_norm_legacy
        self.proj = Linear(dim, dim)
        self.rope = rope is not None and rope is not False
        self._rope_tables = forms.ROPE_TABLES.chosen()
        self._rotate_pairs = forms.ROTATE_PAIRS.chosen()

    def construct(self, x, rope=None):
        """x (B, N, C) -> (B, N, C): attention over the N tokens of each sample; ``rope``:
        :meth:`RotaryEmbedding.tables` when the cell uses RoPE."""
        b, n, c = x.shape
        # split on the feature axis, then one transpose per tensor: indexing the stacked (3, B, H, N, D)
        # layout runs a StridedSlice per tensor that costs ~8x as much on the CPU backend
        q, k, v = (_split_heads(t, self.num_heads) for t in ops.split(self.qkv(x), c, axis=-1))
        if self.to_heads is not None:  # one exchange for the three
            q, k, v = ops.unstack(self.to_heads(ops.stack((q, k, v))), 0)
        out = self._attend(q, k, v, rope)
        if self.to_sequence is not None:
            out = self.to_sequence(out)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, c))

    def over_frames(self, x, rope=None):
        """x (B, T, S, C) -> (B, T, S, C): attention over the T frames at each of the S positions (the
        temporal blocks). The same as ``construct`` on ``x.transpose(0, 2, 1, 3).reshape(B·S, T, C)`` with
        the frame/position swap folded into the head split and merge: one transpose each way, not two."""
        b, nt, ns, c = x.shape
        heads, dim = self.num_heads, self.head_dim
        q, k, v = (t.reshape(b, nt, ns, heads, dim).transpose(0, 2, 3, 1, 4).reshape(b * ns, heads, nt, dim)
                   for t in ops.split(self.qkv(x), c, axis=-1))
        out = self._attend(q, k, v, rope).reshape(b, ns, heads, nt, dim)
        return self.proj(out.transpose(0, 3, 1, 2, 4).reshape(b, nt, ns, c))

    def _attend(self, q, k, v, rope):
        """(B, H, N, D) queries, keys, values -> (B, H, N, D), as upstream's ``Attention``: the math path computes
        the scores in the model dtype and the softmax in float32; flash attention only when the sequence is
        longer than the batch (upstream's rule: so temporal attention takes the math path)."""
        if self.rope:
            cos, sin, matrix = rope
            cos, sin = self._rope_tables(cos, sin, q.shape)  # shared by q and k
        if self.rope and self.qk_norm_legacy:
            q, k = self._rotary(q, cos, sin, matrix), self._rotary(k, cos, sin, matrix)
        scale = self.scale
        if self.qk_norm:  # the 1/sqrt(d) scale rides on the norm's weight: one pass over q fewer
            q, k = self.q_norm(q, scale), self.k_norm(k)
            scale = 1.0
        if self.rope and not self.qk_norm_legacy:
            q, k = self._rotary(q, cos, sin, matrix), self._rotary(k, cos, sin, matrix)
        use_flash = self.use_flash and q.shape[2] > q.shape[0]  # static shapes: a constant of the graph
        return attention(q, k, v, None, scale, use_flash, scores_in_input_dtype=True)

    def _rotary(self, x, cos, sin, matrix):
        """Rotate (..., n, d) by the (n, d) tables: x·cos + rotate_half(x)·sin, rotate_half(a, b) = (-b, a) on each
        interleaved pair (``matrix``: that map, for the CPU backend's form), in the tables' dtype (the model's,
        as rotary_embedding_torch computes in the dtype of its frequencies)."""
        h = x.astype(cos.dtype)
        return (h * cos + self._rotate_pairs(h, matrix.astype(cos.dtype)) * sin).astype(x.dtype)


def _split_heads(x, num_heads):
    """(B, N, H·D) -> (B, H, N, D)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3)


class MultiHeadCrossAttention(nn.Cell):
    """Cross attention from video tokens to caption tokens (``q_linear``, ``kv_linear``, ``proj``).

    Upstream packs the valid caption tokens of the whole batch into one sequence and uses xformers'
    block-diagonal mask; here every sample attends to its own (B, L) captions through a
    (B, 1, 1 or Nq, L) boolean mask (True = attend), which gives the same result.

    :meth:`project_kv` computes the keys/values of a caption once (they do not depend on the
    timestep), so samplers can reuse them across steps through :meth:`attend`.
    """

    def __init__(self, d_model: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 enable_flash_attn: bool = False):
        super().__init__()
        self.d_model = d_model
        _init_heads(self, d_model, num_heads, attn_drop, proj_drop, enable_flash_attn)
        self.q_linear = Linear(d_model, d_model)
        self.kv_linear = Linear(d_model, d_model * 2)
        self.proj = Linear(d_model, d_model)

    def project_kv(self, cond):
        """cond (B, L, C) -> (2, B, H, L, D): stacked keys and values."""
        k, v = ops.split(self.kv_linear(cond), self.d_model, axis=-1)
        return ops.stack((_split_heads(k, self.num_heads), _split_heads(v, self.num_heads)))

    def attend(self, x, kv, mask=None):
        """x (B, N, C), kv from :meth:`project_kv`, mask (B, 1, 1|N, L) True=attend -> (B, N, C)."""
        b, n, c = x.shape
        q = _split_heads(self.q_linear(x), self.num_heads)
        k, v = ops.unstack(kv, 0)  # not kv[0], kv[1]: a StridedSlice each, ~30x slower on the CPU backend
        out = attention(q, k, v, mask, self.scale, self.use_flash)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, c))

    def construct(self, x, cond, mask=None):
        return self.attend(x, self.project_kv(cond), mask)


class T2IFinalLayer(nn.Cell):
    """PixArt's final layer on (B, T, S, C) tokens: norm, modulation by ``t`` (t0 where x_mask is False), linear."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = Linear(hidden_size, int(num_patch) * out_channels)
        self.scale_shift_table = scale_shift_table(2, hidden_size)
        self.out_channels = out_channels

    def construct(self, x, t, x_mask=None, t0=None):
        # upstream: (table[None] + t[:, None]).chunk(2): the same (B, C) embedding is added to both rows
        shift, scale = modulation_params(self.scale_shift_table, ops.tile(t, (1, 2)), 2)
        x = self.norm_final.modulate(x, shift, scale)
        if x_mask is not None:
            # upstream's quirk, reproduced: its x was reassigned to the modulated tokens, so the t=0 branch
            # normalises and modulates those again (twice for the frames x_mask leaves out)
            shift0, scale0 = modulation_params(self.scale_shift_table, ops.tile(t0, (1, 2)), 2)
            keep = x_mask.astype(ms.bool_).reshape(x_mask.shape[0], x_mask.shape[1], 1, 1)
            x = ops.where(keep, x, self.norm_final.modulate(x, shift0, scale0))
        return self.linear(x)


def scale_shift_table(rows: int, hidden_size: int) -> Parameter:
    """Upstream's ``randn(rows, hidden) / sqrt(hidden)`` adaLN-single table."""
    return Parameter(initializer(Normal(1 / math.sqrt(hidden_size)), (rows, hidden_size), ms.float32),
                     name="scale_shift_table")


def text_attention_mask(mask, batch: int):
    """Upstream's text mask (B or 1, L) of 0/1 -> (B, 1, 1, L) boolean, True = attend; None stays None."""
    if mask is None:
        return None
    mask = mask.reshape(mask.shape[0], -1)
    if mask.shape[0] != batch:
        mask = ops.tile(mask, (batch // mask.shape[0], 1))
    return (mask != 0).reshape(batch, 1, 1, -1)
