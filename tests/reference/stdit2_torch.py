"""PyTorch reference of upstream STDiT2 (opensora/v1.1 stdit2.py) for the parity tests; official names."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .layers_torch import (Attention, CaptionEmbedder, Mlp, MultiHeadCrossAttention, PatchEmbed3D,
                           PositionEmbedding2D, RotaryEmbedding, SizeEmbedder, T2IFinalLayer, TimestepEmbedder,
                           pack_captions, t2i_modulate, t_mask_select, unpatchify)


def _chunks(table, t, n):
    return (table[None] + t.reshape(t.shape[0], n, -1)).chunk(n, dim=1)


class STDiT2Block(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, rope=None, qk_norm=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.norm_temp = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        # 1.1: RoPE applied before the QK norm
        self.attn_temp = Attention(hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope,
                                   qk_norm_legacy=True)
        self.scale_shift_table_temporal = nn.Parameter(torch.randn(3, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, y, t, t_tmp, mask=None, x_mask=None, t0=None, t0_tmp=None, T=None, S=None):
        B, N, C = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _chunks(self.scale_shift_table, t, 6)
        shift_tmp, scale_tmp, gate_tmp = _chunks(self.scale_shift_table_temporal, t_tmp, 3)
        masked = x_mask is not None
        if masked:
            shift_msa0, scale_msa0, gate_msa0, shift_mlp0, scale_mlp0, gate_mlp0 = _chunks(self.scale_shift_table, t0, 6)
            shift_tmp0, scale_tmp0, gate_tmp0 = _chunks(self.scale_shift_table_temporal, t0_tmp, 3)

        def mod(norm, xx, shift, scale, shift0=None, scale0=None):
            out = t2i_modulate(norm(xx), shift, scale)
            return t_mask_select(x_mask, out, t2i_modulate(norm(xx), shift0, scale0), T, S) if masked else out

        def gate(g, g0, h):
            return t_mask_select(x_mask, g * h, g0 * h, T, S) if masked else g * h

        x_m = mod(self.norm1, x, shift_msa, scale_msa, *( (shift_msa0, scale_msa0) if masked else ()))
        x_s = self.attn(x_m.reshape(B * T, S, C)).reshape(B, T * S, C)
        x = x + gate(gate_msa, gate_msa0 if masked else None, x_s)

        x_m = mod(self.norm_temp, x, shift_tmp, scale_tmp, *((shift_tmp0, scale_tmp0) if masked else ()))
        x_t = x_m.view(B, T, S, C).permute(0, 2, 1, 3).reshape(B * S, T, C)
        x_t = self.attn_temp(x_t).view(B, S, T, C).permute(0, 2, 1, 3).reshape(B, T * S, C)
        x = x + gate(gate_tmp, gate_tmp0 if masked else None, x_t)

        x = x + self.cross_attn(x, y, mask)

        x_m = mod(self.norm2, x, shift_mlp, scale_mlp, *((shift_mlp0, scale_mlp0) if masked else ()))
        return x + gate(gate_mlp, gate_mlp0 if masked else None, self.mlp(x_m))


class STDiT2(nn.Module):
    def __init__(self, input_sq_size=32, in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, caption_channels=4096,
                 model_max_length=120, qk_norm=False, input_size=None):
        super().__init__()
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size, self.patch_size, self.input_sq_size = hidden_size, patch_size, input_sq_size
        self.pos_embed = PositionEmbedding2D(hidden_size)
        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.t_block_temp = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        self.rope = RotaryEmbedding(hidden_size // num_heads)
        self.blocks = nn.ModuleList([STDiT2Block(hidden_size, num_heads, mlp_ratio, self.rope.rotate_queries_or_keys,
                                                 qk_norm) for _ in range(depth)])
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(patch_size)), self.out_channels)
        self.csize_embedder = SizeEmbedder(hidden_size // 3)
        self.ar_embedder = SizeEmbedder(hidden_size // 3)
        self.fl_embedder = SizeEmbedder(hidden_size)
        self.fps_embedder = SizeEmbedder(hidden_size)

    def forward(self, x, timestep, y, mask=None, x_mask=None, num_frames=None, height=None, width=None, ar=None,
                fps=None, force_drop_ids=None):
        dtype = self.x_embedder.proj.weight.dtype  # upstream: inputs in the model dtype
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        B = x.shape[0]
        hw = torch.cat([height[:, None], width[:, None]], dim=1)
        rs = (height[0].item() * width[0].item()) ** 0.5
        data_info = torch.cat([self.csize_embedder(hw, B), self.ar_embedder(ar.unsqueeze(1), B)], dim=1)
        fl = self.fl_embedder(num_frames.unsqueeze(1), B) + self.fps_embedder(fps.unsqueeze(1), B)
        _, _, Tx, Hx, Wx = x.shape
        pt, ph, pw = self.patch_size
        T, H, W = -(-Tx // pt), -(-Hx // ph), -(-Wx // pw)
        S = H * W
        pos_emb = self.pos_embed(H, W, scale=rs / self.input_sq_size, base_size=round(S ** 0.5), dtype=dtype)
        x = (self.x_embedder(x).view(B, T, S, -1) + pos_emb).reshape(B, T * S, -1)
        t = self.t_embedder(timestep, dtype=x.dtype)
        t_spc_mlp = self.t_block(t + data_info)
        t_tmp_mlp = self.t_block_temp(t + fl)
        t0_spc = t0_spc_mlp = t0_tmp_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep), dtype=x.dtype)
            t0_spc = t0 + data_info
            t0_spc_mlp = self.t_block(t0_spc)
            t0_tmp_mlp = self.t_block_temp(t0 + fl)
        y = self.y_embedder(y, False, force_drop_ids)
        y, y_lens = pack_captions(y, mask, self.hidden_size)
        for block in self.blocks:
            x = block(x, y, t_spc_mlp, t_tmp_mlp, y_lens, x_mask, t0_spc_mlp, t0_tmp_mlp, T, S)
        x = self.final_layer(x, t, x_mask, t0_spc, T, S)
        return unpatchify(x, self.out_channels, self.patch_size, T, H, W, Tx, Hx, Wx).float()
