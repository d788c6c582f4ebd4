"""Small PyTorch reference of upstream Open-Sora's shared layers (opensora/models/layers/blocks.py of
v1.0/1.1/1.2, timm's Mlp, rotary_embedding_torch, xformers' packed cross attention), written from
their behaviour for the parity tests. Official parameter names; no flash / apex / xformers.

Half precision as upstream runs it (``model.half()`` / ``.to(bf16)``): buffers and parameters are converted
with the module, so the RoPE frequencies and the 2-D position table's inverse frequencies are rounded to
the model dtype before use; the math attention computes QK^T in the model dtype and the softmax in float32;
xformers' memory-efficient attention (the cross attention) accumulates in float32; norms compute their
statistics in float32 and return the input dtype. In float32 all of this is plain float32 arithmetic.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def approx_gelu():
    return nn.GELU(approximate="tanh")


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


def t_mask_select(x_mask, x, masked_x, T, S):
    B, _, C = x.shape
    out = torch.where(x_mask[:, :, None, None], x.view(B, T, S, C), masked_x.view(B, T, S, C))
    return out.reshape(B, T * S, C)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, out_features=None, act_layer=approx_gelu):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """rotary_embedding_torch.RotaryEmbedding(dim) defaults: 'lang' freqs, interleaved pairs, seq dim -2."""

    def __init__(self, dim, theta=10000):
        super().__init__()
        self.freqs = nn.Parameter(1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)),
                                  requires_grad=False)

    def rotate_queries_or_keys(self, t):
        # rotary_embedding_torch 0.5.3: positions in t's dtype, then the frequencies' dtype (the module's:
        # half after .half()); angles, cos, sin and the rotation in that dtype
        n = t.shape[-2]
        pos = torch.arange(n, dtype=t.dtype).type(self.freqs.dtype)
        ang = torch.einsum("i,f->if", pos, self.freqs)
        ang = torch.repeat_interleave(ang, 2, dim=-1)
        pairs = t.reshape(*t.shape[:-1], -1, 2)
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(t.shape)
        return t * ang.cos() + rot * ang.sin()


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_norm=False, rope=None, qk_norm_legacy=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rotary_emb = rope
        self.qk_norm_legacy = qk_norm_legacy

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm_legacy and self.rotary_emb is not None:
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        q, k = self.q_norm(q), self.k_norm(k)
        if not self.qk_norm_legacy and self.rotary_emb is not None:
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        dtype = q.dtype  # upstream's math path: scores in the model dtype, softmax in float32, cast back
        attn = ((q * self.scale) @ k.transpose(-2, -1)).to(torch.float32).softmax(-1).to(dtype)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


def packed_attention(q, k, v, q_lens, kv_lens):
    """xformers.memory_efficient_attention with BlockDiagonalMask.from_seqlens(q_lens, kv_lens):
    q (1, Mq, H, D), k/v (1, Mk, H, D); query block i attends only to key block i."""
    bias = torch.full((q.shape[1], k.shape[1]), float("-inf"))
    qs, ks = 0, 0
    for nq, nk in zip(q_lens, kv_lens):
        bias[qs:qs + nq, ks:ks + nk] = 0
        qs, ks = qs + nq, ks + nk
    dtype = q.dtype  # xformers accumulates in float32 and returns the input dtype
    q, k, v = (t.permute(0, 2, 1, 3).float() for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    return (scores.softmax(-1) @ v).permute(0, 2, 1, 3).to(dtype)


class MultiHeadCrossAttention(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, cond, y_lens):
        """x (B, N, C); cond: the packed (1, sum(y_lens), C) caption tokens of the batch."""
        B, N, C = x.shape
        q = self.q_linear(x).view(1, -1, self.num_heads, self.head_dim)
        k, v = self.kv_linear(cond).view(1, -1, 2, self.num_heads, self.head_dim).unbind(2)
        x = packed_attention(q, k, v, [N] * B, y_lens)
        return self.proj(x.reshape(B, -1, C))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        _, _, D, H, W = x.shape
        pt, ph, pw = self.patch_size
        x = F.pad(x, (0, (-W) % pw, 0, (-H) % ph, 0, (-D) % pt))
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t, dtype=None):
        dtype = dtype or self.mlp[0].weight.dtype
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class SizeEmbedder(TimestepEmbedder):
    def forward(self, s, bs):
        if s.ndim == 1:
            s = s[:, None]
        if s.shape[0] != bs:
            s = s.repeat(bs // s.shape[0], 1)
        b, dims = s.shape
        emb = self.mlp(self.timestep_embedding(s.reshape(-1), self.frequency_embedding_size).to(self.mlp[0].weight.dtype))
        return emb.reshape(b, -1)


class CaptionEmbedder(nn.Module):
    def __init__(self, in_channels, hidden_size, uncond_prob, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels ** 0.5)
        self.uncond_prob = uncond_prob

    def forward(self, caption, train, force_drop_ids=None):
        if force_drop_ids is not None:
            caption = torch.where((force_drop_ids == 1)[:, None, None, None], self.y_embedding, caption)
        return self.y_proj(caption)


class T2IFinalLayer(nn.Module):
    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, t, x_mask=None, t0=None, T=None, S=None):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        x = t2i_modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:
            # upstream's quirk: x was reassigned above, so the t=0 branch normalises and modulates the
            # already-modulated tokens (norm and modulation twice for the frames x_mask leaves out)
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            x = t_mask_select(x_mask, x, t2i_modulate(self.norm_final(x), shift0, scale0), T, S)
        return self.linear(x)


class PositionEmbedding2D(nn.Module):
    """Upstream's PositionEmbedding2D (1.1/1.2): ``inv_freq`` is a (non-persistent) buffer, so ``.half()`` rounds
    it; the positions are float32 and the table is cast to the model dtype (``dtype``) at the end."""

    def __init__(self, dim):
        super().__init__()
        half = dim // 2
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half)), persistent=False)

    def _sincos(self, t):
        out = torch.einsum("i,d->id", t, self.inv_freq.float())  # the rounded frequencies, float32 positions
        return torch.cat((out.sin(), out.cos()), dim=-1)

    def forward(self, h, w, scale=1.0, base_size=None, dtype=torch.float32):
        gh = torch.arange(h) / scale
        gw = torch.arange(w) / scale
        if base_size is not None:
            gh = gh * (base_size / h)
            gw = gw * (base_size / w)
        a, b = torch.meshgrid(gw, gh, indexing="ij")  # (w, h): w goes first, as upstream
        table = torch.cat([self._sincos(a.t().reshape(-1)), self._sincos(b.t().reshape(-1))], -1).unsqueeze(0)
        return table.to(dtype)


def sincos_2d_numpy(dim, h, w, scale=1.0):
    """Upstream 1.0's get_2d_sincos_pos_embed (MAE), numpy float64."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32) / scale, np.arange(h, dtype=np.float32) / scale)
    return np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], axis=1)


def sincos_1d_numpy(dim, length, scale=1.0):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(np.arange(length) / scale, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pack_captions(y, mask, hidden):
    """Upstream's caption packing: (B, 1, L, C) + (B or 1, L) 0/1 mask -> (1, sum, C), y_lens."""
    B = y.shape[0]
    if mask is not None:
        if mask.shape[0] != B:
            mask = mask.repeat(B // mask.shape[0], 1)
        mask = mask.squeeze(1).squeeze(1)
        y = y.squeeze(1).masked_select(mask.unsqueeze(-1) != 0).view(1, -1, hidden)
        return y, mask.sum(dim=1).tolist()
    return y.squeeze(1).reshape(1, -1, hidden), [y.shape[2]] * B


def unpatchify(x, out_channels, patch_size, N_t, N_h, N_w, R_t, R_h, R_w):
    T_p, H_p, W_p = patch_size
    B = x.shape[0]
    x = x.reshape(B, N_t, N_h, N_w, T_p, H_p, W_p, out_channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, out_channels, N_t * T_p, N_h * H_p, N_w * W_p)
    return x[:, :, :R_t, :R_h, :R_w]
