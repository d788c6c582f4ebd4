"""PyTorch reference of upstream STDiT3 (opensora/v1.2 stdit3.py) for the parity tests: same code
paths (rearranges on (B, T·S, C), packed captions + block-diagonal attention, t_mask_select), official names."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .layers_torch import (Attention, CaptionEmbedder, Mlp, MultiHeadCrossAttention, PatchEmbed3D,
                           PositionEmbedding2D, RotaryEmbedding, SizeEmbedder, T2IFinalLayer, TimestepEmbedder,
                           pack_captions, t2i_modulate, t_mask_select, unpatchify)


class STDiT3Block(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, rope=None, qk_norm=False, temporal=False):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        B, N, C = x.shape
        mods = (self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        if x_mask is not None:
            mods0 = (self.scale_shift_table[None] + t0.reshape(B, 6, -1)).chunk(6, dim=1)
            shift_msa0, scale_msa0, gate_msa0, shift_mlp0, scale_mlp0, gate_mlp0 = mods0

        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(self.norm1(x), shift_msa0, scale_msa0), T, S)
        if self.temporal:
            x_m = x_m.view(B, T, S, C).permute(0, 2, 1, 3).reshape(B * S, T, C)
            x_m = self.attn(x_m).view(B, S, T, C).permute(0, 2, 1, 3).reshape(B, T * S, C)
        else:
            x_m = self.attn(x_m.reshape(B * T, S, C)).reshape(B, T * S, C)
        x_m_s = gate_msa * x_m
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, gate_msa0 * x_m, T, S)
        x = x + x_m_s

        x = x + self.cross_attn(x, y, mask)

        x_m = t2i_modulate(self.norm2(x), shift_mlp, scale_mlp)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(self.norm2(x), shift_mlp0, scale_mlp0), T, S)
        x_m = self.mlp(x_m)
        x_m_s = gate_mlp * x_m
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, gate_mlp0 * x_m, T, S)
        return x + x_m_s


class STDiT3(nn.Module):
    def __init__(self, input_sq_size=512, in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, caption_channels=4096,
                 model_max_length=300, qk_norm=True, input_size=None):
        super().__init__()
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size, self.patch_size, self.input_sq_size = hidden_size, patch_size, input_sq_size
        self.pos_embed = PositionEmbedding2D(hidden_size)
        self.rope = RotaryEmbedding(hidden_size // num_heads)
        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.fps_embedder = SizeEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        self.spatial_blocks = nn.ModuleList(
            [STDiT3Block(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth)])
        self.temporal_blocks = nn.ModuleList(
            [STDiT3Block(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm, temporal=True,
                         rope=self.rope.rotate_queries_or_keys) for _ in range(depth)])
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(patch_size)), self.out_channels)

    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None,
                force_drop_ids=None):
        dtype = self.x_embedder.proj.weight.dtype  # upstream: inputs in the model dtype
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        B = x.shape[0]
        _, _, Tx, Hx, Wx = x.shape
        pt, ph, pw = self.patch_size
        T, H, W = -(-Tx // pt), -(-Hx // ph), -(-Wx // pw)
        S = H * W
        scale = (height[0].item() * width[0].item()) ** 0.5 / self.input_sq_size
        pos_emb = self.pos_embed(H, W, scale=scale, base_size=round(S ** 0.5), dtype=dtype)

        t = self.t_embedder(timestep, dtype=x.dtype)
        fps = self.fps_embedder(fps.unsqueeze(1), B)
        t = t + fps
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep), dtype=x.dtype) + fps
            t0_mlp = self.t_block(t0)

        y = self.y_embedder(y, False, force_drop_ids)
        y, y_lens = pack_captions(y, mask, self.hidden_size)

        x = self.x_embedder(x).view(B, T, S, -1) + pos_emb
        x = x.reshape(B, T * S, -1)
        for sb, tb in zip(self.spatial_blocks, self.temporal_blocks):
            x = sb(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
            x = tb(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
        x = self.final_layer(x, t, x_mask, t0, T, S)
        return unpatchify(x, self.out_channels, self.patch_size, T, H, W, Tx, Hx, Wx).float()
