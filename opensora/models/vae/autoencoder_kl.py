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

import mindspore as ms
from mindspore import nn, ops

from ..layers.attention import attention
from ..layers.nn import Conv2d, GroupNorm, Linear, silu

SUPPORTED_DOWN = ("DownEncoderBlock2D",)
SUPPORTED_UP = ("UpDecoderBlock2D",)
# diffusers config keys that describe the architecture (the rest, e.g. "_class_name", is metadata)
CONFIG_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
               "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
               "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv",
               "use_post_quant_conv", "mid_block_add_attention")


class ResnetBlock2D(nn.Cell):
    """diffusers ``ResnetBlock2D`` without time embedding: norm-SiLU-conv twice plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
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
    """``UNetMidBlock2D``: resnet, (attention, resnet)."""

    def __init__(self, channels: int, groups: int, add_attention: bool = True):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(channels, channels, groups), ResnetBlock2D(channels, channels, groups)])
        self.attentions = nn.CellList([AttentionBlock(channels, groups)]) if add_attention else None

    def construct(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Cell):
    """``Downsample2D`` with ``padding=0``: pad right/bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def construct(self, x):
        return self.conv(ops.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Cell):
    """``Upsample2D``: nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def construct(self, x):
        b, c, h, w = x.shape
        # nearest x2 as a broadcast (exact, and independent of interpolate's kernel support)
        x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2)).reshape(b, c, h * 2, w * 2)
        return self.conv(x)


class EncoderBlock(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
                                    for i in range(num_layers)])
        self.downsamplers = nn.CellList([Downsample(out_channels)]) if add_downsample else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class DecoderBlock(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
                                    for i in range(num_layers)])
        self.upsamplers = nn.CellList([Upsample(out_channels)]) if add_upsample else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Cell):
    """Image (B, C, H, W) -> posterior moments (B, 2*latent, H/f, W/f), before ``quant_conv``."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups,
                 mid_block_add_attention=True):
        super().__init__()
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        out_ch = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            in_ch, out_ch = out_ch, channels
            blocks.append(EncoderBlock(in_ch, out_ch, layers_per_block, groups, i < len(block_out_channels) - 1))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = MidBlock(block_out_channels[-1], groups, mid_block_add_attention)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[-1], eps=1e-6)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    """Latent (B, latent, h, w) -> image (B, C, h*f, w*f), after ``post_quant_conv``."""

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, groups,
                 mid_block_add_attention=True):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = Conv2d(latent_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = MidBlock(reversed_channels[0], groups, mid_block_add_attention)
        blocks = []
        out_ch = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            in_ch, out_ch = out_ch, channels
            blocks.append(DecoderBlock(in_ch, out_ch, layers_per_block + 1, groups, i < len(reversed_channels) - 1))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[0], eps=1e-6)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

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
                raise FileNotFoundError(f"no diffusers VAE config at {path} (expected a config.json as in the "
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


def cast_to(net: nn.Cell, dtype) -> nn.Cell:
    """Cast every parameter of ``net`` to ``dtype`` (norms still compute in float32)."""
    for p in net.get_parameters():
        if p.dtype != dtype:
            p.set_data(p.astype(dtype))
    return net


