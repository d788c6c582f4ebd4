"""The building blocks of the Hunyuan causal 3D VAE (upstream ``unet_causal_3d_blocks.py`` and ``vae.py``):
causal convolutions, causal down/up sampling, and which blocks resample. The encoder and decoder stacks
(resnets, resnet stages, the mid block with its frame-causal attention) are the image VAE's
(``vae/autoencoder_kl.py``) built with these: upstream's are diffusers' with ``Conv2d`` replaced.
Parameter names are upstream's (``down_blocks.0.resnets.1.conv1.conv.weight``,
``mid_block.attentions.0.to_q.weight``, ...).
"""
from __future__ import annotations

import math
from functools import partial

import mindspore as ms
from mindspore import nn, ops

from ..layers.nn import Conv3d
from ..vae.autoencoder_kl import Decoder, Encoder


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


def _factors(time: bool, space: bool):
    """(T, H, W) stride / upsampling factor of a block of the plan; None when it does not resample."""
    if not (time or space):
        return None
    return (2 if time else 1, 2 if space else 1, 2 if space else 1)


def causal_encoder(in_channels, latent_channels, block_out_channels, layers_per_block, groups, plan,
                   add_attention=True, dtype=ms.float32) -> Encoder:
    """Upstream's ``EncoderCausal3D``: video (B, C, T, H, W) -> posterior moments (B, 2*latent, t, h, w) before
    ``quant_conv``; ``layers_per_block`` resnets per down block, then a causal strided conv where the plan
    resamples."""
    strides = [_factors(*step) for step in plan]
    downsamplers = [None if s is None else partial(DownsampleCausal3D, c, s, dtype=dtype)
                    for c, s in zip(block_out_channels, strides)]
    return Encoder(in_channels, latent_channels, block_out_channels, layers_per_block, groups, add_attention,
                   conv=CausalConv3d, downsamplers=downsamplers, frame_causal=True, dtype=dtype)


def causal_decoder(latent_channels, out_channels, block_out_channels, layers_per_block, groups, plan,
                   add_attention=True, dtype=ms.float32) -> Decoder:
    """Upstream's ``DecoderCausal3D``: latent (B, latent, t, h, w) after ``post_quant_conv`` -> video;
    ``layers_per_block + 1`` resnets per up block, then a causal upsampling where the plan resamples."""
    factors = [_factors(*step) for step in plan]
    upsamplers = [None if f is None else partial(UpsampleCausal3D, c, f, dtype=dtype)
                  for c, f in zip(reversed(block_out_channels), factors)]
    return Decoder(latent_channels, out_channels, block_out_channels, layers_per_block, groups, add_attention,
                   conv=CausalConv3d, upsamplers=upsamplers, frame_causal=True, dtype=dtype)
