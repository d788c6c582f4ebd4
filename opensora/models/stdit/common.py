"""What STDiT, STDiT2 and STDiT3 share: configs, dtype, dynamic sizes, unpatchify, caption handling,
precomputed caption keys/values, per-block recompute and ``from_pretrained``.

Accepted-but-inert flags (documented so that upstream configs carry over unchanged):
``enable_layernorm_kernel`` (apex fused LayerNorm: our LayerNorm is already one op),
``enable_sequence_parallelism`` (ColossalAI sequence parallelism: not available; True raises).
``enable_flash_attn`` (``enable_flashattn`` in 1.0) selects Ascend flash attention when running on
Ascend, and is ignored elsewhere (math attention in float32).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ...config import check_kwargs
from ...utils.checkpoint import CheckpointError, load_into, read_checkpoint
from ..layers.attention import use_flash_attention
from ..layers.blocks import text_attention_mask
from ..layers.nn import cpu_target, expand_rows

logger = logging.getLogger(__name__)

_DTYPES = {"float32": ms.float32, "fp32": ms.float32, "float16": ms.float16, "fp16": ms.float16,
           "bfloat16": ms.bfloat16, "bf16": ms.bfloat16}
# keys of a Hugging Face config.json that describe the file, not the model
_HF_META_KEYS = {"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path",
                 "auto_map", "_commit_hash", "_attn_implementation_autoset"}


def to_ms_dtype(dtype) -> ms.dtype:
    """"fp32"/"fp16"/"bf16"/"float32"/... or a MindSpore dtype -> MindSpore dtype."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        return _DTYPES[dtype.lower()]
    if dtype in (ms.float32, ms.float16, ms.bfloat16):
        return dtype
    raise ValueError(f"unsupported dtype {dtype!r}; use float32, float16 or bfloat16")


class ModelConfig:
    """Upstream's ``STDiT2Config`` / ``STDiT3Config`` (a transformers PretrainedConfig there): the
    constructor keyword arguments, with upstream's defaults, plus this port's extras
    (``dtype``, ``grad_checkpointing``, ``num_recompute_blocks``)."""

    model_type = ""
    defaults: dict = {}
    extras = {"dtype": "float32", "grad_checkpointing": False, "num_recompute_blocks": None}

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


class FrameBlockTail(nn.Cell):
    """What every STDiT block shares, on ``x`` held as (B, T, S, C): gated residuals, and the end of the
    block: cross-attention to the caption over all T*S tokens, then the modulated MLP. Subclasses own
    ``cross_attn``, ``norm2``, ``mlp`` and ``drop_path``."""

    def __init__(self):
        super().__init__()
        # CPU backend: the (B, T|1, 1, C) gate broadcast as a K=1 MatMul, then a same-shape Mul (see expand_rows)
        self.matmul_forms = cpu_target()

    def gated(self, gate, y):
        """``drop_path(gate · y)``: the residual branch ``y`` (B, T, S, C) scaled by its adaLN gate."""
        if self.matmul_forms:
            return self.drop_path(expand_rows(gate, y.shape) * y)
        return self.drop_path(gate * y)

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
    """Helpers shared by the three versions. Subclasses define ``_blocks()`` (the blocks in the order
    of the caption keys/values of :meth:`precompute_y_kv`) and the model itself."""

    def _init_common(self, cfg, in_channels, patch_size, hidden_size, num_heads, pred_sigma,
                     enable_flash_attn, enable_sequence_parallelism=False):
        if enable_sequence_parallelism:
            raise NotImplementedError("enable_sequence_parallelism (ColossalAI) is not available in this port; "
                                      "use data parallel training (msrun) instead")
        self.config = cfg
        self.dtype = to_ms_dtype(cfg.dtype)
        self.in_channels = in_channels
        self.pred_sigma = pred_sigma
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.patch_size = tuple(patch_size)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.use_flash = use_flash_attention(enable_flash_attn)

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

    def _caption_kv_source(self, y, y_kv, force_drop_ids):
        """(cond, y_kv): caption tokens to project in each block, or the precomputed keys/values, one
        tensor per block (unstacked once: indexing the stack in every block is a slow StridedSlice)."""
        if y_kv is not None:
            return None, ops.unstack(y_kv.astype(self.dtype), 0)
        return self.embed_caption(y, force_drop_ids), None

    @staticmethod
    def _text_mask(mask, batch):
        return text_attention_mask(mask, batch)

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

    def _apply_training_options(self, cfg):
        if cfg.grad_checkpointing or cfg.num_recompute_blocks:
            self.set_grad_checkpointing(True, cfg.num_recompute_blocks)

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
    values = dict(preset)
    config_json = os.path.join(from_pretrained, "config.json") if from_pretrained else None
    if config_json and os.path.isfile(config_json):
        values.update({k: v for k, v in config_cls.from_json_file(config_json).to_dict().items()
                       if k in _json_keys(config_json)})
    values.update(kwargs)
    model = model_cls(config_cls(**values))
    if from_pretrained is not None:
        model.load_pretrained(from_pretrained)
    return model


def _json_keys(path: str) -> set:
    with open(path, "r", encoding="utf-8") as f:
        return set(json.load(f))
