"""The Stable Diffusion / SDXL image VAE: diffusers' ``AutoencoderKL`` architecture and parameter names.

Built from a diffusers ``config.json`` (``AutoencoderKL.from_config``), so ``stabilityai/sd-vae-ft-ema``
and the SDXL VAE of ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`` (subfolder ``vae``) carry over
unchanged, and their ``diffusion_pytorch_model.safetensors`` load without any renaming.

Only what those checkpoints use is implemented: ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks,
a mid block with one single-head attention, SiLU. ``encoder`` / ``decoder`` are cells (graph-mode
friendly); :meth:`AutoencoderKL.encode` returns the posterior's mean and std.
"""
from __future__ import annotations

import json
import math
import os
from functools import partial

import mindspore as ms
from mindspore import nn, ops

from ...errors import MissingFileError

from ..layers.attention import attention
from ..layers.nn import Conv2d, GroupNorm, Linear, pad2d_zeros, silu, upsample_nearest2x

SUPPORTED_DOWN = ("DownEncoderBlock2D",)
SUPPORTED_UP = ("UpDecoderBlock2D",)
# diffusers config keys that describe the architecture (the rest, e.g. "_class_name", is metadata)
CONFIG_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
               "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
               "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv",
               "use_post_quant_conv", "mid_block_add_attention")


def conv2d_same(in_channels: int, out_channels: int, kernel_size: int, dtype=ms.float32):
    """A 'same'-padded 2-D convolution: the image VAE's resnet convolutions."""
    return Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, dtype=dtype)


class ResnetBlock(nn.Cell):
    """diffusers ``ResnetBlock2D`` without time embedding (and the 2.0 video VAE's ``ResnetBlockCausal3D``):
    norm-SiLU-conv twice plus the input, through a 1x1 convolution when the width changes.
    ``conv(in, out, kernel, dtype=...)`` builds the convolutions: 'same'-padded 2-D ones for the image VAE,
    causal 3-D ones for the video VAE.

    ``shortcut_name``: the shortcut's attribute (parameter) name; LDM-layout checkpoints (the Flux
    autoencoder, ``autoencoder_2d.py``) call it ``nin_shortcut``, with the same arithmetic."""

    shortcut_name = "conv_shortcut"

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6, conv=conv2d_same,
                 dtype=ms.float32):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, dtype=dtype)
        self.conv1 = conv(in_channels, out_channels, 3, dtype=dtype)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps, dtype=dtype)
        self.conv2 = conv(out_channels, out_channels, 3, dtype=dtype)
        shortcut = conv(in_channels, out_channels, 1, dtype=dtype) if in_channels != out_channels else None
        setattr(self, self.shortcut_name, shortcut)

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        shortcut = getattr(self, self.shortcut_name)
        if shortcut is not None:
            x = shortcut(x)
        return x + h


class AttentionBlock(nn.Cell):
    """diffusers ``Attention`` as the VAE mid blocks use it: one head over all positions of a (B, C, *positions)
    input (H*W for the image VAE, T*H*W for the 2.0 video VAE), group norm first, residual added
    (``to_q``/``to_k``/``to_v``/``to_out.0`` linear layers). ``mask``: optional boolean (S, S), True = attend."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, eps=eps, dtype=dtype)
        self.to_q = Linear(channels, channels, dtype=dtype)
        self.to_k = Linear(channels, channels, dtype=dtype)
        self.to_v = Linear(channels, channels, dtype=dtype)
        self.to_out = nn.CellList([Linear(channels, channels, dtype=dtype)])
        self.scale = 1.0 / math.sqrt(channels)

    def construct(self, x, mask=None):
        shape = x.shape
        b, c = shape[0], shape[1]
        hidden = self.group_norm(x).reshape(b, c, -1).transpose(0, 2, 1)  # (B, S, C)
        n = hidden.shape[1]
        q = self.to_q(hidden).reshape(b, 1, n, c)
        k = self.to_k(hidden).reshape(b, 1, n, c)
        v = self.to_v(hidden).reshape(b, 1, n, c)
        out = attention(q, k, v, mask, self.scale, False).reshape(b, n, c)
        out = self.to_out[0](out).transpose(0, 2, 1).reshape(shape)
        return out + x


class MidBlock(nn.Cell):
    """``UNetMidBlock2D``: resnet, (attention, resnet). ``frame_causal`` (the 2.0 video VAE's
    ``UNetMidBlockCausal3D`` on (B, C, T, H, W)): a position attends to its own and earlier frames only, as
    upstream's ``prepare_causal_attention_mask``."""

    def __init__(self, channels: int, groups: int, add_attention: bool = True, conv=conv2d_same,
                 frame_causal: bool = False, dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock(channels, channels, groups, conv=conv, dtype=dtype) for _ in range(2)])
        self.attentions = nn.CellList([AttentionBlock(channels, groups, dtype=dtype)]) if add_attention else None
        self.frame_causal = frame_causal

    def construct(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            mask = None
            if self.frame_causal and x.shape[2] > 1:  # one frame: every position sees every other
                frame_size = x.shape[3] * x.shape[4]
                frame = ops.arange(0, x.shape[2] * frame_size, dtype=ms.int32) // frame_size
                mask = frame.reshape(1, -1) <= frame.reshape(-1, 1)  # key frame <= query frame
            x = self.attentions[0](x, mask)
        return self.resnets[1](x)


class Downsample(nn.Cell):
    """``Downsample2D`` with ``padding=0``: pad right/bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def construct(self, x):
        return self.conv(pad2d_zeros(x, (0, 1, 0, 1)))


class Upsample(nn.Cell):
    """``Upsample2D``: nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def construct(self, x):
        return self.conv(upsample_nearest2x(x))


class ResnetStage(nn.Cell):
    """diffusers ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` (and the 2.0 video VAE's causal 3-D ones):
    ``num_layers`` resnets, then an optional resampler, ``downsamplers.0`` or ``upsamplers.0``.
    ``downsampler`` / ``upsampler``: a function building that cell (called after the resnets are built)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsampler=None,
                 upsampler=None, conv=conv2d_same, dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups,
                                                conv=conv, dtype=dtype) for i in range(num_layers)])
        self.downsamplers = nn.CellList([downsampler()]) if downsampler is not None else None
        self.upsamplers = nn.CellList([upsampler()]) if upsampler is not None else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Cell):
    """Image (B, C, H, W) -> posterior moments (B, 2*latent, H/f, W/f), before ``quant_conv``.

    ``conv``, ``downsamplers`` (per block, a function building its downsampler, or None) and ``frame_causal``
    (the mid block's attention) default to the image VAE's; the 2.0 video VAE's causal 3-D encoder is this
    stack with causal convolutions (``hunyuan_vae/blocks.py``)."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups,
                 mid_block_add_attention=True, conv=conv2d_same, downsamplers=None, frame_causal=False,
                 dtype=ms.float32):
        super().__init__()
        if downsamplers is None:  # a stride-2 Downsample after every block but the last
            downsamplers = [partial(Downsample, c) for c in block_out_channels[:-1]] + [None]
        self.conv_in = conv(in_channels, block_out_channels[0], 3, dtype=dtype)
        blocks, prev = [], block_out_channels[0]
        for channels, downsampler in zip(block_out_channels, downsamplers):
            blocks.append(ResnetStage(prev, channels, layers_per_block, groups, downsampler=downsampler, conv=conv,
                                      dtype=dtype))
            prev = channels
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = MidBlock(prev, groups, mid_block_add_attention, conv=conv, frame_causal=frame_causal,
                                  dtype=dtype)
        self.conv_norm_out = GroupNorm(groups, prev, eps=1e-6, dtype=dtype)
        self.conv_out = conv(prev, 2 * latent_channels, 3, dtype=dtype)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    """Latent (B, latent, h, w) -> image (B, C, h*f, w*f), after ``post_quant_conv``; ``layers_per_block + 1``
    resnets per up block. ``conv``, ``upsamplers`` (per up block, in their order) and ``frame_causal`` as in
    :class:`Encoder`."""

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, groups,
                 mid_block_add_attention=True, conv=conv2d_same, upsamplers=None, frame_causal=False,
                 dtype=ms.float32):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        if upsamplers is None:  # a nearest x2 Upsample after every block but the last
            upsamplers = [partial(Upsample, c) for c in reversed_channels[:-1]] + [None]
        self.conv_in = conv(latent_channels, reversed_channels[0], 3, dtype=dtype)
        self.mid_block = MidBlock(reversed_channels[0], groups, mid_block_add_attention, conv=conv,
                                  frame_causal=frame_causal, dtype=dtype)
        blocks, prev = [], reversed_channels[0]
        for channels, upsampler in zip(reversed_channels, upsamplers):
            blocks.append(ResnetStage(prev, channels, layers_per_block + 1, groups, upsampler=upsampler, conv=conv,
                                      dtype=dtype))
            prev = channels
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[0], eps=1e-6, dtype=dtype)
        self.conv_out = conv(block_out_channels[0], out_channels, 3, dtype=dtype)

    def construct(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


def posterior_mean_std(moments):
    """Split (B, 2C, ...) moments into the diagonal Gaussian's mean and std (log-variance clamped to
    [-30, 20] as diffusers' and upstream's ``DiagonalGaussianDistribution``)."""
    mean, logvar = ops.chunk(moments, 2, 1)
    logvar = ops.clamp(logvar, -30.0, 20.0)
    return mean, ops.exp(0.5 * logvar)


class AutoencoderKL(nn.Cell):
    """diffusers' ``AutoencoderKL`` (same constructor keywords, same parameter names)."""

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1, act_fn="silu",
                 latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215, shift_factor=None,
                 latents_mean=None, latents_std=None, force_upcast=True, use_quant_conv=True,
                 use_post_quant_conv=True, mid_block_add_attention=True):
        super().__init__()
        bad = [t for t in down_block_types if t not in SUPPORTED_DOWN] + [t for t in up_block_types if t not in SUPPORTED_UP]
        if bad or act_fn != "silu":
            raise ValueError(f"AutoencoderKL: unsupported block types {bad} or act_fn {act_fn!r}; only "
                             f"{SUPPORTED_DOWN}/{SUPPORTED_UP} with silu (the SD / SDXL VAEs) are implemented")
        if not (len(down_block_types) == len(up_block_types) == len(block_out_channels)):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, block_out_channels=list(block_out_channels),
                           layers_per_block=layers_per_block, latent_channels=latent_channels,
                           norm_num_groups=norm_num_groups, scaling_factor=scaling_factor, shift_factor=shift_factor)
        self.latent_channels = latent_channels
        self.scaling_factor = scaling_factor
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        self.encoder = Encoder(in_channels, latent_channels, block_out_channels, layers_per_block, norm_num_groups,
                               mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                               mid_block_add_attention)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config: dict | str) -> "AutoencoderKL":
        """From a diffusers config dict, a ``config.json`` path, or a directory holding one."""
        if isinstance(config, str):
            path = os.path.join(config, "config.json") if os.path.isdir(config) else config
            if not os.path.isfile(path):
                raise MissingFileError(f"no diffusers VAE config at {path} (expected a config.json as in the "
                                        "Hugging Face repository, e.g. stabilityai/sd-vae-ft-ema/config.json)")
            with open(path, "r", encoding="utf-8") as f:
                config = json.load(f)
        return cls(**{k: v for k, v in config.items() if k in CONFIG_KEYS})

    # encode/decode are plain methods over the cells: in graph mode each cell compiles on its own.
    def encode(self, x):
        """(B, C, H, W) -> posterior (mean, std), each (B, latent, H/f, W/f), unscaled."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return posterior_mean_std(moments)

    def decode(self, z):
        """(B, latent, h, w) unscaled latent -> (B, C, h*f, w*f)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def sample_gaussian(mean, std):
    """mean + std * N(0, 1): a draw from a diagonal Gaussian posterior."""
    return mean + std * ops.randn(mean.shape, dtype=mean.dtype)
