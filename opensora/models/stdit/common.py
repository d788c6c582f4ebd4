"""What STDiT, STDiT2 and STDiT3 share: configs, dtype, the block base, dynamic sizes, unpatchify, caption
handling, the conditioning prepared once per prompt batch, per-block recompute and ``from_pretrained``.

Upstream flags accepted at the model boundary so that upstream configs carry over unchanged, and not
threaded any further: ``enable_layernorm_kernel`` (apex's fused LayerNorm: ours is one formulation
already), ``enable_sequence_parallelism`` (STDiT3: sequence parallel over the runtime's groups, see
``opensora/parallel/sequence.py``; the others raise). ``enable_flash_attn``
(``enable_flashattn`` in 1.0) selects flash attention where the device has it (math attention elsewhere).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ...config import check_kwargs
from ...dtypes import to_ms_dtype
from ...utils.checkpoint import CheckpointError, load_into, read_checkpoint
from ..layers import forms
from ..layers.attention import use_flash_attention
from ..layers.blocks import DropPath, Mlp, MultiHeadCrossAttention, scale_shift_table, text_attention_mask
from ..layers.init import init_linears_, lazily, normal_, xavier_uniform_flat_, zeros_
from ..layers.precision import cast_parameters
from ..layers.nn import LayerNorm

logger = logging.getLogger(__name__)

# keys of a Hugging Face config.json that describe the file, not the model
_HF_META_KEYS = {"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path",
                 "auto_map", "_commit_hash", "_attn_implementation_autoset"}


class ModelConfig:
    """Upstream's ``STDiT2Config`` / ``STDiT3Config`` (a transformers PretrainedConfig there): the
    constructor keyword arguments, with upstream's defaults, plus this port's extras: ``dtype`` (the compute
    dtype, upstream's ``model.to(dtype)``), ``weights_dtype`` (the dtype the weights are held in: None = the
    compute dtype, as upstream's inference; training passes "float32" for float32 master weights),
    ``grad_checkpointing``, ``num_recompute_blocks``."""

    model_type = ""
    defaults: dict = {}
    extras = {"dtype": "float32", "weights_dtype": None, "grad_checkpointing": False, "num_recompute_blocks": None}

    def __init__(self, **kwargs):
        valid = {**self.defaults, **self.extras}
        check_kwargs(kwargs, valid, f"{self.model_type} config")
        for key, value in {**valid, **kwargs}.items():
            setattr(self, key, value)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in {**self.defaults, **self.extras}}

    @classmethod
    def from_json_file(cls, path: str, **overrides) -> "ModelConfig":
        """A Hugging Face ``config.json``; keys this port does not know are ignored, ``overrides`` win."""
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        known = {**cls.defaults, **cls.extras}
        kwargs = {k: v for k, v in data.items() if k in known}
        ignored = sorted(set(data) - set(known) - _HF_META_KEYS)
        if ignored:
            logger.info("%s: ignoring config keys %s", path, ignored)
        kwargs.update(overrides)
        return cls(**kwargs)


class FrameBlock(nn.Cell):
    """The base of every STDiT block, on tokens ``x`` held as (B, T, S, C): what all of them have (``norm1``,
    ``cross_attn``, ``norm2``, ``mlp``, ``drop_path`` and the 6-row adaLN ``scale_shift_table``), the gated
    residuals, and the common end of the block: cross attention to the caption over all T·S tokens, then
    the modulated MLP. Subclasses add their self-attention cells and write ``construct``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 enable_flash_attn: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.norm1 = LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads, enable_flash_attn=enable_flash_attn)
        self.norm2 = LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.scale_shift_table = scale_shift_table(6, hidden_size)
        self._gate = forms.GATE.chosen()

    def gated(self, gate, y):
        """``drop_path(gate · y)``: the residual branch ``y`` (B, T, S, C) scaled by its adaLN gate (B, T|1, 1, C)."""
        return self.drop_path(self._gate(gate, y))

    def cross_attention_and_mlp(self, x, y, kv, mask, shift_mlp, scale_mlp, gate_mlp):
        b, nt, ns, c = x.shape
        if kv is None:
            kv = self.cross_attn.project_kv(y)
        x = x + self.cross_attn.attend(x.reshape(b, nt * ns, c), kv, mask).reshape(b, nt, ns, c)
        return x + self.gated(gate_mlp, self.mlp(self.norm2.modulate(x, shift_mlp, scale_mlp)))


def caption_extent(mask, length: int, multiple: int = 16):
    """(L', mask'): the caption positions some sample attends to, rounded up to ``multiple`` and at most
    ``length``, and the mask cut to them (None when every kept position is attended by every sample).
    ``mask``: (B or 1, length) 0/1 tensor or array, or None (everything attended)."""
    if mask is None:
        return length, None
    keep = np.asarray(mask.asnumpy() if isinstance(mask, ms.Tensor) else mask).reshape(-1, length) != 0
    attended = np.flatnonzero(keep.any(axis=0))
    if attended.size == 0:  # nothing to attend to: leave it to the model (uniform attention), as given
        return length, mask
    kept = min(length, -(-(int(attended[-1]) + 1) // multiple) * multiple)
    keep = keep[:, :kept]
    return kept, None if keep.all() else ms.Tensor(keep.astype(np.int32))


class STDiTBase(nn.Cell):
    """What the three versions share. A subclass builds its cells after ``super().__init__(cfg, flash)``, then
    calls :meth:`_finish_init`; it defines ``_blocks()`` (the blocks in the order of the caption keys/values
    of :meth:`precompute_y_kv`), ``initialize_weights()`` (upstream's rules, in one place) and ``construct``.
    ``frame_conditioning``: the forward takes ``x_mask`` (frames given as references keep the t=0 modulation)."""

    frame_conditioning = True

    def __init__(self, cfg: ModelConfig, enable_flash_attn: bool):
        super().__init__()
        self.sequence_groups, self.sp_size = None, 1
        self.split_tokens = self.gather_tokens = None
        if getattr(cfg, "enable_sequence_parallelism", False):
            self._enable_sequence_parallel()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size ({cfg.hidden_size}) must be divisible by num_heads ({cfg.num_heads})")
        self.config = cfg
        self.dtype = to_ms_dtype(cfg.dtype)
        self.in_channels = cfg.in_channels
        self.pred_sigma = cfg.pred_sigma
        self.out_channels = cfg.in_channels * 2 if cfg.pred_sigma else cfg.in_channels
        self.patch_size = tuple(cfg.patch_size)
        self.hidden_size, self.num_heads = cfg.hidden_size, cfg.num_heads
        self.depth = cfg.depth
        self.enable_flash_attn = bool(enable_flash_attn)
        self.attention_path = "flash" if use_flash_attention(enable_flash_attn) else "math"  # logged once

    supports_sequence_parallel = False

    def _enable_sequence_parallel(self):
        """Tokens (B, T, S, C) split on S across the sequence-parallel group set up by the runtime."""
        from ...parallel.sequence import GatherSequence, SplitSequence, current_groups

        if not self.supports_sequence_parallel:
            raise NotImplementedError(f"enable_sequence_parallelism: {type(self).__name__} has no sequence "
                                      "parallel path in this port (STDiT3 has)")
        groups = current_groups()
        if groups.enabled:  # with sp_size 1 the flag changes nothing
            self.sequence_groups, self.sp_size = groups, groups.sp_size
            self.split_tokens = SplitSequence(groups, axis=2)
            self.gather_tokens = GatherSequence(groups, axis=2)

    def _finish_init(self, freeze=None):
        """After the cells exist: upstream's initialisation, the weights' dtype, freezing, and the training
        options."""
        self.initialize_weights()
        cast_parameters(self, to_ms_dtype(self.config.weights_dtype or self.config.dtype))
        self._freeze(freeze)
        for param in self.get_parameters():  # fixed tables kept in the checkpoint (as upstream's buffers)
            if param.name.endswith(("y_embedder.y_embedding", "rope.freqs")):
                param.requires_grad = False
        cfg = self.config
        if cfg.grad_checkpointing or cfg.num_recompute_blocks:
            self.set_grad_checkpointing(True, cfg.num_recompute_blocks)

    def initialize_weights(self):
        raise NotImplementedError

    def _initialize_pixart_style(self, t_blocks):
        """Upstream 1.0 and 1.1's ``initialize_weights`` + ``initialize_temporal`` (PixArt's rules): every linear
        layer xavier-uniform with zero bias; the patch embedding as the linear layer it is; the timestep and
        caption MLPs and the ``t_blocks`` linears N(0, 0.02); cross attention's and the temporal attention's
        output projections and the final layer zero."""
        init_linears_(self)
        xavier_uniform_flat_(self.x_embedder.proj.weight)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.y_embedder.y_proj.fc1,
                       self.y_embedder.y_proj.fc2) + tuple(t_blocks):
            normal_(linear.weight, 0.02)
        for block in self._blocks():
            zeros_(block.cross_attn.proj.weight, block.cross_attn.proj.bias)
            zeros_(block.attn_temp.proj.weight, block.attn_temp.proj.bias)
        zeros_(self.final_layer.linear.weight, self.final_layer.linear.bias)

    # ---------------------------------------------------------------- sizes
    def get_dynamic_size(self, x):
        """Latent (B, C, T, H, W) -> patch grid (T', H', W') as Python ints (static in graph mode)."""
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        return (t + pt - 1) // pt, (h + ph - 1) // ph, (w + pw - 1) // pw

    def unpatchify(self, x, N_t, N_h, N_w, R_t, R_h, R_w):
        """(B, T', S, pt·ph·pw·C_out) -> (B, C_out, T, H, W), cropped to the input's (R_t, R_h, R_w)."""
        pt, ph, pw = self.patch_size
        b = x.shape[0]
        c = self.out_channels
        x = x.reshape(b, N_t, N_h, N_w, pt, ph, pw, c).transpose(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(b, c, N_t * pt, N_h * ph, N_w * pw)
        if (R_t, R_h, R_w) != (N_t * pt, N_h * ph, N_w * pw):
            x = x[:, :, :R_t, :R_h, :R_w]
        return x

    # ---------------------------------------------------------------- captions
    def _blocks(self):
        raise NotImplementedError

    def embed_caption(self, y, force_drop_ids=None):
        """T5 features (B, 1, L, caption_channels) -> (B, L, hidden) (caption dropout in training)."""
        y = self.y_embedder(y.astype(self.dtype), self.training, force_drop_ids)
        return y.reshape(y.shape[0], y.shape[2], y.shape[3])

    def precompute_y_kv(self, y, mask=None, multiple: int = 16):
        """Caption keys/values of every block, computed once per prompt batch and reusable across steps.

        ``y``: (B, 1, L, caption_channels) T5 features (for classifier-free guidance: the conditional
        and null captions concatenated, as passed to the forward); ``mask``: the forward's text mask
        (B or 1, L) or None. Returns ``(y_kv, mask)`` to pass as ``y_kv=`` and ``mask=`` to the forward
        (``y`` is then not used): ``y_kv`` (num_blocks, 2, B, heads, L', head_dim) in the block order of
        ``_blocks()``.

        Caption positions that no sample attends to are dropped: L' is the longest caption of the batch
        rounded up to ``multiple`` (few distinct shapes, so few graph compiles), and the mask becomes
        None when every kept position is attended. The result is the same, as upstream packs the valid
        tokens only, and cross attention costs ~L'/L of the full length. Not for training (no dropout).
        """
        cond = self.embed_caption(y)
        length, mask = caption_extent(mask, cond.shape[1], multiple)
        if length < cond.shape[1]:
            cond = cond[:, :length]
        return ops.stack([block.cross_attn.project_kv(cond) for block in self._blocks()]), mask

    def prepare_conditioning(self, y, mask=None) -> dict:
        """What a sampler computes once per prompt batch and passes to every step's forward: the keyword
        arguments ``y``, ``y_kv`` and ``mask`` (the caption keys/values of every block with the mask cut to
        the attended positions, see :meth:`precompute_y_kv`; ``y`` is then not needed)."""
        y_kv, mask = self.precompute_y_kv(y, mask)
        return {"y": None, "y_kv": y_kv, "mask": mask}

    def _caption_kv_source(self, y, y_kv, force_drop_ids):
        """(cond, y_kv): caption tokens to project in each block, or the precomputed keys/values, one
        tensor per block (unstacked once: indexing the stack in every block is a slow StridedSlice)."""
        if y_kv is not None:
            return None, ops.unstack(y_kv.astype(self.dtype), 0)
        return self.embed_caption(y, force_drop_ids), None

    # ---------------------------------------------------------------- training
    def set_grad_checkpointing(self, enable: bool = True, num_blocks: int | None = None):
        """Recompute the activations of the first ``num_blocks`` blocks (all when None) in the backward.

        Upstream's ``grad_checkpointing``; uses ``Cell.recompute()``. Call before the first compile.
        """
        blocks = list(self._blocks())
        count = len(blocks) if num_blocks is None else int(num_blocks)
        for i, block in enumerate(blocks):
            if enable and i < count:
                block.recompute()
            else:
                block._recompute(False)  # Cell.recompute() has no off switch; this is what it sets
        return self

    def finish(self, x, t, x_mask, t0, sizes):
        """Final layer and unpatchify (1.1, 1.2): tokens (B, T, S, C) -> float32 (B, out_channels, T, H, W);
        ``sizes``: latent token grid (nt, nh, nw) and input size (T, H, W)."""
        nt, nh, nw, tx, hx, wx = sizes
        if self.gather_tokens is not None:  # sequence parallel: the whole sequence again, on every rank
            x = self.gather_tokens(x)
        x = self.final_layer(x, t, x_mask, t0)
        x = self.unpatchify(x, nt, nh, nw, tx, hx, wx)
        return x.astype(ms.float32)

    def _freeze(self, freeze):
        """Upstream's ``freeze`` (1.0, 1.1): "not_temporal" trains only the temporal attention, "text"
        freezes the cross-attention."""
        if freeze is None:
            return
        if freeze not in ("not_temporal", "text"):
            raise ValueError(f"freeze must be None, 'not_temporal' or 'text', got {freeze!r}")
        for param in self.get_parameters():
            if (freeze == "not_temporal" and "attn_temp" not in param.name) or \
                    (freeze == "text" and "cross_attn" in param.name):
                param.requires_grad = False

    # ---------------------------------------------------------------- weights
    def load_pretrained(self, path: str, strict: bool = True):
        """Load a converted ``.ckpt``, a ``.safetensors`` file, or a directory laid out like the Hugging Face
        repositories (``model.safetensors``, or a single ``.ckpt``), through the conversion table."""
        from .convert import to_mindspore_params

        weights = _weights_file(path)
        params = to_mindspore_params(read_checkpoint(weights))
        return load_into(self, params, source=weights, strict=strict)


def _weights_file(path: str) -> str:
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        for ext in (".safetensors", ".ckpt"):
            found = [n for n in names if n.endswith(ext) and not n.startswith(".")]
            if len(found) == 1:
                return os.path.join(path, found[0])
            if len(found) > 1:
                raise CheckpointError(f"{path}: several {ext} files ({', '.join(found)}); pass the file itself")
        raise CheckpointError(f"{path}: no model.safetensors or .ckpt file in the directory")
    raise CheckpointError(f"pretrained weights not found: {path} (a directory with config.json + "
                          "model.safetensors, a .safetensors file or a converted .ckpt)")


def build_pretrained(model_cls, config_cls, preset: dict, from_pretrained=None, **kwargs):
    """Upstream's registry builders. The model's size comes from ``preset`` (e.g. depth 28, hidden 1152),
    overridden by a ``config.json`` when ``from_pretrained`` is a Hugging Face style directory, and by
    ``kwargs`` over both. ``from_pretrained``: that directory, a ``.safetensors`` file or a converted ``.ckpt``."""
    values = {**preset, **folder_config_values(config_cls, from_pretrained), **kwargs}
    with lazily() as draw_later:  # initial values are drawn only for what the checkpoint does not fill
        model = model_cls(config_cls(**values))
    if from_pretrained is not None:
        model.load_pretrained(from_pretrained)
    if draw_later:
        model.init_parameters_data()
    return model


def folder_config_values(config_cls, path) -> dict:
    """The model keywords a Hugging Face-style folder's ``config.json`` sets (the keys it holds that
    ``config_cls`` knows), or {} when ``path`` is not such a folder (a file, or None)."""
    config_json = os.path.join(path, "config.json") if path and os.path.isdir(path) else None
    if not config_json or not os.path.isfile(config_json):
        return {}
    with open(config_json, "r", encoding="utf-8") as f:
        present = set(json.load(f))
    return {k: v for k, v in config_cls.from_json_file(config_json).to_dict().items() if k in present}
