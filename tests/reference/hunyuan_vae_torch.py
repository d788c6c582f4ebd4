"""PyTorch reference of Open-Sora 2.0's Hunyuan causal 3D VAE (hpcaitech/Open-Sora ``main``:
``opensora/models/hunyuan_vae/{autoencoder_kl_causal_3d,vae,unet_causal_3d_blocks}.py``), written for the
parity tests from upstream's code paths, quirks included, with the official parameter names (the keys of
``hunyuan_vae.safetensors``). Plain torch: the mid-block attention is written out (diffusers'
``Attention`` as upstream configures it: one head, group norm, residual, a frame-causal additive mask).

Upstream's behaviour reproduced here (and in the MindSpore port):
- ``CausalConv3d``: replicate padding, (k//2) on H and W, (k-1) frames in front of T, none behind.
- Down/up sampling: stride (2, 2, 2) or (1, 2, 2) causal convolutions; nearest upsampling of the first frame
  in H and W only, of the other frames in T, H and W (T -> 2T - 1).
- Encoder: ``layers_per_block`` resnets per block, decoder ``layers_per_block + 1``; which blocks resample in
  time and space follows the compression ratios (:func:`sampling_plan`).
- ``DiagonalGaussianDistribution``: log-variance clamped to [-30, 20]; a sample is mean + std * noise.
- ``encode`` returns ``scale_factor * (z - shift_factor)``, ``decode`` takes ``z / scale_factor + shift_factor``.
- Tiling exactly as upstream's ``spatial_tiled_encode/decode`` and ``temporal_tiled_encode/decode``: tile
  starts every ``overlap`` along the axis (edge tiles smaller), each tile blended **in place** with its
  already-blended upper and left neighbours (so a tile's corner sees blended values), then cropped to
  ``row_limit``; a temporal tile is one frame (latent) longer and drops its first output frame when not first.
  Upstream's tiling is only size-preserving for some tile sizes (``sample_size`` a multiple of 32 at
  overlap 0.25); other sizes give other output sizes, in upstream and here alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sampling_plan(num_blocks: int, time_compression_ratio: int, spatial_compression_ratio: int):
    """Per block (resample in time, resample in space), upstream's rule for both encoder and decoder."""
    spatial_layers = int(math.log2(spatial_compression_ratio))
    time_layers = int(math.log2(time_compression_ratio))
    plan = []
    for i in range(num_blocks):
        final = i == num_blocks - 1
        if time_compression_ratio == 4:
            space, time = i < spatial_layers, i >= num_blocks - 1 - time_layers and not final
        elif time_compression_ratio == 8:
            space = time = i < spatial_layers
        else:
            raise ValueError(f"Unsupported time_compression_ratio: {time_compression_ratio}.")
        plan.append((bool(time), bool(space)))
    return plan


class CausalConv3d(nn.Module):
    def __init__(self, chan_in, chan_out, kernel_size: int, stride=1, bias=True):
        super().__init__()
        k = kernel_size
        self.time_causal_padding = (k // 2, k // 2, k // 2, k // 2, k - 1, 0)  # W, H, T
        self.conv = nn.Conv3d(chan_in, chan_out, kernel_size, stride=stride, bias=bias)

    def forward(self, x):
        return self.conv(F.pad(x, self.time_causal_padding, mode="replicate"))


class ResnetBlockCausal3D(nn.Module):
    def __init__(self, in_channels, out_channels, groups, eps=1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout 0
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # / output_scale_factor (1)


def causal_attention_mask(num_frames: int, frame_size: int, dtype=torch.float32):
    """``prepare_causal_attention_mask``: 0 where the key's frame is not after the query's, else -inf."""
    frame = torch.arange(num_frames * frame_size) // frame_size
    mask = torch.full((len(frame), len(frame)), float("-inf"), dtype=dtype)
    return mask.masked_fill(frame[None, :] <= frame[:, None], 0.0)


class Attention(nn.Module):
    """diffusers ``Attention(C, heads=1, dim_head=C, norm_num_groups=g, residual_connection=True, bias=True,
    upcast_softmax=True, eps=1e-6)`` with its default processor, on (B, S, C) with an additive mask."""

    def __init__(self, channels, groups, eps=1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x, mask):
        residual = x
        h = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1]) + mask
        out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.to_out[0](out) + residual  # / rescale_output_factor (1)


class UNetMidBlockCausal3D(nn.Module):
    def __init__(self, channels, groups, add_attention=True):
        super().__init__()
        self.add_attention = add_attention
        self.resnets = nn.ModuleList([ResnetBlockCausal3D(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if add_attention else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.add_attention:
            b, c, t, h, w = x.shape
            mask = causal_attention_mask(t, h * w, x.dtype)[None].expand(b, -1, -1)
            seq = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)  # b c f h w -> b (f h w) c
            x = self.attentions[0](seq, mask).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return self.resnets[1](x)


class DownsampleCausal3D(nn.Module):
    def __init__(self, channels, stride):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride)

    def forward(self, x):
        return self.conv(x)


class UpsampleCausal3D(nn.Module):
    def __init__(self, channels, factor):
        super().__init__()
        self.factor = tuple(factor)
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x):
        t = x.shape[2]
        first, other = x.split((1, t - 1), dim=2)
        first = F.interpolate(first.squeeze(2), scale_factor=self.factor[1:], mode="nearest").unsqueeze(2)
        if t > 1:
            other = F.interpolate(other, scale_factor=self.factor, mode="nearest")
            x = torch.cat((first, other), dim=2)
        else:
            x = first
        return self.conv(x)


class DownEncoderBlockCausal3D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, stride):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels,
                                                          groups) for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([DownsampleCausal3D(out_channels, stride)]) if stride else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlockCausal3D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, factor):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels,
                                                          groups) for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([UpsampleCausal3D(out_channels, factor)]) if factor else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class EncoderCausal3D(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, plan,
                 add_attention=True):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], 3)
        blocks, prev = [], block_out_channels[0]
        for channels, (time, space) in zip(block_out_channels, plan):
            stride = (2 if time else 1, 2 if space else 1, 2 if space else 1) if (time or space) else None
            blocks.append(DownEncoderBlockCausal3D(prev, channels, layers_per_block, groups, stride))
            prev = channels
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlockCausal3D(prev, groups, add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, prev, eps=1e-6)
        self.conv_out = CausalConv3d(prev, 2 * out_channels, 3)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DecoderCausal3D(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, plan,
                 add_attention=True):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(in_channels, reversed_channels[0], 3)
        self.mid_block = UNetMidBlockCausal3D(reversed_channels[0], groups, add_attention)
        blocks, prev = [], reversed_channels[0]
        for channels, (time, space) in zip(reversed_channels, plan):
            factor = (2 if time else 1, 2 if space else 1, 2 if space else 1) if (time or space) else None
            blocks.append(UpDecoderBlockCausal3D(prev, channels, layers_per_block + 1, groups, factor))
            prev = channels
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[0], eps=1e-6)
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, 3)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def posterior(moments):
    """(mean, std) of ``DiagonalGaussianDistribution(moments)``."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))


def blend(a, b, extent: int, dim: int):
    """Upstream's ``blend_v`` (dim -2) / ``blend_h`` (dim -1) / ``blend_t`` (dim -3): the first ``extent`` slices
    of ``b`` fade from ``a``'s last ones to ``b``'s own, written into ``b`` in place (returned too)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for y in range(extent):
        b.select(dim, y).copy_(a.select(dim, y - extent) * (1 - y / extent) + b.select(dim, y) * (y / extent))
    return b


def stitch_2d(rows, extent: int, limit: int):
    """Blend each tile with its upper and left neighbours (in place, in upstream's order) and join the
    tiles cropped to ``limit`` in H and W."""
    out_rows = []
    for i, row in enumerate(rows):
        pieces = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = blend(rows[i - 1][j], tile, extent, -2)
            if j > 0:
                tile = blend(row[j - 1], tile, extent, -1)
            pieces.append(tile[:, :, :, :limit, :limit])
        out_rows.append(torch.cat(pieces, dim=-1))
    return torch.cat(out_rows, dim=-2)


def stitch_t(tiles, extent: int, limit: int):
    out = []
    for i, tile in enumerate(tiles):
        if i > 0:
            tile = blend(tiles[i - 1], tile, extent, -3)
            out.append(tile[:, :, :limit])
        else:
            out.append(tile[:, :, :limit + 1])
    return torch.cat(out, dim=2)


class AutoencoderKLCausal3D(nn.Module):
    """Upstream's ``AutoencoderKLCausal3D(AutoEncoder3DConfig(...))`` with the same keywords."""

    def __init__(self, in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
                 scale_factor=0.476986, shift_factor=0.0, time_compression_ratio=4, spatial_compression_ratio=8,
                 mid_block_add_attention=True, block_out_channels=(128, 256, 512, 512), sample_size=256,
                 sample_tsize=64, use_spatial_tiling=False, use_temporal_tiling=False, tile_overlap_factor=0.25,
                 act_fn="silu"):
        super().__init__()
        assert act_fn == "silu"
        plan = sampling_plan(len(block_out_channels), time_compression_ratio, spatial_compression_ratio)
        self.encoder = EncoderCausal3D(in_channels, latent_channels, block_out_channels, layers_per_block,
                                       norm_num_groups, plan, mid_block_add_attention)
        self.decoder = DecoderCausal3D(latent_channels, out_channels, block_out_channels, layers_per_block,
                                       norm_num_groups, plan, mid_block_add_attention)
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, 1)
        self.scale_factor, self.shift_factor = scale_factor, shift_factor
        self.use_spatial_tiling, self.use_temporal_tiling = use_spatial_tiling, use_temporal_tiling
        self.tile_sample_min_tsize = sample_tsize
        self.tile_latent_min_tsize = sample_tsize // time_compression_ratio
        self.tile_sample_min_size = sample_size
        self.tile_latent_min_size = int(sample_size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = tile_overlap_factor

    # ------------------------------------------------------------------ encode
    def moments(self, x):
        if self.use_temporal_tiling and x.shape[2] > self.tile_sample_min_tsize:
            return self.temporal_tiled_encode(x)
        if self.use_spatial_tiling and max(x.shape[-1], x.shape[-2]) > self.tile_sample_min_size:
            return self.spatial_tiled_encode(x)
        return self.quant_conv(self.encoder(x))

    def encode(self, x, sample_posterior=True, noise=None):
        """``noise``: the standard normal draw of the posterior sample (upstream draws it with ``randn_tensor``)."""
        mean, std = posterior(self.moments(x))
        z = mean + std * (noise if noise is not None else torch.randn_like(mean)) if sample_posterior else mean
        return self.scale_factor * (z - self.shift_factor)

    def spatial_tiled_encode(self, x):
        overlap = int(self.tile_sample_min_size * (1 - self.tile_overlap_factor))
        extent = int(self.tile_latent_min_size * self.tile_overlap_factor)
        limit = self.tile_latent_min_size - extent
        size = self.tile_sample_min_size
        rows = [[self.quant_conv(self.encoder(x[:, :, :, i:i + size, j:j + size]))
                 for j in range(0, x.shape[-1], overlap)] for i in range(0, x.shape[-2], overlap)]
        return stitch_2d(rows, extent, limit)

    def temporal_tiled_encode(self, x):
        overlap = int(self.tile_sample_min_tsize * (1 - self.tile_overlap_factor))
        extent = int(self.tile_latent_min_tsize * self.tile_overlap_factor)
        limit = self.tile_latent_min_tsize - extent
        tiles = []
        for i in range(0, x.shape[2], overlap):
            tile = x[:, :, i:i + self.tile_sample_min_tsize + 1]
            if self.use_spatial_tiling and max(tile.shape[-1], tile.shape[-2]) > self.tile_sample_min_size:
                tile = self.spatial_tiled_encode(tile)
            else:
                tile = self.quant_conv(self.encoder(tile))
            tiles.append(tile[:, :, 1:] if i > 0 else tile)
        return stitch_t(tiles, extent, limit)

    # ------------------------------------------------------------------ decode
    def decode(self, z):
        z = z / self.scale_factor + self.shift_factor
        if self.use_temporal_tiling and z.shape[2] > self.tile_latent_min_tsize:
            return self.temporal_tiled_decode(z)
        if self.use_spatial_tiling and max(z.shape[-1], z.shape[-2]) > self.tile_latent_min_size:
            return self.spatial_tiled_decode(z)
        return self.decoder(self.post_quant_conv(z))

    def spatial_tiled_decode(self, z):
        overlap = int(self.tile_latent_min_size * (1 - self.tile_overlap_factor))
        extent = int(self.tile_sample_min_size * self.tile_overlap_factor)
        limit = self.tile_sample_min_size - extent
        size = self.tile_latent_min_size
        rows = [[self.decoder(self.post_quant_conv(z[:, :, :, i:i + size, j:j + size]))
                 for j in range(0, z.shape[-1], overlap)] for i in range(0, z.shape[-2], overlap)]
        return stitch_2d(rows, extent, limit)

    def temporal_tiled_decode(self, z):
        overlap = int(self.tile_latent_min_tsize * (1 - self.tile_overlap_factor))
        extent = int(self.tile_sample_min_tsize * self.tile_overlap_factor)
        limit = self.tile_sample_min_tsize - extent
        tiles = []
        for i in range(0, z.shape[2], overlap):
            tile = z[:, :, i:i + self.tile_latent_min_tsize + 1]
            if self.use_spatial_tiling and max(tile.shape[-1], tile.shape[-2]) > self.tile_latent_min_size:
                decoded = self.spatial_tiled_decode(tile)
            else:
                decoded = self.decoder(self.post_quant_conv(tile))
            tiles.append(decoded[:, :, 1:] if i > 0 else decoded)
        return stitch_t(tiles, extent, limit)
