"""Open-Sora 2.0's diffusion model: the Flux MMDiT (upstream ``opensora/models/mmdit/model.py``), registry
name ``"flux"``, with upstream's config keywords, forward arguments and parameter names.

One class serves both checkpoints Open-Sora 2.0 uses:

* ``Open_Sora_v2.safetensors`` (the 11B video model): ``fused_qkv=False`` (``q_proj``/``k_proj``/``v_proj``,
  single blocks ``q_proj``/``k_proj``/``v_mlp``), ``cond_embed=True`` (``cond_in``: the packed mask +
  masked reference latent, 68 channels), ``guidance_embed=False``, ``use_liger_rope=True``;
* ``flux1-dev.safetensors`` (the text-to-image first frame of t2i2v): ``fused_qkv=True`` (``qkv``,
  ``linear1``), ``guidance_embed=True`` (``guidance_in``), Flux's RoPE.

The two RoPE forms rotate different pairs of features ((j, j+D/2) vs (2j, 2j+1)) and so are NOT
interchangeable with the same weights: a checkpoint runs with the form it was trained with, as upstream's
config flags say. The Liger form takes the first batch row's position ids for every sample, as upstream's
kernel (Liger 0.5.2) does (the ids are the same across a batch in upstream's sampler).
"""
from __future__ import annotations

import logging
import os
from dataclasses import MISSING, dataclass, fields

import mindspore as ms
from mindspore import nn, ops

from ...parallel.sequence import check_divisible
from ...config import ConfigError, check_kwargs
from ...dtypes import canonical, to_ms_dtype
from ...utils.checkpoint import CheckpointError, KeyReport, load_into, read_checkpoint
from ..layers.attention import use_flash_attention
from ..layers.embeddings import AxialRotaryEmbedding, sinusoidal_features, timestep_frequencies
from ..layers.init import lazily, zeros_
from ..layers.nn import Linear
from ..registry import MODELS
from .layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock

logger = logging.getLogger(__name__)

TIME_FACTOR = 1000.0  # upstream's timestep_embedding multiplies timesteps (and guidance) by this
FREQUENCY_DIM = 256


@dataclass
class MMDiTConfig:
    """Upstream's ``MMDiTConfig`` keywords and defaults (the fields without a default are required, as
    upstream), plus this port's ``dtype`` (the parameters' and activations' dtype: float32 / bf16 / fp16).

    ``grad_ckpt_settings`` (n_double, n_single): recompute the first n blocks of each kind in the backward.
    ``from_pretrained`` / ``cache_dir`` are read by the builder :func:`Flux`. ``enable_sequence_parallelism``
    (upstream sets it in its ColossalAI plugin): split the text and the image tokens across the runtime's
    sequence-parallel group (``opensora.parallel.sequence``).
    """

    in_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: list
    theta: int
    qkv_bias: bool
    guidance_embed: bool
    cond_embed: bool = False
    fused_qkv: bool = True
    grad_ckpt_settings: tuple | None = None
    use_liger_rope: bool = False
    patch_size: int = 2
    from_pretrained: str | None = None
    cache_dir: str | None = None
    dtype: str = "float32"
    enable_sequence_parallelism: bool = False
    model_type = "MMDiT"

    @classmethod
    def from_kwargs(cls, **kwargs) -> "MMDiTConfig":
        """Like the constructor, with a :class:`ConfigError` naming an unknown key's closest valid one or
        every missing required key."""
        check_kwargs(kwargs, [f.name for f in fields(cls)], "flux (MMDiT) config")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in kwargs]
        if missing:
            raise ConfigError(f"flux (MMDiT) config: missing {', '.join(missing)} (see configs/opensora-v2 or "
                              "upstream's configs/diffusion/inference/256px.py)")
        return cls(**kwargs)

    def get(self, name, default=None):
        return getattr(self, name, default)

    def __contains__(self, name):
        return hasattr(self, name)


class MMDiTModel(nn.Cell):
    """The MMDiT: ``double_blocks`` (separate image/text weights, joint attention), then ``single_blocks``
    over cat(txt, img), then ``final_layer`` on the image tokens. With sequence parallel each rank holds 1/sp of
    the text tokens and 1/sp of the image tokens (their own order), and the joint attention exchanges heads so
    that it attends over the whole cat(txt, img) (the RoPE tables are the whole sequence's): upstream's
    all-to-all mode, which cuts the joint sequence into equal parts instead (the same numbers).

    Inputs as upstream (``img`` already packed: (B, L, in_channels), (T, H/2, W/2) patches of 2x2):
    ``img_ids`` (B, L, 3) and ``txt_ids`` (B, N, 3) integer (t, h, w) positions (text: zeros), ``txt`` (B, N,
    context_in_dim) T5 features, ``timesteps`` (B,) in [0, 1], ``y_vec`` (B, vec_in_dim) CLIP pooled
    features, ``cond`` (B, L, in_channels + patch_size²) the packed mask + masked reference (``cond_embed``),
    ``guidance`` (B,) the distilled guidance scale (``guidance_embed``; ignored otherwise, as upstream).
    Returns (B, L, in_channels) in the model's dtype (upstream's sampler keeps its latents in that dtype).
    """

    config_class = MMDiTConfig

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = self.out_channels = config.in_channels
        self.patch_size = config.patch_size
        if config.hidden_size % config.num_heads:
            raise ValueError(f"Hidden size {config.hidden_size} must be divisible by num_heads {config.num_heads}")
        pe_dim = config.hidden_size // config.num_heads
        if sum(config.axes_dim) != pe_dim:
            raise ValueError(f"Got {config.axes_dim} but expected positional dim {pe_dim}")
        self.hidden_size, self.num_heads = config.hidden_size, config.num_heads
        self.dtype = dtype = to_ms_dtype(config.dtype)
        self.guidance_embed, self.cond_embed = bool(config.guidance_embed), bool(config.cond_embed)
        self.use_liger_rope = bool(config.use_liger_rope)
        # upstream always runs flash-attn (half precision); here Ascend's flash kernel for half-precision models,
        # the float32 math path otherwise (the flash kernel would round a float32 model's q/k/v to float16)
        use_flash = use_flash_attention(dtype != ms.float32)
        self.attention_path = "flash" if use_flash else "math"  # logged once; read by the benchmarks

        self.pe_embedder = AxialRotaryEmbedding(config.axes_dim, config.theta, halves=self.use_liger_rope,
                                                float32_angles=self.use_liger_rope)
        self._freqs = ms.Tensor(timestep_frequencies(FREQUENCY_DIM))
        hidden = self.hidden_size
        self.img_in = Linear(self.in_channels, hidden, dtype=dtype)
        self.time_in = MLPEmbedder(FREQUENCY_DIM, hidden, dtype=dtype)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden, dtype=dtype)
        if self.guidance_embed:
            self.guidance_in = MLPEmbedder(FREQUENCY_DIM, hidden, dtype=dtype)
        if self.cond_embed:
            self.cond_in = Linear(self.in_channels + self.patch_size ** 2, hidden, dtype=dtype)
        self.txt_in = Linear(config.context_in_dim, hidden, dtype=dtype)
        self.sequence_groups = self.split_tokens = self.gather_tokens = None
        self.sp_size = 1
        if config.enable_sequence_parallelism:
            from ...parallel.sequence import GatherSequence, SplitSequence, current_groups

            groups = current_groups()
            if groups.enabled:  # each rank: 1/sp of the text and 1/sp of the image tokens
                check_divisible(0, self.num_heads, groups.sp_size, "sequence")
                self.sequence_groups, self.sp_size = groups, groups.sp_size
                self.split_tokens = SplitSequence(groups, axis=1)
                self.gather_tokens = GatherSequence(groups, axis=1)
        block_kw = dict(fused_qkv=config.fused_qkv, dtype=dtype, rope_halves=self.use_liger_rope, use_flash=use_flash,
                        sequence_parallel=self.sequence_groups)
        self.double_blocks = nn.CellList([
            DoubleStreamBlock(hidden, self.num_heads, config.mlp_ratio, qkv_bias=config.qkv_bias, **block_kw)
            for _ in range(config.depth)])
        self.single_blocks = nn.CellList([
            SingleStreamBlock(hidden, self.num_heads, mlp_ratio=config.mlp_ratio, **block_kw)
            for _ in range(config.depth_single_blocks)])
        self.final_layer = LastLayer(hidden, 1, self.out_channels, dtype=dtype)
        self.initialize_weights()
        if config.grad_ckpt_settings:
            n_double, n_single = config.grad_ckpt_settings
            for block in list(self.double_blocks)[:n_double] + list(self.single_blocks)[:n_single]:
                block.recompute()

    def initialize_weights(self):
        """Upstream's: every layer keeps torch's default initialisation, ``cond_in`` starts at zero (an
        image-conditioned model that begins as the text-to-video one)."""
        if self.cond_embed:
            zeros_(self.cond_in.weight, self.cond_in.bias)

    # ------------------------------------------------------------------------------------ conditioning
    def prepare_conditioning(self, img_ids, txt, txt_ids, y_vec, cond=None, guidance=None) -> dict:
        """What a sampler computes once per prompt batch and passes to every step's forward: the keyword
        arguments ``{"conditioning": ...}`` (an opaque tuple of tensors, ``mutable`` so that a graph-mode
        forward takes it as an input instead of compiling its values in)::

            prepared = model.prepare_conditioning(img_ids, txt, txt_ids, y_vec, cond, guidance)
            for t in steps:
                pred = model(img, timesteps=t_vec, **prepared)

        The forward then gives the numbers of ``model(img, img_ids, txt, txt_ids, t_vec, y_vec, cond, guidance)``
        (up to float rounding: the vector terms are summed in another order) and skips ``txt_in`` (T5 features
        -> hidden, the largest embedder), ``vector_in``, ``guidance_in``, ``cond_in`` and the RoPE tables: none of
        them depends on the step. The arguments are the forward's; their values and batch size must be the
        steps' (e.g. the 3·B rows of upstream's image-guidance batch, with its zero ``cond`` rows). The position
        ids are checked here (whole numbers within the RoPE tables).
        """
        self.pe_embedder.check_ids(img_ids)
        self.pe_embedder.check_ids(txt_ids)
        return {"conditioning": ms.mutable(self._conditioning(img_ids, txt, txt_ids, y_vec, cond, guidance))}

    def _conditioning(self, img_ids, txt, txt_ids, y_vec, cond, guidance):
        dtype = self.dtype
        if txt.ndim != 3:
            raise ValueError("Input img and txt tensors must have 3 dimensions.")
        vec = self.vector_in(y_vec.astype(dtype))
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("Didn't get guidance strength for guidance distilled model.")
            vec = self.guidance_in(self._embed_scalar(guidance)) + vec
        txt = self.txt_in(txt.astype(dtype))
        cos, sin, _ = self.pe_embedder(ops.cat((txt_ids, img_ids), axis=1), self.use_liger_rope)
        if self.cond_embed:
            if cond is None:
                raise ValueError("Didn't get conditional input for conditional model.")
            return txt, vec, cos, sin, self.cond_in(cond.astype(dtype))
        return txt, vec, cos, sin

    def _embed_scalar(self, t):
        """Upstream's ``timestep_embedding(t, 256)``: t·1000 in the model dtype (a bf16 model rounds there),
        [cos, sin] of float32 arguments, cast to the model dtype."""
        return sinusoidal_features(t.astype(self.dtype) * TIME_FACTOR, self._freqs).astype(self.dtype)

    # ------------------------------------------------------------------------------------ forward
    def construct(self, img, img_ids=None, txt=None, txt_ids=None, timesteps=None, y_vec=None, cond=None,
                  guidance=None, conditioning=None):
        """Upstream's ``forward(img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None)``;
        or ``forward(img, timesteps=..., conditioning=...)`` with :meth:`prepare_conditioning`'s result."""
        if img.ndim != 3:
            raise ValueError("Input img and txt tensors must have 3 dimensions.")
        if conditioning is None:
            conditioning = self._conditioning(img_ids, txt, txt_ids, y_vec, cond, guidance)
        txt, vec_cond, cos, sin = conditioning[0], conditioning[1], conditioning[2], conditioning[3]
        img = self.img_in(img.astype(self.dtype))
        if self.cond_embed:
            img = img + conditioning[4]
        vec = self.time_in(self._embed_scalar(timesteps)) + vec_cond
        rope = (cos, sin, self.pe_embedder.rotate_half)
        if self.split_tokens is not None:  # sequence parallel: this rank's part of the text and of the image
            check_divisible(txt.shape[1], -1, self.sp_size, "text tokens")
            check_divisible(img.shape[1], -1, self.sp_size, "image tokens (T x H/2 x W/2)")
            txt, img = self.split_tokens(txt), self.split_tokens(img)

        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope)
        n_txt, n_img = txt.shape[1], img.shape[1]
        x = ops.cat((txt, img), axis=1)
        for block in self.single_blocks:
            x = block(x, vec, rope, n_txt)
        _, img = ops.split(x, (n_txt, n_img), axis=1)
        img = self.final_layer(img, vec)
        if self.gather_tokens is not None:
            img = self.gather_tokens(img)
        return img

    # ------------------------------------------------------------------------------------ weights
    def load_pretrained(self, path: str) -> KeyReport:
        """Load an official ``.safetensors`` (read lazily; bf16 stays bf16 in a bf16 model) or a converted
        ``.ckpt``, by name.

        Every key and shape is checked first and any missing, unexpected or mis-shaped key is refused with
        the full list, nothing loaded. Upstream loads with ``strict=False`` (a missing key only logs a
        warning and leaves that weight at its initial value, e.g. a zero ``cond_in``); refusing is
        deliberate here, so that a wrong file or wrong config flags (``fused_qkv``, ``cond_embed``,
        ``guidance_embed``) cannot give silently wrong videos.
        """
        return load_into(self, read_checkpoint(path), source=path, strict=True)


def _weights_path(from_pretrained: str, cache_dir: str | None) -> str:
    candidates = [from_pretrained]
    if cache_dir and not os.path.isabs(from_pretrained):
        candidates.append(os.path.join(cache_dir, from_pretrained))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise CheckpointError(f"MMDiT weights not found: {' or '.join(candidates)} (a local .safetensors such as "
                          "Open_Sora_v2.safetensors / flux1-dev.safetensors, or a converted .ckpt; nothing is "
                          "downloaded)")


def _model_dtype(dtype, torch_dtype) -> str:
    """The builder's dtype: ``dtype`` (this project's key) or upstream's ``torch_dtype``; float32 by default."""
    try:
        names = [canonical(value) for value in (dtype, torch_dtype) if value is not None]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if len(set(names)) > 1:
        raise ConfigError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give one of them")
    return names[0] if names else "float32"


@MODELS.register("flux")
def Flux(cache_dir: str | None = None, from_pretrained: str | None = None, device_map=None, torch_dtype=None,
         strict_load: bool = False, dtype=None, **kwargs) -> MMDiTModel:
    """Upstream's registry builder ``flux``: ``MMDiTModel(MMDiTConfig(**kwargs))``, weights from ``from_pretrained``.

    ``device_map``: accepted for upstream's configs (MindSpore places the model on the runtime's device).
    ``strict_load``: accepted, but loading is always strict here (see :meth:`MMDiTModel.load_pretrained`).
    ``dtype`` / ``torch_dtype``: the model's dtype (default float32). The model is built lazily: with
    ``from_pretrained`` no weight is drawn at random before the checkpoint fills it (no 11B random
    initialisation, no second copy).
    """
    if device_map is not None:
        logger.debug("flux: device_map=%r has no effect in the MindSpore port", device_map)
    config = MMDiTConfig.from_kwargs(dtype=_model_dtype(dtype, torch_dtype), from_pretrained=from_pretrained,
                                     cache_dir=cache_dir, **kwargs)
    # before building: a missing file is a one-line error
    path = _weights_path(from_pretrained, cache_dir) if from_pretrained else None
    with lazily() as draw_later:  # initial values are drawn only for what no checkpoint fills
        model = MMDiTModel(config)
    if path is not None:
        model.load_pretrained(path)
    if draw_later:
        model.init_parameters_data()
    return model
