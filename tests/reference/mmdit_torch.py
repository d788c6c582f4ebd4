"""PyTorch reference of upstream Open-Sora 2.0's MMDiT (hpcaitech/Open-Sora ``main``:
``opensora/models/mmdit/{model,layers,math}.py``, itself Black Forest Labs' Flux) for the parity tests.

Written from upstream's code paths, with its arithmetic and quirks, in plain torch (no flash-attn, no
Liger/Triton kernels, no torch.compile) and with the official parameter names:

* ``timestep_embedding``: t·1000 in t's dtype, frequencies exp(-ln(10000)·k/128) in float32, features
  [cos, sin] in float32, cast back to t's dtype (the guidance vector goes through the same function);
* QK norm: Liger's ``LigerRMSNormFunction`` in "llama" casting mode: statistics in float32, the
  normalised value cast back to the input dtype, THEN times ``scale``; q and k then cast to v's dtype;
* RoPE, two forms that are not interchangeable with the same weights:
  ``use_liger_rope=True``: per axis cos/sin of pos·theta^(-2k/d) computed in float32, concatenated over
  the axes (D/2 values) and repeated twice; Liger 0.5.2's kernel rotates the pairs (d, d + D/2) in
  cos's dtype (float32) and reads **batch row 0** of cos/sin for every sample;
  ``use_liger_rope=False`` (Flux): angles in float64, a (D/2, 2, 2) rotation per position and sample,
  pairs (2d, 2d+1) rotated in float32;
* attention: softmax(q·kᵀ/√D)·v over cat(txt, img) tokens, no mask (flash-attn's default scale);
* adaLN ``Modulation``: ``lin(silu(vec))`` chunked into (shift, scale, gate)·(1 or 2);
  ``(1 + scale)·LayerNorm(x) + shift`` (no affine, eps 1e-6); gated residuals;
* ``fused_qkv=True``: ``qkv`` (3·C rows: q, k, v) and single-block ``linear1`` (3·C + mlp rows);
  ``False`` (Open-Sora 2.0): ``q_proj``/``k_proj``/``v_proj`` and single-block ``q_proj``/``k_proj``/
  ``v_mlp`` (v and the MLP input share one matrix). Single blocks always have biases (upstream ignores
  ``qkv_bias`` there);
* ``vec = time_in(te(t)) [+ guidance_in(te(guidance))] + vector_in(y_vec)``; ``img = img_in(img)
  [+ cond_in(cond)]`` (``cond_in``: in_channels + patch_size² inputs, zero-initialised upstream);
* ``LastLayer`` built with patch size 1: ``linear`` maps hidden -> in_channels (the packed channels).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------ embeddings
def timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    t = time_factor * t  # in t's dtype (bf16 rounds here upstream)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t) if torch.is_floating_point(t) else emb


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


def liger_tables(ids, axes_dim, theta):
    """(cos, sin), each (B, L, D): float32 angles per axis, concatenated, then the D/2 values repeated."""
    cos, sin = [], []
    for i, dim in enumerate(axes_dim):
        omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.einsum("...n,d->...nd", ids[..., i], omega)  # promoted to float32
        cos.append(angles.cos())
        sin.append(angles.sin())
    return torch.cat(cos, -1).repeat(1, 1, 2), torch.cat(sin, -1).repeat(1, 1, 2)


def flux_tables(ids, axes_dim, theta):
    """(B, 1, L, D/2, 2, 2) float32 rotation matrices from float64 angles (Flux's ``EmbedND``)."""
    mats = []
    for i, dim in enumerate(axes_dim):
        omega = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.einsum("...n,d->...nd", ids[..., i], omega)  # promoted to float64
        rot = torch.stack([angles.cos(), -angles.sin(), angles.sin(), angles.cos()], dim=-1)
        mats.append(rot.reshape(*rot.shape[:-1], 2, 2).float())
    return torch.cat(mats, dim=-3).unsqueeze(1)


def rotate_liger(x, cos, sin):
    """x (B, H, L, D); Liger 0.5.2: row 0 of cos/sin for every batch item, float32 (cos's dtype) math."""
    half = x.shape[-1] // 2
    c, s = cos[0, :, :half], sin[0, :, :half]  # the kernel reads the first half (the second is a copy)
    xf = x.to(c.dtype)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return out.to(x.dtype)


def rotate_flux(x, mats):
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = mats[..., 0] * pairs[..., 0] + mats[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q, k, v, pe):
    """q, k, v (B, H, L, D) -> (B, L, H·D)."""
    if isinstance(pe, torch.Tensor):
        q, k = rotate_flux(q, pe), rotate_flux(k, pe)
    else:
        q, k = rotate_liger(q, *pe), rotate_liger(k, *pe)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = (scores.softmax(-1) @ v.float()).to(v.dtype)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


# ------------------------------------------------------------------------------------------ blocks
class RMSNorm(nn.Module):
    """Liger's fused RMS norm, "llama" casting (float32 statistics, cast back, then times ``scale``)."""

    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


def heads(x, num_heads):
    """(B, L, H·D) -> (B, H, L, D)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


class SelfAttention(nn.Module):
    """The parameters of one stream's attention; the double block drives them (``qkv_of``)."""

    def __init__(self, dim, num_heads, qkv_bias=False, fused_qkv=True):
        super().__init__()
        self.num_heads, self.fused_qkv = num_heads, fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_of(self, x):
        """(B, L, C) -> normalised q, k and v, each (B, H, L, D)."""
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = (heads(t, self.num_heads) for t in (q, k, v))
        q, k = self.norm(q, k, v)  # over D: the same in (B, H, L, D) and upstream's (B, L, H, D)
        return q, k, v


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def modulate(norm, x, shift, scale):
    return (1 + scale) * norm(x) + shift


def gelu_mlp(hidden, mlp_hidden):
    return nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden))


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False, fused_qkv=True):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias, fused_qkv))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", gelu_mlp(hidden_size, mlp_hidden))

    def forward(self, img, txt, vec, pe):
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(vec)
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_of(modulate(self.img_norm1, img, img_shift1, img_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_of(modulate(self.txt_norm1, txt, txt_shift1, txt_scale1))
        out = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe)
        n_txt = txt.shape[1]
        txt_out, img_out = out[:, :n_txt], out[:, n_txt:]
        img = img + img_gate1 * self.img_attn.proj(img_out)
        img = img + img_gate2 * self.img_mlp(modulate(self.img_norm2, img, img_shift2, img_scale2))
        txt = txt + txt_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + txt_gate2 * self.txt_mlp(modulate(self.txt_norm2, txt, txt_shift2, txt_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, fused_qkv=True):
        super().__init__()
        self.hidden_size, self.num_heads, self.fused_qkv = hidden_size, num_heads, fused_qkv
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        if fused_qkv:
            self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim)
        else:
            self.q_proj = nn.Linear(hidden_size, hidden_size)
            self.k_proj = nn.Linear(hidden_size, hidden_size)
            self.v_mlp = nn.Linear(hidden_size, hidden_size + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        x_mod = modulate(self.pre_norm, x, shift, scale)
        c = self.hidden_size
        if self.fused_qkv:
            q, k, v, mlp = torch.split(self.linear1(x_mod), [c, c, c, self.mlp_hidden_dim], dim=-1)
        else:
            q, k = self.q_proj(x_mod), self.k_proj(x_mod)
            v, mlp = torch.split(self.v_mlp(x_mod), [c, self.mlp_hidden_dim], dim=-1)
        q, k, v = (heads(t, self.num_heads) for t in (q, k, v))
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe), self.mlp_act(mlp)), 2))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final, x, shift[:, None], scale[:, None]))


# ------------------------------------------------------------------------------------------ model
class MMDiT(nn.Module):
    """Upstream's ``MMDiTModel(MMDiTConfig(**kwargs))`` (registry name ``flux``)."""

    def __init__(self, in_channels, vec_in_dim, context_in_dim, hidden_size, mlp_ratio, num_heads, depth,
                 depth_single_blocks, axes_dim, theta, qkv_bias, guidance_embed, cond_embed=False, fused_qkv=True,
                 use_liger_rope=False, patch_size=2):
        super().__init__()
        if sum(axes_dim) != hidden_size // num_heads:
            raise ValueError("sum(axes_dim) must be the head dim")
        self.axes_dim, self.theta = list(axes_dim), theta
        self.use_liger_rope, self.guidance_embed, self.cond_embed = use_liger_rope, guidance_embed, cond_embed
        self.img_in = nn.Linear(in_channels, hidden_size)
        self.time_in = MLPEmbedder(256, hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        if guidance_embed:
            self.guidance_in = MLPEmbedder(256, hidden_size)
        if cond_embed:
            self.cond_in = nn.Linear(in_channels + patch_size ** 2, hidden_size)
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList([
            DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias, fused_qkv) for _ in range(depth)])
        self.single_blocks = nn.ModuleList([
            SingleStreamBlock(hidden_size, num_heads, mlp_ratio, fused_qkv) for _ in range(depth_single_blocks)])
        self.final_layer = LastLayer(hidden_size, 1, in_channels)

    def rope(self, ids):
        if self.use_liger_rope:
            return liger_tables(ids, self.axes_dim, self.theta)
        return flux_tables(ids, self.axes_dim, self.theta)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None, **kwargs):
        img = self.img_in(img)
        if self.cond_embed:
            if cond is None:
                raise ValueError("Didn't get conditional input for conditional model.")
            img = img + self.cond_in(cond)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("Didn't get guidance strength for guidance distilled model.")
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y_vec)
        txt = self.txt_in(txt)
        pe = self.rope(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        x = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            x = block(x, vec, pe)
        return self.final_layer(x[:, txt.shape[1]:], vec)
