"""PyTorch reference of upstream STDiT (opensora/v1.0 stdit.py) for the parity tests; official names,
including the ``pos_embed`` / ``pos_embed_temporal`` buffers that the converter drops."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .layers_torch import (Attention, CaptionEmbedder, Mlp, MultiHeadCrossAttention, PatchEmbed3D, T2IFinalLayer,
                           TimestepEmbedder, pack_captions, sincos_1d_numpy, sincos_2d_numpy, t2i_modulate, unpatchify)


class STDiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, d_s, d_t, mlp_ratio=4.0):
        super().__init__()
        self.d_s, self.d_t = d_s, d_t
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)
        self.attn_temp = Attention(hidden_size, num_heads, qkv_bias=True)

    def forward(self, x, y, t, mask=None, tpe=None):
        B, N, C = x.shape
        T, S = self.d_t, self.d_s
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa)
        x_s = self.attn(x_m.reshape(B * T, S, C)).reshape(B, T * S, C)
        x = x + gate_msa * x_s
        x_t = x.view(B, T, S, C).permute(0, 2, 1, 3).reshape(B * S, T, C)
        if tpe is not None:
            x_t = x_t + tpe
        x_t = self.attn_temp(x_t).view(B, S, T, C).permute(0, 2, 1, 3).reshape(B, T * S, C)
        x = x + gate_msa * x_t
        x = x + self.cross_attn(x, y, mask)
        return x + gate_mlp * self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))


class STDiT(nn.Module):
    def __init__(self, input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, caption_channels=4096,
                 model_max_length=120, space_scale=1.0, time_scale=1.0):
        super().__init__()
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size, self.patch_size, self.input_size = hidden_size, patch_size, input_size
        self.num_temporal = input_size[0] // patch_size[0]
        h, w = input_size[1] // patch_size[1], input_size[2] // patch_size[2]
        self.num_spatial = h * w
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_2d_numpy(hidden_size, h, w, scale=space_scale)).float().unsqueeze(0))
        self.register_buffer("pos_embed_temporal", torch.from_numpy(
            sincos_1d_numpy(hidden_size, self.num_temporal, scale=time_scale)).float().unsqueeze(0))
        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        self.blocks = nn.ModuleList([STDiTBlock(hidden_size, num_heads, self.num_spatial, self.num_temporal,
                                                mlp_ratio) for _ in range(depth)])
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(patch_size)), self.out_channels)

    def forward(self, x, timestep, y, mask=None, force_drop_ids=None):
        dtype = self.x_embedder.proj.weight.dtype  # upstream: inputs in the model dtype
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        B = x.shape[0]
        x = self.x_embedder(x).view(B, self.num_temporal, self.num_spatial, -1) + self.pos_embed
        x = x.reshape(B, self.num_temporal * self.num_spatial, -1)
        t = self.t_embedder(timestep, dtype=x.dtype)
        t0 = self.t_block(t)
        y = self.y_embedder(y, False, force_drop_ids)
        y, y_lens = pack_captions(y, mask, self.hidden_size)
        for i, block in enumerate(self.blocks):
            x = block(x, y, t0, y_lens, self.pos_embed_temporal if i == 0 else None)
        x = self.final_layer(x, t)
        N = [self.input_size[i] // self.patch_size[i] for i in range(3)]
        return unpatchify(x, self.out_channels, self.patch_size, *N, *self.input_size).float()
