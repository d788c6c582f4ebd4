"""STDiT (Open-Sora 1.0): PixArt-alpha blocks with a temporal attention after each spatial one (sharing
its gate), fixed sin-cos position embeddings built from ``input_size`` (``space_scale`` / ``time_scale``),
the temporal one added before the first block's temporal attention."""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from ..layers.blocks import Attention, T2IFinalLayer, frame_modulations, text_attention_mask
from ..layers.embeddings import CaptionEmbedder, PatchEmbed3D, TimestepEmbedder, get_1d_sincos_pos_embed, \
    get_2d_sincos_pos_embed
from ..layers.nn import Linear, SiLU
from ..registry import MODELS
from .common import FrameBlock, ModelConfig, STDiTBase, build_pretrained


class STDiTBlock(FrameBlock):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, drop_path=0.0, enable_flashattn=False):
        super().__init__(hidden_size, num_heads, mlp_ratio, drop_path, enable_flashattn)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, enable_flash_attn=enable_flashattn)
        self.attn_temp = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, enable_flash_attn=enable_flashattn)

    def construct(self, x, y, t, mask=None, tpe=None, kv=None):
        """x (B, T, S, C); tpe (1, T, C) temporal position embedding (first block only) or None."""
        b, nt, ns, c = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = frame_modulations(
            self.scale_shift_table, t, 6)
        x_m = self.norm1.modulate(x, shift_msa, scale_msa)
        x_s = self.attn(x_m.reshape(b * nt, ns, c)).reshape(b, nt, ns, c)
        x = x + self.gated(gate_msa, x_s)

        x_t = x if tpe is None else x + tpe.reshape(1, nt, 1, c)
        x = x + self.gated(gate_msa, self.attn_temp.over_frames(x_t))  # upstream reuses the spatial gate

        return self.cross_attention_and_mlp(x, y, kv, mask, shift_mlp, scale_mlp, gate_mlp)


class STDiTConfig(ModelConfig):
    """Upstream STDiT takes these keyword arguments directly (no config class); kept for symmetry."""

    model_type = "STDiT"
    defaults = dict(
        input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28, num_heads=16,
        mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0, no_temporal_pos_emb=False,
        caption_channels=4096, model_max_length=120, space_scale=1.0, time_scale=1.0, freeze=None,
        enable_flashattn=False, enable_layernorm_kernel=False, enable_sequence_parallelism=False,
    )


class STDiT(STDiTBase):
    """``STDiT(**kwargs)`` as upstream (``dtype`` accepts "fp32"/"fp16"/"bf16" or a MindSpore dtype).

    forward: ``(x, timestep, y, mask=None)`` plus ``y_kv`` (:meth:`precompute_y_kv`, one per block) and
    ``force_drop_ids``. x must have the ``input_size`` the model was built with (position embeddings are fixed).
    """

    frame_conditioning = False  # 1.0 has no x_mask

    def __init__(self, config: STDiTConfig | None = None, **kwargs):
        cfg = config if config is not None else STDiTConfig(**kwargs)
        super().__init__(cfg, cfg.enable_flashattn)
        hidden = cfg.hidden_size
        self.input_size = tuple(cfg.input_size)
        self.num_temporal = self.input_size[0] // self.patch_size[0]
        self.num_spatial = (self.input_size[1] // self.patch_size[1]) * (self.input_size[2] // self.patch_size[2])
        self.no_temporal_pos_emb = cfg.no_temporal_pos_emb  # accepted; upstream 1.0 adds it regardless
        # fixed sin-cos tables (upstream's pos_embed / pos_embed_temporal buffers; not in the checkpoint here)
        grid = (self.input_size[1] // self.patch_size[1], self.input_size[2] // self.patch_size[2])
        self.pos_embed = Tensor(get_2d_sincos_pos_embed(hidden, grid, scale=cfg.space_scale)[None], ms.float32)
        self.pos_embed_temporal = Tensor(
            get_1d_sincos_pos_embed(hidden, self.num_temporal, scale=cfg.time_scale)[None], ms.float32)

        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.SequentialCell([SiLU(), Linear(hidden, 6 * hidden)])
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, hidden, cfg.class_dropout_prob,
                                          token_num=cfg.model_max_length)
        drop_path = np.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.CellList([
            STDiTBlock(hidden, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, drop_path=drop_path[i],
                       enable_flashattn=cfg.enable_flashattn)
            for i in range(cfg.depth)])
        self.final_layer = T2IFinalLayer(hidden, int(np.prod(self.patch_size)), self.out_channels)
        self._finish_init(cfg.freeze)

    def initialize_weights(self):
        """Upstream's ``initialize_weights`` and ``initialize_temporal`` (1.0)."""
        self._initialize_pixart_style((self.t_block[1],))

    def _blocks(self):
        return list(self.blocks)

    def construct(self, x, timestep, y, mask=None, y_kv=None, force_drop_ids=None):
        dtype = self.dtype
        b = x.shape[0]
        nt, nh, nw = self.get_dynamic_size(x)
        if (nt, nh * nw) != (self.num_temporal, self.num_spatial):
            raise ValueError(f"STDiT was built for input_size {self.input_size}; got a latent of shape {x.shape}")
        x = x.astype(dtype)
        timestep = timestep.astype(dtype)
        x = self.x_embedder(x).reshape(b, nt, self.num_spatial, self.hidden_size) + self.pos_embed.astype(dtype)
        t = self.t_embedder(timestep, dtype)
        t_mlp = self.t_block(t)
        cond, y_kv = self._caption_kv_source(y, y_kv, force_drop_ids)
        attn_mask = text_attention_mask(mask, b)
        tpe = self.pos_embed_temporal.astype(dtype)
        for i in range(self.depth):
            kv = None if y_kv is None else y_kv[i]
            x = self.blocks[i](x, cond, t_mlp, mask=attn_mask, tpe=tpe if i == 0 else None, kv=kv)
        x = self.final_layer(x, t)
        x = self.unpatchify(x, nt, nh, nw, *self.input_size)
        return x.astype(ms.float32)


@MODELS.register("STDiT-XL/2")
def STDiT_XL_2(from_pretrained=None, **kwargs):
    return build_pretrained(STDiT, STDiTConfig, dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16),
                            from_pretrained, **kwargs)
