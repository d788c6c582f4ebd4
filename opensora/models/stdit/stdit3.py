"""STDiT3 (Open-Sora 1.2): alternating spatial and temporal blocks, each with self attention, caption
cross attention and an MLP; fps added to the timestep embedding; ``x_mask`` gives conditioned frames
the t=0 modulation; position embedding rescaled by the pixel resolution (``height``, ``width``)."""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ..layers import forms
from ..layers.blocks import Attention, T2IFinalLayer, frame_modulations, text_attention_mask
from ..layers.embeddings import (CaptionEmbedder, PatchEmbed3D, PositionEmbedding2D, RotaryEmbedding, SizeEmbedder,
                                 TimestepEmbedder)
from ..layers.init import init_linears_, normal_, zeros_
from ..layers.nn import Linear, SiLU
from ..registry import MODELS
from ...parallel.sequence import check_divisible
from .common import FrameBlock, ModelConfig, STDiTBase, build_pretrained


class STDiT3Block(FrameBlock):
    """One spatial (attention over the S patches of a frame) or temporal (over the T frames of a patch)
    block on (B, T, S, C) tokens. ``rope`` (constructor): use rotary embeddings (temporal blocks)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, drop_path=0.0, rope=None, qk_norm=False,
                 temporal=False, enable_flash_attn=False, sequence_parallel=None):
        super().__init__(hidden_size, num_heads, mlp_ratio, drop_path, enable_flash_attn)
        self.temporal = temporal
        # sequence parallel shards the S patches: temporal attention (over T) stays local, spatial exchanges heads
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope,
                              enable_flash_attn=enable_flash_attn,
                              sequence_parallel=None if temporal else sequence_parallel)

    def construct(self, x, y, t, mask=None, x_mask=None, t0=None, rope=None, kv=None):
        """x (B, T, S, C); y (B, L, C) caption tokens or None when ``kv`` (precomputed) is given;
        t / t0 (B, 6C) modulation embeddings; mask (B, 1, 1, L) True = attend; x_mask (B, T)."""
        b, nt, ns, c = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = frame_modulations(
            self.scale_shift_table, t, 6, x_mask, t0)

        x_m = self.norm1.modulate(x, shift_msa, scale_msa)
        if self.temporal:
            x_m = self.attn.over_frames(x_m, rope)
        else:
            x_m = self.attn(x_m.reshape(b * nt, ns, c)).reshape(b, nt, ns, c)
        x = x + self.gated(gate_msa, x_m)

        return self.cross_attention_and_mlp(x, y, kv, mask, shift_mlp, scale_mlp, gate_mlp)


class STDiT3Config(ModelConfig):
    model_type = "STDiT3"
    defaults = dict(
        input_size=(None, None, None), input_sq_size=512, in_channels=4, patch_size=(1, 2, 2), hidden_size=1152,
        depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
        caption_channels=4096, model_max_length=300, qk_norm=True, enable_flash_attn=False,
        enable_layernorm_kernel=False, enable_sequence_parallelism=False, only_train_temporal=False,
        freeze_y_embedder=False, skip_y_embedder=False,
    )


class STDiT3(STDiTBase):
    """``STDiT3(config)`` or ``STDiT3(**kwargs)`` with :class:`STDiT3Config`'s keys.

    forward: ``(x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, **kwargs)`` as
    upstream (other keyword arguments are ignored, as upstream's), plus ``y_kv`` (from
    :meth:`precompute_y_kv`, block order: spatial 0..depth-1 then temporal 0..depth-1) and ``force_drop_ids``
    (caption dropout). Returns float32 (B, out_channels, T, H, W).

    ``enable_sequence_parallelism`` (upstream's key): the model splits each frame's patches across the ranks of
    its sequence-parallel group (``opensora.parallel.sequence``, set up by the runtime with ``sp_size``), as
    upstream 1.2: every layer but spatial self attention works on the local patches; the forward's result is
    whole on every rank.
    """

    supports_sequence_parallel = True

    def __init__(self, config: STDiT3Config | None = None, **kwargs):
        if config is not None and kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        cfg = config if config is not None else STDiT3Config(**kwargs)
        super().__init__(cfg, cfg.enable_flash_attn)
        hidden = cfg.hidden_size
        self.input_sq_size = cfg.input_sq_size
        self.skip_y_embedder = bool(cfg.skip_y_embedder)
        self.pos_embed = PositionEmbedding2D(hidden)
        self.rope = RotaryEmbedding(dim=hidden // cfg.num_heads)

        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.fps_embedder = SizeEmbedder(hidden, dtype=self.dtype)
        self.t_block = nn.SequentialCell([SiLU(), Linear(hidden, 6 * hidden)])
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, hidden, cfg.class_dropout_prob,
                                          token_num=cfg.model_max_length)
        drop_path = np.linspace(0, cfg.drop_path, cfg.depth).tolist()
        common = dict(mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm, enable_flash_attn=cfg.enable_flash_attn,
                      sequence_parallel=self.sequence_groups)
        block = forms.reused_graph(STDiT3Block)  # Ascend: one compiled graph per block kind, reused
        self.spatial_blocks = nn.CellList([
            block(hidden, cfg.num_heads, drop_path=drop_path[i], **common) for i in range(cfg.depth)])
        self.temporal_blocks = nn.CellList([
            block(hidden, cfg.num_heads, drop_path=drop_path[i], temporal=True, rope=True, **common)
            for i in range(cfg.depth)])
        self.final_layer = T2IFinalLayer(hidden, int(np.prod(self.patch_size)), self.out_channels)
        self._finish_init()
        if cfg.only_train_temporal:
            for param in self.get_parameters():
                param.requires_grad = False
            for block in self.temporal_blocks:
                for param in block.get_parameters():
                    param.requires_grad = True
        if cfg.freeze_y_embedder:
            for param in self.y_embedder.get_parameters():
                param.requires_grad = False

    def initialize_weights(self):
        """Upstream's ``initialize_weights`` (1.2); the patch embedding keeps its convolution's default."""
        init_linears_(self)
        normal_(self.fps_embedder.mlp[0].weight, 0.02)
        zeros_(self.fps_embedder.mlp[2].weight, self.fps_embedder.mlp[2].bias)
        for block in self.temporal_blocks:
            zeros_(block.attn.proj.weight, block.cross_attn.proj.weight, block.mlp.fc2.weight)

    def _blocks(self):
        return list(self.spatial_blocks) + list(self.temporal_blocks)

    def embed_caption(self, y, force_drop_ids=None):
        if self.skip_y_embedder:  # y is already (B, 1, L, hidden): e.g. cached projected captions
            return y.reshape(y.shape[0], y.shape[2], y.shape[3]).astype(self.dtype)
        return super().embed_caption(y, force_drop_ids)

    def construct(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, y_kv=None,
                  force_drop_ids=None, **kwargs):
        p = self.prepare(x, timestep, y, mask, x_mask, fps, height, width, y_kv, force_drop_ids)
        x = p["tokens"]
        for i in range(self.depth):
            kv_s = None if p["y_kv"] is None else p["y_kv"][i]
            kv_t = None if p["y_kv"] is None else p["y_kv"][self.depth + i]
            x = self.spatial_blocks[i](x, p["cond"], p["t_mlp"], mask=p["mask"], x_mask=x_mask, t0=p["t0_mlp"],
                                       kv=kv_s)
            x = self.temporal_blocks[i](x, p["cond"], p["t_mlp"], mask=p["mask"], x_mask=x_mask, t0=p["t0_mlp"],
                                        rope=p["rope"], kv=kv_t)
        return self.finish(x, p["t"], x_mask, p["t0"], p["sizes"])

    def prepare(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, y_kv=None,
                force_drop_ids=None) -> dict:
        """Everything before the blocks (split out so that a runner can drive the blocks one by one, see
        ``opensora/inference/blockwise.py``), by name (a dict: MindSpore's graph mode keeps a dict's tensors
        typed, while a NamedTuple made inside a graph loses their types):

        ``tokens`` (B, T, S, C); ``cond`` caption tokens (B, L, C), or None when ``y_kv`` is given; ``t`` the
        timestep (+ fps) embedding (B, C) for the final layer and ``t_mlp`` its adaLN modulation (B, 6C) for
        the blocks; ``t0``/``t0_mlp`` the same at t = 0 for the frames ``x_mask`` conditions, or None;
        ``mask`` the caption attention mask (B, 1, 1, L) True = attend, or None; ``rope`` the temporal
        blocks' rotary tables; ``y_kv`` the precomputed caption keys/values, one per block, or None;
        ``sizes`` the latent token grid (nt, nh, nw) and input size (T, H, W) for :meth:`finish`."""
        if fps is None or height is None or width is None:
            raise ValueError("STDiT3 needs fps, height and width tensors (B,) (pixel height/width of the video)")
        dtype = self.dtype
        b = x.shape[0]
        x = x.astype(dtype)
        timestep = timestep.astype(dtype)

        # === position embedding, scaled by the pixel resolution ===
        _, _, tx, hx, wx = x.shape
        nt, nh, nw = self.get_dynamic_size(x)
        ns = nh * nw
        base_size = round(ns ** 0.5)
        resolution_sq = ops.sqrt(height[0].astype(ms.float32) * width[0].astype(ms.float32))
        pos_emb = self.pos_embed(nh, nw, resolution_sq / self.input_sq_size, base_size, dtype)

        # === timestep (+ fps) embedding; t=0 embedding for conditioned frames ===
        fps_emb = self.fps_embedder(fps.reshape(-1, 1), b)
        t = self.t_embedder(timestep, dtype) + fps_emb
        t_mlp = self.t_block(t)
        t0 = None
        t0_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(ops.zeros_like(timestep), dtype) + fps_emb
            t0_mlp = self.t_block(t0)

        # === captions ===
        cond, y_kv = self._caption_kv_source(y, y_kv, force_drop_ids)

        # === tokens (B, T, S, C) ===
        x = self.x_embedder(x).reshape(b, nt, ns, self.hidden_size) + pos_emb.reshape(1, 1, ns, self.hidden_size)
        if self.split_tokens is not None:  # sequence parallel: this rank's share of each frame's patches
            check_divisible(ns, -1, self.sp_size, "patches of a frame (H/ph x W/pw)")
            x = self.split_tokens(x)
        return {"tokens": x, "cond": cond, "t": t, "t_mlp": t_mlp, "t0": t0, "t0_mlp": t0_mlp,
                "mask": text_attention_mask(mask, b), "rope": self.rope.tables(nt, dtype), "y_kv": y_kv,
                "sizes": (nt, nh, nw, tx, hx, wx)}


@MODELS.register("STDiT3-XL/2")
def STDiT3_XL_2(from_pretrained=None, **kwargs):
    return build_pretrained(STDiT3, STDiT3Config, dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2),
                                                       num_heads=16), from_pretrained, **kwargs)


@MODELS.register("STDiT3-3B/2")
def STDiT3_3B_2(from_pretrained=None, **kwargs):
    return build_pretrained(STDiT3, STDiT3Config, dict(depth=28, hidden_size=1872, patch_size=(1, 2, 2),
                                                       num_heads=26), from_pretrained, **kwargs)
