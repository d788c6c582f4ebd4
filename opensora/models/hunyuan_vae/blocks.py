"""The building blocks of the Hunyuan causal 3D VAE (upstream ``unet_causal_3d_blocks.py`` and ``vae.py``):
causal convolutions, resnets, causal down/up sampling, the mid block with frame-causal attention, and the
encoder and decoder stacks. Parameter names are upstream's (``down_blocks.0.resnets.1.conv1.conv.weight``,
``mid_block.attentions.0.to_q.weight``, ...).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops

from ..layers.nn import Conv3d, GroupNorm, silu
from ..vae.autoencoder_kl import AttentionBlock


def sampling_plan(num_blocks: int, time_compression_ratio: int = 4, spatial_compression_ratio: int = 8):
    """Per block: (halves time, halves space). Upstream's rule, the same for the encoder's down blocks and
    the decoder's up blocks (in their order): with 4x time compression, space in the first
    log2(spatial ratio) blocks, time in the two blocks before the last."""
    spatial_layers = int(math.log2(spatial_compression_ratio))
    time_layers = int(math.log2(time_compression_ratio))
    plan = []
    for i in range(num_blocks):
        if time_compression_ratio == 4:
            space = i < spatial_layers
            time = num_blocks - 1 - time_layers <= i < num_blocks - 1
        elif time_compression_ratio == 8:
            space = time = i < spatial_layers
        else:
            raise ValueError(f"time_compression_ratio must be 4 or 8 (upstream's), got {time_compression_ratio}")
        plan.append((bool(time), bool(space)))
    return plan


def _edge_pad(x, axis: int, before: int, after: int):
    """Replicate padding along one axis by concatenating copies of the edge slices (``ops.pad``'s replicate
    mode segfaults in MindSpore's CPU graph mode)."""
    if not before and not after:
        return x
    size = x.shape[axis]
    first = ops.narrow(x, axis, 0, 1)
    last = ops.narrow(x, axis, size - 1, 1)
    return ops.cat([first] * before + [x] + [last] * after, axis)


class CausalConv3d(nn.Cell):
    """Replicate padding of (k-1) frames in front of T (none behind) and k//2 on each side of H and W, then
    a plain 3D convolution ``self.conv`` (so an output frame never depends on later frames)."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int, stride=1, bias: bool = True, dtype=ms.float32):
        super().__init__()
        self.time_pad, self.space_pad = kernel_size - 1, kernel_size // 2
        self.conv = Conv3d(chan_in, chan_out, kernel_size, stride=stride, bias=bias, dtype=dtype)

    def construct(self, x):
        x = _edge_pad(x, 2, self.time_pad, 0)
        x = _edge_pad(x, 3, self.space_pad, self.space_pad)
        x = _edge_pad(x, 4, self.space_pad, self.space_pad)
        return self.conv(x)


class ResnetBlockCausal3D(nn.Cell):
    """norm-SiLU-conv twice plus the input (through a 1x1x1 causal conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, dtype=dtype)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, dtype=dtype)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps, dtype=dtype)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, dtype=dtype)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1, dtype=dtype) \
            if in_channels != out_channels else None

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class UNetMidBlockCausal3D(nn.Cell):
    """resnet, attention over all T*H*W positions where a position sees its own and earlier frames
    (upstream's ``prepare_causal_attention_mask``), resnet."""

    def __init__(self, channels: int, groups: int, add_attention: bool = True, dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlockCausal3D(channels, channels, groups, dtype=dtype) for _ in range(2)])
        self.attentions = nn.CellList([AttentionBlock(channels, groups, dtype=dtype)]) if add_attention else None

    def construct(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            t, h, w = x.shape[2], x.shape[3], x.shape[4]
            mask = None
            if t > 1:  # one frame: every position sees every other
                frame = ops.arange(0, t * h * w, dtype=ms.int32) // (h * w)
                mask = frame.reshape(1, -1) <= frame.reshape(-1, 1)  # key frame <= query frame
            x = self.attentions[0](x, mask)
        return self.resnets[1](x)


class DownsampleCausal3D(nn.Cell):
    def __init__(self, channels: int, stride, dtype=ms.float32):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride, dtype=dtype)

    def construct(self, x):
        return self.conv(x)


def _repeat_axis(x, axis: int, factor: int):
    """Nearest upsampling by an integer factor along one axis (each slice repeated ``factor`` times)."""
    if factor == 1:
        return x
    shape = x.shape
    inner = shape[:axis + 1] + (1,) + shape[axis + 1:]
    tiled = shape[:axis + 1] + (factor,) + shape[axis + 1:]
    return ops.broadcast_to(x.reshape(inner), tiled).reshape(shape[:axis] + (shape[axis] * factor,) + shape[axis + 1:])


class UpsampleCausal3D(nn.Cell):
    """Nearest upsampling, the first frame in H and W only and the other frames in T, H and W (T -> 1 + 2(T-1)),
    then a causal 3x3x3 convolution."""

    def __init__(self, channels: int, factor, dtype=ms.float32):
        super().__init__()
        self.factor = tuple(factor)
        self.conv = CausalConv3d(channels, channels, 3, dtype=dtype)

    def construct(self, x):
        x = _repeat_axis(_repeat_axis(x, 3, self.factor[1]), 4, self.factor[2])
        t = x.shape[2]
        if t > 1 and self.factor[0] > 1:
            x = ops.cat((x[:, :, :1], _repeat_axis(x[:, :, 1:], 2, self.factor[0])), axis=2)
        return self.conv(x)


class DownEncoderBlockCausal3D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, stride=None,
                 dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups,
                                                        dtype=dtype) for i in range(num_layers)])
        self.downsamplers = nn.CellList([DownsampleCausal3D(out_channels, stride, dtype=dtype)]) if stride else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlockCausal3D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, factor=None,
                 dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups,
                                                        dtype=dtype) for i in range(num_layers)])
        self.upsamplers = nn.CellList([UpsampleCausal3D(out_channels, factor, dtype=dtype)]) if factor else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def _factors(time: bool, space: bool):
    """(T, H, W) stride / upsampling factor of a block of the plan; None when it does not resample."""
    if not (time or space):
        return None
    return (2 if time else 1, 2 if space else 1, 2 if space else 1)


class EncoderCausal3D(nn.Cell):
    """Video (B, C, T, H, W) -> posterior moments (B, 2*latent, t, h, w) before ``quant_conv``."""

    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups, plan,
                 add_attention=True, dtype=ms.float32):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], 3, dtype=dtype)
        blocks, prev = [], block_out_channels[0]
        for channels, (time, space) in zip(block_out_channels, plan):
            blocks.append(DownEncoderBlockCausal3D(prev, channels, layers_per_block, groups, _factors(time, space),
                                                   dtype=dtype))
            prev = channels
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = UNetMidBlockCausal3D(prev, groups, add_attention, dtype=dtype)
        self.conv_norm_out = GroupNorm(groups, prev, eps=1e-6, dtype=dtype)
        self.conv_out = CausalConv3d(prev, 2 * latent_channels, 3, dtype=dtype)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class DecoderCausal3D(nn.Cell):
    """Latent (B, latent, t, h, w) after ``post_quant_conv`` -> video (B, C, T, H, W); ``layers_per_block + 1``
    resnets per up block."""

    def __init__(self, latent_channels, out_channels, block_out_channels, layers_per_block, groups, plan,
                 add_attention=True, dtype=ms.float32):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(latent_channels, reversed_channels[0], 3, dtype=dtype)
        self.mid_block = UNetMidBlockCausal3D(reversed_channels[0], groups, add_attention, dtype=dtype)
        blocks, prev = [], reversed_channels[0]
        for channels, (time, space) in zip(reversed_channels, plan):
            blocks.append(UpDecoderBlockCausal3D(prev, channels, layers_per_block + 1, groups, _factors(time, space),
                                                 dtype=dtype))
            prev = channels
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[0], eps=1e-6, dtype=dtype)
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, 3, dtype=dtype)

    def construct(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))
