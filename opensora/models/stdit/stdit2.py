"""STDiT2 (Open-Sora 1.1): blocks with spatial attention, a temporal attention with its own norm,
modulation table and RoPE (applied before the QK norm, as 1.1 did), cross attention and MLP; the
spatial branch is conditioned on height/width and aspect ratio, the temporal one on frame count and fps."""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ..layers.blocks import Attention, T2IFinalLayer, frame_modulations, scale_shift_table, text_attention_mask
from ..layers.embeddings import (CaptionEmbedder, PatchEmbed3D, PositionEmbedding2D, RotaryEmbedding, SizeEmbedder,
                                 TimestepEmbedder)
from ..layers.nn import LayerNorm, Linear, SiLU
from ..registry import MODELS
from .common import FrameBlock, ModelConfig, STDiTBase, build_pretrained


class STDiT2Block(FrameBlock):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, drop_path=0.0, enable_flash_attn=False, rope=None,
                 qk_norm=False):
        super().__init__(hidden_size, num_heads, mlp_ratio, drop_path, enable_flash_attn)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, enable_flash_attn=enable_flash_attn,
                              qk_norm=qk_norm)
        self.norm_temp = LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn_temp = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, enable_flash_attn=enable_flash_attn,
                                   rope=rope, qk_norm=qk_norm, qk_norm_legacy=True)
        self.scale_shift_table_temporal = scale_shift_table(3, hidden_size)

    def construct(self, x, y, t, t_tmp, mask=None, x_mask=None, t0=None, t0_tmp=None, rope=None, kv=None):
        """x (B, T, S, C); t / t0 (B, 6C) spatial, t_tmp / t0_tmp (B, 3C) temporal modulation embeddings."""
        b, nt, ns, c = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = frame_modulations(
            self.scale_shift_table, t, 6, x_mask, t0)
        shift_tmp, scale_tmp, gate_tmp = frame_modulations(self.scale_shift_table_temporal, t_tmp, 3, x_mask, t0_tmp)

        x_m = self.norm1.modulate(x, shift_msa, scale_msa)
        x_s = self.attn(x_m.reshape(b * nt, ns, c)).reshape(b, nt, ns, c)
        x = x + self.gated(gate_msa, x_s)

        x_m = self.norm_temp.modulate(x, shift_tmp, scale_tmp)
        x = x + self.gated(gate_tmp, self.attn_temp.over_frames(x_m, rope))

        return self.cross_attention_and_mlp(x, y, kv, mask, shift_mlp, scale_mlp, gate_mlp)


class STDiT2Config(ModelConfig):
    model_type = "STDiT2"
    defaults = dict(
        input_size=(None, None, None), input_sq_size=32, in_channels=4, patch_size=(1, 2, 2), hidden_size=1152,
        depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
        no_temporal_pos_emb=False, caption_channels=4096, model_max_length=120, freeze=None, qk_norm=False,
        enable_flash_attn=False, enable_layernorm_kernel=False,
    )


class STDiT2(STDiTBase):
    """``STDiT2(config)`` or ``STDiT2(**kwargs)``. forward: ``(x, timestep, y, mask=None, x_mask=None,
    num_frames=None, height=None, width=None, ar=None, fps=None)`` as upstream, plus ``y_kv`` and
    ``force_drop_ids``."""

    def __init__(self, config: STDiT2Config | None = None, **kwargs):
        cfg = config if config is not None else STDiT2Config(**kwargs)
        super().__init__(cfg, cfg.enable_flash_attn)
        hidden = cfg.hidden_size
        if hidden % 3:
            raise ValueError(f"STDiT2's hidden_size must be divisible by 3, got {hidden}")
        self.input_sq_size = cfg.input_sq_size
        self.pos_embed = PositionEmbedding2D(hidden)
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.SequentialCell([SiLU(), Linear(hidden, 6 * hidden)])
        self.t_block_temp = nn.SequentialCell([SiLU(), Linear(hidden, 3 * hidden)])
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, hidden, cfg.class_dropout_prob,
                                          token_num=cfg.model_max_length)
        self.rope = RotaryEmbedding(dim=hidden // cfg.num_heads)
        drop_path = np.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.CellList([
            STDiT2Block(hidden, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, drop_path=drop_path[i],
                        enable_flash_attn=cfg.enable_flash_attn, rope=True, qk_norm=cfg.qk_norm)
            for i in range(cfg.depth)])
        self.final_layer = T2IFinalLayer(hidden, int(np.prod(self.patch_size)), self.out_channels)
        self.csize_embedder = SizeEmbedder(hidden // 3, dtype=self.dtype)
        self.ar_embedder = SizeEmbedder(hidden // 3, dtype=self.dtype)
        self.fl_embedder = SizeEmbedder(hidden, dtype=self.dtype)
        self.fps_embedder = SizeEmbedder(hidden, dtype=self.dtype)
        self._finish_init(cfg.freeze)

    def initialize_weights(self):
        """Upstream's ``initialize_weights`` and ``initialize_temporal`` (1.1): 1.0's, and the temporal t block."""
        self._initialize_pixart_style((self.t_block[1], self.t_block_temp[1]))

    def _blocks(self):
        return list(self.blocks)

    def construct(self, x, timestep, y, mask=None, x_mask=None, num_frames=None, height=None, width=None, ar=None,
                  fps=None, y_kv=None, force_drop_ids=None):
        if num_frames is None or height is None or width is None or ar is None or fps is None:
            raise ValueError("STDiT2 needs num_frames, height, width, ar and fps tensors (B,)")
        dtype = self.dtype
        b = x.shape[0]
        x = x.astype(dtype)
        timestep = timestep.astype(dtype)

        # === size / aspect ratio (spatial) and frames / fps (temporal) conditioning ===
        hw = ops.stack((height, width), axis=1)
        data_info = ops.cat((self.csize_embedder(hw, b), self.ar_embedder(ar.reshape(-1, 1), b)), axis=1)
        fl = self.fl_embedder(num_frames.reshape(-1, 1), b) + self.fps_embedder(fps.reshape(-1, 1), b)

        _, _, tx, hx, wx = x.shape
        nt, nh, nw = self.get_dynamic_size(x)
        ns = nh * nw
        resolution_sq = ops.sqrt(height[0].astype(ms.float32) * width[0].astype(ms.float32))
        pos_emb = self.pos_embed(nh, nw, resolution_sq / self.input_sq_size, round(ns ** 0.5), dtype)
        x = self.x_embedder(x).reshape(b, nt, ns, self.hidden_size) + pos_emb.reshape(1, 1, ns, self.hidden_size)

        t = self.t_embedder(timestep, dtype)
        t_spc_mlp = self.t_block(t + data_info)
        t_tmp_mlp = self.t_block_temp(t + fl)
        t0_spc = None
        t0_spc_mlp = None
        t0_tmp_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(ops.zeros_like(timestep), dtype)
            t0_spc = t0 + data_info
            t0_spc_mlp = self.t_block(t0_spc)
            t0_tmp_mlp = self.t_block_temp(t0 + fl)

        cond, y_kv = self._caption_kv_source(y, y_kv, force_drop_ids)
        attn_mask = text_attention_mask(mask, b)
        rope = self.rope.tables(nt, dtype)
        for i in range(self.depth):
            kv = None if y_kv is None else y_kv[i]
            x = self.blocks[i](x, cond, t_spc_mlp, t_tmp_mlp, mask=attn_mask, x_mask=x_mask, t0=t0_spc_mlp,
                               t0_tmp=t0_tmp_mlp, rope=rope, kv=kv)
        # upstream passes the bare t but t0 + data_info to the final layer
        return self.finish(x, t, x_mask, t0_spc, (nt, nh, nw, tx, hx, wx))


@MODELS.register("STDiT2-XL/2")
def STDiT2_XL_2(from_pretrained=None, **kwargs):
    return build_pretrained(STDiT2, STDiT2Config, dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2),
                                                       num_heads=16), from_pretrained, **kwargs)
