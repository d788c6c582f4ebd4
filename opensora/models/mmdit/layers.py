"""The blocks of Open-Sora 2.0's MMDiT / Flux (upstream ``opensora/models/mmdit/layers.py``), upstream's names.

Tokens are (B, L, C). Attention heads are split as (B, L, H, D) for the QK norm and RoPE, then
(B, H, L, D) for :func:`~opensora.models.layers.attention.attention`. Every attention is joint over the
text tokens followed by the image tokens, without a mask (:class:`JointAttention`). The RoPE tables come
from the model's :class:`~opensora.models.layers.embeddings.AxialRotaryEmbedding`; ``rope_halves`` selects
the pairs they rotate (Liger's (j, j+D/2) or Flux's (2j, 2j+1)).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ..layers import forms
from ..layers.attention import attention
from ..layers.nn import GELUTanh, LayerNorm, Linear, RMSNorm, SiLU, gelu_tanh, silu


class MLPEmbedder(nn.Cell):
    """``in_layer`` -> SiLU -> ``out_layer`` (timesteps, guidance, the CLIP vector)."""

    def __init__(self, in_dim: int, hidden_dim: int, dtype=ms.float32):
        super().__init__()
        self.in_layer = Linear(in_dim, hidden_dim, dtype=dtype)
        self.out_layer = Linear(hidden_dim, hidden_dim, dtype=dtype)

    def construct(self, x):
        return self.out_layer(silu(self.in_layer(x)))


class QKNorm(nn.Cell):
    """RMS norms of q and k over each head's D features (parameters ``query_norm.scale``, ``key_norm.scale``).

    Upstream runs Liger's fused kernel in "llama" casting: statistics in float32, the normalised value cast
    back to the input dtype, then times ``scale`` (the project's :class:`RMSNorm` for an input of the
    weight's dtype); q and k are then cast to v's dtype. ``q_scale`` (attention's 1/sqrt(D)) is folded
    into the query norm's weight, so the attention skips that pass over q.
    """

    def __init__(self, dim: int, dtype=ms.float32):
        super().__init__()
        self.query_norm = RMSNorm(dim, eps=1e-6, dtype=dtype, weight_name="scale")
        self.key_norm = RMSNorm(dim, eps=1e-6, dtype=dtype, weight_name="scale")

    def construct(self, q, k, dtype, q_scale=None):
        return self.query_norm(q, q_scale).astype(dtype), self.key_norm(k).astype(dtype)


class Modulation(nn.Cell):
    """``lin(silu(vec))`` -> 3 (single) or 6 (double) tensors (B, 1, C): shift, scale, gate (twice)."""

    def __init__(self, dim: int, double: bool, dtype=ms.float32):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = Linear(dim, self.multiplier * dim, dtype=dtype)

    def construct(self, vec):
        out = self.lin(silu(vec))
        return ops.split(out.reshape(out.shape[0], 1, -1), out.shape[-1] // self.multiplier, axis=-1)


def _heads(x, num_heads):
    """(B, L, H·D) -> (B, L, H, D)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads)


class JointAttention(nn.Cell):
    """RoPE on q and k, then softmax attention over all tokens (no parameters). Upstream's ``attention``
    (``math.py``): the rotation in float32, cast back; flash-attn's default scale 1/sqrt(D), which here the
    caller has folded into q (the query norm's weight)."""

    def __init__(self, rope_halves: bool, use_flash: bool, sequence_parallel=None):
        super().__init__()
        self.use_flash = use_flash
        self._rope_tables = forms.ROPE_TABLES.chosen()
        self._rotate = (forms.ROTATE_HALVES if rope_halves else forms.ROTATE_PAIRS).chosen()
        self.to_heads = self.to_sequence = None
        if sequence_parallel is not None:  # q/k/v stacked (3, B, L, H, D); the output (B, L, H, D)
            from ...parallel.sequence import HeadsToSequence, SequenceToHeads

            self.to_heads = SequenceToHeads(sequence_parallel, seq_axis=2, head_axis=3)
            self.to_sequence = HeadsToSequence(sequence_parallel, seq_axis=1, head_axis=2)

    def construct(self, q, k, v, rope, n_txt=None):
        """q, k, v (B, L, H, D) -> (B, L, H·D); ``rope``: (cos, sin, matrix), cos/sin (B or 1, L, D).
        Sequence parallel: q, k, v are this rank's ``n_txt`` text tokens then its image tokens; the whole
        cat(txt, img) is attended with this rank's heads, the result returned for the local tokens."""
        b, n, h, d = q.shape
        if self.to_heads is not None:
            txt, img = ops.split(ops.stack((q, k, v)), (n_txt, n - n_txt), axis=2)
            q, k, v = ops.unstack(ops.cat((self.to_heads(txt), self.to_heads(img)), axis=2), 0)
        cos, sin, matrix = rope
        nq = q.shape[1]
        cos, sin = self._rope_tables(cos.reshape(-1, nq, 1, d), sin.reshape(-1, nq, 1, d), q.shape)  # for q and k
        q, k = self._rotary(q, cos, sin, matrix), self._rotary(k, cos, sin, matrix)
        out = attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), None, 1.0,
                        self.use_flash).transpose(0, 2, 1, 3)
        if self.to_sequence is not None:
            txt, img = ops.split(out, (n_txt * (nq // n), nq - n_txt * (nq // n)), axis=1)
            out = ops.cat((self.to_sequence(txt), self.to_sequence(img)), axis=1)
        return out.reshape(b, n, h * d)

    def _rotary(self, x, cos, sin, matrix):
        h = x.astype(ms.float32)
        return (h * cos + self._rotate(h, matrix) * sin).astype(x.dtype)


class SelfAttention(nn.Cell):
    """One stream's attention parameters: ``qkv`` (fused) or ``q_proj``/``k_proj``/``v_proj``, ``norm``, ``proj``.
    The double block computes the joint attention of both streams (upstream's processor does the same)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, fused_qkv: bool = True,
                 dtype=ms.float32):
        super().__init__()
        self.num_heads, self.fused_qkv, self.dim = num_heads, fused_qkv, dim
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        if fused_qkv:
            self.qkv = Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype)
        else:
            self.q_proj = Linear(dim, dim, bias=qkv_bias, dtype=dtype)
            self.k_proj = Linear(dim, dim, bias=qkv_bias, dtype=dtype)
            self.v_proj = Linear(dim, dim, bias=qkv_bias, dtype=dtype)
        self.norm = QKNorm(head_dim, dtype=dtype)
        self.proj = Linear(dim, dim, dtype=dtype)

    def qkv_of(self, x):
        """x (B, L, C) -> q (normalised, scaled by 1/sqrt(D)), k (normalised), v: each (B, L, H, D)."""
        if self.fused_qkv:
            q, k, v = ops.split(self.qkv(x), self.dim, axis=-1)  # "(K H D)": q, k, v blocks of rows
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)
        q, k = self.norm(q, k, v.dtype, self.scale)
        return q, k, v


class DoubleStreamBlock(nn.Cell):
    """Image and text streams with their own weights, one joint attention over cat(txt, img)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False,
                 fused_qkv: bool = True, dtype=ms.float32, rope_halves: bool = False, use_flash: bool = False,
                 sequence_parallel=None):
        super().__init__()
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.attention = JointAttention(rope_halves, use_flash, sequence_parallel)
        self._gate = forms.GATE.chosen()

        def mlp():
            return nn.SequentialCell([Linear(hidden_size, mlp_hidden_dim, dtype=dtype), GELUTanh(),
                                      Linear(mlp_hidden_dim, hidden_size, dtype=dtype)])

        self.img_mod = Modulation(hidden_size, double=True, dtype=dtype)
        self.img_norm1 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias, fused_qkv, dtype)
        self.img_norm2 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = mlp()
        self.txt_mod = Modulation(hidden_size, double=True, dtype=dtype)
        self.txt_norm1 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias, fused_qkv, dtype)
        self.txt_norm2 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = mlp()

    def construct(self, img, txt, vec, rope):
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(vec)
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_of(self.img_norm1.modulate(img, img_shift1, img_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_of(self.txt_norm1.modulate(txt, txt_shift1, txt_scale1))
        out = self.attention(ops.cat((txt_q, img_q), axis=1), ops.cat((txt_k, img_k), axis=1),
                             ops.cat((txt_v, img_v), axis=1), rope, txt.shape[1])
        txt_out, img_out = ops.split(out, (txt.shape[1], img.shape[1]), axis=1)

        img = img + self._gate(img_gate1, self.img_attn.proj(img_out))
        img = img + self._gate(img_gate2, self.img_mlp(self.img_norm2.modulate(img, img_shift2, img_scale2)))
        txt = txt + self._gate(txt_gate1, self.txt_attn.proj(txt_out))
        txt = txt + self._gate(txt_gate2, self.txt_mlp(self.txt_norm2.modulate(txt, txt_shift2, txt_scale2)))
        return img, txt


class SingleStreamBlock(nn.Cell):
    """Parallel attention + MLP over cat(txt, img) (ViT-22B style): ``linear1`` (q, k, v, MLP input) or
    ``q_proj``/``k_proj``/``v_mlp`` (v and the MLP input), then ``linear2`` over cat(attention, GELU(MLP)).
    Its linears always have biases (upstream ignores ``qkv_bias`` here)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_scale: float | None = None,
                 fused_qkv: bool = True, dtype=ms.float32, rope_halves: bool = False, use_flash: bool = False,
                 sequence_parallel=None):
        super().__init__()
        # qk_scale: accepted as upstream's keyword, unused there too (its attention scales by 1/sqrt(D))
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, hidden_size // num_heads
        self.fused_qkv = fused_qkv
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.attention = JointAttention(rope_halves, use_flash, sequence_parallel)
        self._gate = forms.GATE.chosen()
        if fused_qkv:
            self.linear1 = Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim, dtype=dtype)
        else:
            self.q_proj = Linear(hidden_size, hidden_size, dtype=dtype)
            self.k_proj = Linear(hidden_size, hidden_size, dtype=dtype)
            self.v_mlp = Linear(hidden_size, hidden_size + self.mlp_hidden_dim, dtype=dtype)
        self.linear2 = Linear(hidden_size + self.mlp_hidden_dim, hidden_size, dtype=dtype)
        self.norm = QKNorm(self.head_dim, dtype=dtype)
        self.pre_norm = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = Modulation(hidden_size, double=False, dtype=dtype)

    def construct(self, x, vec, rope, n_txt=None):
        """x (B, L, C) text then image tokens; ``n_txt``: how many are text (sequence parallel: locally)."""
        shift, scale, gate = self.modulation(vec)
        x_mod = self.pre_norm.modulate(x, shift, scale)
        c = self.hidden_size
        if self.fused_qkv:
            q, k, v, mlp = ops.split(self.linear1(x_mod), (c, c, c, self.mlp_hidden_dim), axis=-1)
        else:
            q, k = self.q_proj(x_mod), self.k_proj(x_mod)
            v, mlp = ops.split(self.v_mlp(x_mod), (c, self.mlp_hidden_dim), axis=-1)
        q, k, v = _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)
        q, k = self.norm(q, k, v.dtype, self.head_dim ** -0.5)
        attn = self.attention(q, k, v, rope, n_txt)
        return x + self._gate(gate, self.linear2(ops.cat((attn, gelu_tanh(mlp)), axis=-1)))


class LastLayer(nn.Cell):
    """``(1 + scale)·norm_final(x) + shift`` from ``adaLN_modulation`` (SiLU, Linear: shift then scale), ``linear``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, dtype=ms.float32):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels, dtype=dtype)
        self.adaLN_modulation = nn.SequentialCell([SiLU(), Linear(hidden_size, 2 * hidden_size, dtype=dtype)])

    def construct(self, x, vec):
        out = self.adaLN_modulation(vec)
        shift, scale = ops.split(out.reshape(out.shape[0], 1, -1), out.shape[-1] // 2, axis=-1)
        return self.linear(self.norm_final.modulate(x, shift, scale))
