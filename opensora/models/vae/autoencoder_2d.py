"""The Flux image autoencoder (upstream ``opensora/models/vae/autoencoder_2d.py``, registry ``"autoencoder_2d"``):
Open-Sora 2.0 decodes Flux-dev's first frame of text-to-image-to-video with it (``flux1-dev-ae.safetensors``).

An SD-style 2D KL autoencoder (ch 128, ch_mult [1, 2, 4, 4], 2 resnet blocks per level, 16 latent channels,
mid-block single-head attention, no quant convolutions) with **upstream's parameter names**, the LDM layout of
the official file: ``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
``encoder.down.{i}.downsample.conv``, ``{en,de}coder.mid.{block_1,attn_1,block_2}`` (``attn_1.{norm,q,k,v,
proj_out}``: the projections are 1x1 convolutions, weights (C, C, 1, 1)), ``decoder.up.{i}.block.{j}``,
``decoder.up.{i}.upsample.conv``, ``{en,de}coder.{conv_in,norm_out,conv_out}``. The decoder's ``up.{i}`` is
the level of resolution i, so it runs ``up.{n-1}`` first (upstream builds the list with ``insert(0, ...)``).
The resnet, down- and upsampling cells are the SD VAE's (``autoencoder_kl.py``: same arithmetic, and the same
names but for the resnet's shortcut). GroupNorm has 32 groups, hard-coded upstream: channels must be
multiples of 32.

Latents, as upstream's ``AutoEncoder``: ``encode`` (B, 3, T, H, W) -> ``scale_factor * (z - shift_factor)``
(B, 16, T, H/8, W/8) frame by frame, where z is a *sample* of the posterior (``sample=True``, upstream's
``AutoEncoderConfig`` default) or its mean; ``decode`` (B, 16, T, h, w) -> ``decoder(z / scale_factor +
shift_factor)``. :meth:`AutoEncoder.encode_posterior` gives the scaled posterior's mean and std.
"""
from __future__ import annotations

import os

from mindspore import nn

from ...dtypes import to_ms_dtype
from ..layers.attention import attention
from ..layers.nn import Conv2d, GroupNorm, silu
from ..registry import VAES
from ..layers.precision import cast_parameters
from .autoencoder_kl import Downsample, Upsample, posterior_mean_std, sample_gaussian
from .autoencoder_kl import ResnetBlock as ImageResnetBlock
from .geometry import FrameCountError, FramewiseGeometry
from .loading import load_vae_weights
from .video_vae import _batch_to_frames, _frames_to_batch

NORM_GROUPS = 32  # nn.GroupNorm(num_groups=32, ...) in every upstream block
NORM_EPS = 1e-6


class ResnetBlock(ImageResnetBlock):
    """LDM's ``ResnetBlock``: diffusers' arithmetic, the shortcut named ``nin_shortcut``."""

    shortcut_name = "nin_shortcut"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, NORM_GROUPS, eps=NORM_EPS)


class AttnBlock(nn.Cell):
    """Single-head attention over the H*W positions, 1x1-convolution projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def construct(self, x):
        b, c, h, w = x.shape
        hidden = self.norm(x)
        # "b c h w -> b 1 (h w) c"
        q, k, v = (t.reshape(b, 1, c, h * w).swapaxes(2, 3) for t in (self.q(hidden), self.k(hidden), self.v(hidden)))
        out = attention(q, k, v, None, c ** -0.5).swapaxes(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Mid(nn.Cell):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def construct(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


def _resnets(in_channels: int, out_channels: int, count: int) -> nn.CellList:
    return nn.CellList([ResnetBlock(in_channels if j == 0 else out_channels, out_channels) for j in range(count)])


class DownLevel(nn.Cell):
    """``encoder.down.{i}``: resnet blocks, then (all but the last level) a stride-2 ``downsample``."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool):
        super().__init__()
        self.block = _resnets(in_channels, out_channels, num_blocks)
        self.downsample = Downsample(out_channels) if downsample else None

    def construct(self, x):
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Cell):
    """``decoder.up.{i}``: resnet blocks, then (all but level 0) a nearest x2 ``upsample``."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool):
        super().__init__()
        self.block = _resnets(in_channels, out_channels, num_blocks)
        self.upsample = Upsample(out_channels) if upsample else None

    def construct(self, x):
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Cell):
    """Image (N, C, H, W) -> posterior moments (N, 2 z_channels, H/f, W/f)."""

    def __init__(self, in_channels: int, ch: int, ch_mult, num_res_blocks: int, z_channels: int):
        super().__init__()
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        last = len(ch_mult) - 1
        self.down = nn.CellList([DownLevel(ch * in_mult[i], ch * mult, num_res_blocks, i != last)
                                 for i, mult in enumerate(ch_mult)])
        block_in = ch * ch_mult[-1]
        self.mid = Mid(block_in)
        self.norm_out = GroupNorm(NORM_GROUPS, block_in, eps=NORM_EPS)
        self.conv_out = Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def construct(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Cell):
    """Latent (N, z_channels, h, w) -> image (N, out_ch, h*f, w*f)."""

    def __init__(self, out_ch: int, ch: int, ch_mult, num_res_blocks: int, z_channels: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):  # built from the lowest resolution, as upstream
            levels[i] = UpLevel(block_in, ch * ch_mult[i], num_res_blocks + 1, i != 0)
            block_in = ch * ch_mult[i]
        self.up = nn.CellList(levels)
        self.num_levels = len(ch_mult)
        self.norm_out = GroupNorm(NORM_GROUPS, block_in, eps=NORM_EPS)
        self.conv_out = Conv2d(block_in, out_ch, 3, padding=1)

    def construct(self, z):
        h = self.mid(self.conv_in(z))
        for i in range(self.num_levels - 1, -1, -1):
            h = self.up[i](h)
        return self.conv_out(silu(self.norm_out(h)))


class AutoEncoder(nn.Cell):
    """Upstream's ``AutoEncoder`` for inference; see the module docstring for the latent convention.

    The project's VAE interface: ``encode``, ``decode``, ``out_channels``, ``geometry`` (one latent frame per
    frame, 2^(levels-1) pixels per latent pixel).
    """

    def __init__(self, in_channels: int = 3, ch: int = 128, out_ch: int = 3, ch_mult=(1, 2, 4, 4),
                 num_res_blocks: int = 2, z_channels: int = 16, scale_factor: float = 0.3611,
                 shift_factor: float = 0.1159, sample: bool = True):
        super().__init__()
        bad = [c for c in [ch * m for m in ch_mult] if c % NORM_GROUPS]
        if bad:
            raise ValueError(f"autoencoder_2d: channel counts {bad} (ch x ch_mult) are not multiples of the "
                             f"{NORM_GROUPS} GroupNorm groups upstream hard-codes")
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(out_ch, ch, ch_mult, num_res_blocks, z_channels)
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        self.sample = bool(sample)
        self.out_channels = z_channels
        self.geometry = flux_ae_geometry(z_channels=z_channels, ch_mult=ch_mult)

    def encode_posterior(self, x):
        """(B, C, T, H, W) -> the scaled latent posterior's (mean, std), each (B, z, T, H/f, W/f):
        ``scale * (mean - shift)`` and ``scale * std``."""
        b = x.shape[0]
        mean, std = posterior_mean_std(self.encoder(_frames_to_batch(x)))
        mean = self.scale_factor * (mean - self.shift_factor)
        return _batch_to_frames(mean, b), _batch_to_frames(self.scale_factor * std, b)

    def encode(self, x):
        """(B, C, T, H, W) -> ``scale * (z - shift)``, z a posterior sample (``sample``) or its mean."""
        mean, std = self.encode_posterior(x)
        return sample_gaussian(mean, std) if self.sample else mean

    def decode(self, z, num_frames=None):
        """(B, z, T, h, w) -> (B, out_ch, T, h*f, w*f); ``num_frames``, when given, must be T (the video VAEs'
        common signature)."""
        if num_frames is not None and num_frames != self.geometry.pixel_frames(z.shape[2]):
            raise FrameCountError(f"this VAE decodes one frame per latent frame: {z.shape[2]} latent frames "
                                  f"cannot give {num_frames} frames")
        b = z.shape[0]
        frames = _frames_to_batch(z) / self.scale_factor + self.shift_factor
        return _batch_to_frames(self.decoder(frames), b)

    def get_latent_size(self, input_size):
        return self.geometry.latent_size(input_size)

    @property
    def dtype(self):
        return self.decoder.conv_out.weight.dtype


def flux_ae_geometry(z_channels: int = 16, ch_mult=(1, 2, 4, 4), **_) -> FramewiseGeometry:
    """The latent geometry of an ``autoencoder_2d`` config, without building it."""
    return FramewiseGeometry(channels=int(z_channels), spatial_factor=2 ** (len(ch_mult) - 1))


@VAES.register("autoencoder_2d", geometry=flux_ae_geometry)
def AutoEncoderFlux(from_pretrained: str | None = None, cache_dir=None, resolution: int = 256,  # noqa: N802
                    in_channels: int = 3, ch: int = 128, out_ch: int = 3, ch_mult=(1, 2, 4, 4),
                    num_res_blocks: int = 2, z_channels: int = 16, scale_factor: float = 0.3611,
                    shift_factor: float = 0.1159, device_map=None, torch_dtype="float32", sample: bool = True):
    """Upstream's builder (same keywords). ``from_pretrained``: ``flux1-dev-ae.safetensors`` (or a converted
    ``.ckpt``), loaded with a full key/shape check; None: random weights. ``resolution``, ``cache_dir`` and
    ``device_map`` are accepted and unused (nothing is downloaded; MindSpore places the model on the
    runtime's device). ``sample`` (upstream's ``AutoEncoderConfig.sample``, not a builder keyword there):
    False makes ``encode`` return the posterior mean."""
    dtype = to_ms_dtype(torch_dtype)  # before building: a bad name is one clear error
    model = AutoEncoder(in_channels, ch, out_ch, ch_mult, num_res_blocks, z_channels, scale_factor, shift_factor,
                        sample)
    if from_pretrained:
        if not os.path.exists(from_pretrained):
            raise FileNotFoundError(f"autoencoder_2d: {from_pretrained} not found (the Flux autoencoder is "
                                    "flux1-dev-ae.safetensors in the hpcai-tech/Open-Sora-v2 download)")
        load_vae_weights(model, from_pretrained)
    model.set_train(False)
    return cast_parameters(model, dtype)
