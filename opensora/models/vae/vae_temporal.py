"""The causal temporal VAE of Open-Sora 1.2 (upstream ``opensora/models/vae/vae_temporal.py``).

It compresses the 4-channel latents of the spatial (SDXL) VAE 4x in time. Every 3D convolution is
causal in time: the input is padded with zeros *before* the first frame only, so an output frame
never sees later frames. Parameter names are upstream's (``encoder.conv_in.conv.weight``,
``decoder.conv_blocks.2.conv.bias``, ...), so the official ``model.safetensors`` loads unchanged.
"""
from __future__ import annotations

from mindspore import nn, ops

from ..layers import forms
from ..layers.nn import Conv3d, GroupNorm, silu
from ..registry import VAES
from .geometry import ChunkedGeometry
from .autoencoder_kl import posterior_mean_std


def _triple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


class CausalConv3d(nn.Cell):
    """A 3D convolution padded ``dilation*(kt-1) + (1-stride)`` zero frames in front (none behind) and
    symmetrically in space; the convolution itself is ``self.conv`` (upstream's parameter names)."""

    def __init__(self, chan_in, chan_out, kernel_size, pad_mode="constant", strides=None, stride=1, dilation=1,
                 bias=True, padding=0):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"CausalConv3d needs odd spatial kernel sizes, got {kernel_size}")
        if pad_mode != "constant":
            raise ValueError(f"CausalConv3d: only pad_mode='constant' (zeros, upstream's default) is implemented")
        t_stride = strides[0] if strides is not None else stride
        self.time_pad = dilation * (kt - 1) + (1 - t_stride)
        # spatial padding goes into the convolution; upstream's padding="same" is only used with 1x1x1
        self.conv = Conv3d(chan_in, chan_out, (kt, kh, kw), stride=tuple(strides) if strides is not None else (t_stride, 1, 1),
                           padding=(0, kh // 2, kw // 2), dilation=(dilation, 1, 1), bias=bias)

    def construct(self, x):
        if self.time_pad > 0:
            b, c, _, h, w = x.shape
            x = ops.cat((ops.zeros((b, c, self.time_pad, h, w), x.dtype), x), axis=2)
        return self.conv(x)


class ResBlock(nn.Cell):
    def __init__(self, in_channels, filters, num_groups=32):
        super().__init__()
        self.in_channels, self.filters = in_channels, filters
        self.norm1 = GroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, filters, (3, 3, 3), bias=False)
        self.norm2 = GroupNorm(num_groups, filters)
        self.conv2 = CausalConv3d(filters, filters, (3, 3, 3), bias=False)
        # upstream: use_conv_shortcut=False -> a 1x1x1 projection when the width changes
        self.conv3 = CausalConv3d(in_channels, filters, (1, 1, 1), bias=False) if in_channels != filters else None

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        if self.conv3 is not None:
            x = self.conv3(x)
        return h + x


class _Identity(nn.Cell):
    def construct(self, x):
        return x


def _check_activation(activation_fn):
    if activation_fn != "swish":
        raise ValueError(f"activation_fn {activation_fn!r} is not implemented (upstream's VAE uses 'swish')")


class Encoder(nn.Cell):
    def __init__(self, in_out_channels=4, latent_embed_dim=512, filters=128, num_res_blocks=4,
                 channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True), num_groups=32,
                 activation_fn="swish"):
        super().__init__()
        _check_activation(activation_fn)
        self.num_blocks = len(channel_multipliers)
        self.conv_in = CausalConv3d(in_out_channels, filters, (3, 3, 3), bias=False)
        res_blocks, conv_blocks = [], []
        prev = filters
        for i, mult in enumerate(channel_multipliers):
            width = filters * mult
            items = []
            for _ in range(num_res_blocks):
                items.append(ResBlock(prev, width, num_groups))
                prev = width
            res_blocks.append(nn.CellList(items))
            if i < self.num_blocks - 1:
                if temporal_downsample[i]:
                    conv_blocks.append(CausalConv3d(prev, width, (3, 3, 3), strides=(2, 1, 1)))
                else:
                    conv_blocks.append(_Identity())
                prev = width
        self.block_res_blocks = nn.CellList(res_blocks)
        self.conv_blocks = nn.CellList(conv_blocks)
        self.res_blocks = nn.CellList([ResBlock(prev, prev, num_groups) for _ in range(num_res_blocks)])
        self.norm1 = GroupNorm(num_groups, prev)
        self.conv2 = CausalConv3d(prev, latent_embed_dim, (1, 1, 1))

    def construct(self, x):
        x = self.conv_in(x)
        for i in range(self.num_blocks):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i < self.num_blocks - 1:
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(silu(self.norm1(x)))


class Decoder(nn.Cell):
    def __init__(self, in_out_channels=4, latent_embed_dim=512, filters=128, num_res_blocks=4,
                 channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True), num_groups=32,
                 activation_fn="swish"):
        super().__init__()
        _check_activation(activation_fn)
        self.num_blocks = len(channel_multipliers)
        width = filters * channel_multipliers[-1]
        self.conv1 = CausalConv3d(latent_embed_dim, width, (3, 3, 3), bias=True)
        self.res_blocks = nn.CellList([ResBlock(width, width, num_groups) for _ in range(num_res_blocks)])
        res_blocks, conv_blocks = [None] * self.num_blocks, [None] * (self.num_blocks - 1)
        prev = width
        for i in reversed(range(self.num_blocks)):
            width = filters * channel_multipliers[i]
            items = []
            for _ in range(num_res_blocks):
                items.append(ResBlock(prev, width, num_groups))
                prev = width
            res_blocks[i] = nn.CellList(items)
            if i > 0:
                t_stride = 2 if temporal_downsample[i - 1] else 1
                # depth-to-time: prev -> prev * t_stride channels, then rearranged into t_stride frames
                conv_blocks[i - 1] = CausalConv3d(prev, prev * t_stride, (3, 3, 3)) if t_stride > 1 else _Identity()
        self.t_strides = tuple(2 if temporal_downsample[i] else 1 for i in range(self.num_blocks - 1))
        self.block_res_blocks = nn.CellList(res_blocks)
        self.conv_blocks = nn.CellList(conv_blocks)
        self.norm1 = GroupNorm(num_groups, prev)
        self.conv_out = CausalConv3d(width, in_out_channels, 3)

    def construct(self, x):
        x = self.conv1(x)
        for block in self.res_blocks:
            x = block(x)
        for i in range(self.num_blocks - 1, -1, -1):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                ts = self.t_strides[i - 1]
                if ts > 1:
                    # "B (C ts) T H W -> B C (T ts) H W" (spatial stride is 1 in this VAE)
                    b, c, t, h, w = x.shape
                    x = forms.swap_adjacent_axes(x.reshape(b, c // ts, ts, t, h * w), 2)
                    x = x.reshape(b, c // ts, t * ts, h, w)
        return self.conv_out(silu(self.norm1(x)))


def time_padding(num_frames: int, factor: int) -> int:
    """Frames added in front so that ``num_frames`` becomes a multiple of ``factor``."""
    return 0 if num_frames % factor == 0 else factor - num_frames % factor


def _temporal_geometry(in_out_channels=4, temporal_downsample=(True, True, False), **_) -> ChunkedGeometry:
    """A temporal VAE alone: no spatial compression, the whole clip front-padded to a multiple of the
    time factor (its channels are ``in_out_channels``, as upstream's ``out_channels``)."""
    return ChunkedGeometry(channels=in_out_channels, spatial_factor=1,
                           time_factor=2 ** sum(bool(t) for t in temporal_downsample), micro_frame_size=None)


class VAE_Temporal(nn.Cell):  # noqa: N801 (upstream's name)
    def __init__(self, in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=128, num_res_blocks=4,
                 channel_multipliers=(1, 2, 2, 4), temporal_downsample=(True, True, False), num_groups=32,
                 activation_fn="swish"):
        super().__init__()
        self.geometry = _temporal_geometry(in_out_channels, temporal_downsample)
        self.time_downsample_factor = self.geometry.time_factor
        self.patch_size = (self.time_downsample_factor, 1, 1)
        self.out_channels = in_out_channels
        common = dict(in_out_channels=in_out_channels, filters=filters, num_res_blocks=num_res_blocks,
                      channel_multipliers=tuple(channel_multipliers), temporal_downsample=tuple(temporal_downsample),
                      num_groups=num_groups, activation_fn=activation_fn)
        self.encoder = Encoder(latent_embed_dim=latent_embed_dim * 2, **common)
        self.quant_conv = CausalConv3d(2 * latent_embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = CausalConv3d(embed_dim, latent_embed_dim, 1)
        self.decoder = Decoder(latent_embed_dim=latent_embed_dim, **common)

    def get_latent_size(self, input_size):
        return self.geometry.latent_size(input_size)

    def encode(self, x):
        """(B, C, T, H, W) -> posterior (mean, std) of (B, embed_dim, ceil(T/4), H, W). Upstream pads
        the missing frames with zeros in front before encoding."""
        pad = time_padding(x.shape[2], self.time_downsample_factor)
        if pad:
            b, c, _, h, w = x.shape
            x = ops.cat((ops.zeros((b, c, pad, h, w), x.dtype), x), axis=2)
        moments = self.quant_conv(self.encoder(x))
        return posterior_mean_std(moments)

    def decode(self, z, num_frames=None):
        """(B, embed_dim, t, H, W) -> (B, C, num_frames, H, W): the decoder gives 4t frames and the
        first ``4t - num_frames`` (the encoder's front padding) are dropped."""
        if num_frames is None:
            num_frames = z.shape[2] * self.time_downsample_factor
        pad = time_padding(num_frames, self.time_downsample_factor)
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, pad:]

    def construct(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean, num_frames=x.shape[2])


def _temporal_sd_geometry(**_) -> ChunkedGeometry:
    return _temporal_geometry(4, (False, True, True))


@VAES.register("VAE_Temporal_SD", geometry=_temporal_sd_geometry)
def VAE_Temporal_SD(from_pretrained=None, **kwargs):  # noqa: N802 (upstream's name)
    """The temporal VAE of Open-Sora 1.2 (filters 128, multipliers 1,2,2,4, time 4x)."""
    from .loading import load_vae_weights

    model = VAE_Temporal(in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=128, num_res_blocks=4,
                         channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True), **kwargs)
    if from_pretrained:
        load_vae_weights(model, from_pretrained)
    return model


VAES.register("VAE_Temporal", geometry=_temporal_geometry)(VAE_Temporal)
