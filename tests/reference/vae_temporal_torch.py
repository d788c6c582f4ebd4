"""The causal temporal VAE of Open-Sora 1.2 in PyTorch, written from upstream's behaviour
(opensora/v1.2: opensora/models/vae/vae_temporal.py, vae.py) on a state dict with upstream's names, and
upstream's 1.2 pipeline around it (diffusers' ``AutoencoderKL`` as the spatial VAE): the reference of the
parity tests and of ``scripts/benchmark.py vae --torch``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ref_causal_conv(x, sd, name, stride_t=1):
    """Zero-pad (kt-1)+(1-stride) frames in front, spatial 'same' padding, then conv3d."""
    w = sd[f"{name}.conv.weight"]
    b = sd.get(f"{name}.conv.bias")
    kt, kh, kw = w.shape[2:]
    time_pad = (kt - 1) + (1 - stride_t)
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, time_pad, 0))
    return F.conv3d(x, w, b, stride=(stride_t, 1, 1))


def ref_resblock(x, sd, name, groups):
    h = F.silu(F.group_norm(x, groups, sd[f"{name}.norm1.weight"], sd[f"{name}.norm1.bias"], 1e-5))
    h = ref_causal_conv(h, sd, f"{name}.conv1")
    h = F.silu(F.group_norm(h, groups, sd[f"{name}.norm2.weight"], sd[f"{name}.norm2.bias"], 1e-5))
    h = ref_causal_conv(h, sd, f"{name}.conv2")
    if f"{name}.conv3.conv.weight" in sd:
        x = ref_causal_conv(x, sd, f"{name}.conv3")
    return x + h


def ref_temporal_encode(x, sd, kw):
    """-> (mean, std) of the temporal posterior; x (B, 4, T, H, W)."""
    g, levels, nres = kw["num_groups"], len(kw["channel_multipliers"]), kw["num_res_blocks"]
    factor = 2 ** sum(kw["temporal_downsample"])
    pad = (factor - x.shape[2] % factor) % factor
    x = F.pad(x, (0, 0, 0, 0, pad, 0))
    h = ref_causal_conv(x, sd, "encoder.conv_in")
    for i in range(levels):
        for j in range(nres):
            h = ref_resblock(h, sd, f"encoder.block_res_blocks.{i}.{j}", g)
        if i < levels - 1 and kw["temporal_downsample"][i]:
            h = ref_causal_conv(h, sd, f"encoder.conv_blocks.{i}", stride_t=2)
    for j in range(nres):
        h = ref_resblock(h, sd, f"encoder.res_blocks.{j}", g)
    h = F.silu(F.group_norm(h, g, sd["encoder.norm1.weight"], sd["encoder.norm1.bias"], 1e-5))
    moments = ref_causal_conv(ref_causal_conv(h, sd, "encoder.conv2"), sd, "quant_conv")
    mean, logvar = moments.chunk(2, dim=1)
    return mean, torch.exp(0.5 * logvar.clamp(-30, 20))


def ref_temporal_decode(z, sd, kw, num_frames):
    g, levels, nres = kw["num_groups"], len(kw["channel_multipliers"]), kw["num_res_blocks"]
    factor = 2 ** sum(kw["temporal_downsample"])
    h = ref_causal_conv(ref_causal_conv(z, sd, "post_quant_conv"), sd, "decoder.conv1")
    for j in range(nres):
        h = ref_resblock(h, sd, f"decoder.res_blocks.{j}", g)
    for i in reversed(range(levels)):
        for j in range(nres):
            h = ref_resblock(h, sd, f"decoder.block_res_blocks.{i}.{j}", g)
        if i > 0 and kw["temporal_downsample"][i - 1]:
            h = ref_causal_conv(h, sd, f"decoder.conv_blocks.{i - 1}")
            b, c, t, hh, ww = h.shape  # "B (C ts) T H W -> B C (T ts) H W"
            h = h.reshape(b, c // 2, 2, t, hh, ww).permute(0, 1, 3, 2, 4, 5).reshape(b, c // 2, t * 2, hh, ww)
    h = F.silu(F.group_norm(h, g, sd["decoder.norm1.weight"], sd["decoder.norm1.bias"], 1e-5))
    out = ref_causal_conv(h, sd, "decoder.conv_out")
    return out[:, :, (factor - num_frames % factor) % factor:]


class VideoVAEPipelineTorch:
    """Upstream's ``VideoAutoencoderPipeline`` (posterior means instead of samples): the SD/SDXL VAE frame by
    frame in micro-batches of ``micro_batch_size`` (0.18215 scaling as upstream), the temporal VAE on chunks
    of ``micro_frame_size`` frames. ``state``: the MindSpore model's parameters by name, as torch tensors."""

    def __init__(self, state, sd_config, temporal_kwargs, micro_frame_size=17, micro_batch_size=None):
        from diffusers import AutoencoderKL

        cfg = {k: v for k, v in sd_config.items() if not k.startswith("_")}
        self.spatial = AutoencoderKL(**cfg).eval()
        prefix = "spatial_vae.module."
        self.spatial.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.temporal = {k[len("temporal_vae."):]: v for k, v in state.items() if k.startswith("temporal_vae.")}
        self.kwargs = temporal_kwargs
        self.shift, self.scale = state["shift"], state["scale"]
        self.mfs, self.mbs = micro_frame_size, micro_batch_size
        self.mzs = (micro_frame_size + (4 - micro_frame_size % 4) % 4) // 4
        self.factor = 2 ** (len(sd_config["block_out_channels"]) - 1)

    def _batches(self, total):
        size = self.mbs or total
        return [(i, min(i + size, total)) for i in range(0, total, size)]

    def spatial_encode(self, x):
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x_z = torch.cat([self.spatial.encode(frames[s:e]).latent_dist.mean for s, e in self._batches(b * t)]) * 0.18215
        return x_z.reshape(b, t, -1, h // self.factor, w // self.factor).permute(0, 2, 1, 3, 4)

    def encode_mean_std(self, x):
        x_z = self.spatial_encode(x)
        pieces = [ref_temporal_encode(x_z[:, :, i:i + self.mfs], self.temporal, self.kwargs)
                  for i in range(0, x_z.shape[2], self.mfs)]
        mean = torch.cat([p[0] for p in pieces], 2)
        std = torch.cat([p[1] for p in pieces], 2)
        return (mean - self.shift) / self.scale, std / self.scale

    def temporal_decode(self, z, num_frames):
        z = z * self.scale + self.shift
        pieces = []
        for i in range(0, z.shape[2], self.mzs):
            pieces.append(ref_temporal_decode(z[:, :, i:i + self.mzs], self.temporal, self.kwargs,
                                              min(self.mfs, num_frames)))
            num_frames -= self.mfs
        return torch.cat(pieces, 2)

    def spatial_decode(self, x_z):
        b, c, t, h, w = x_z.shape
        frames = x_z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / 0.18215
        out = torch.cat([self.spatial.decode(frames[s:e]).sample for s, e in self._batches(b * t)])
        return out.reshape(b, t, -1, h * self.factor, w * self.factor).permute(0, 2, 1, 3, 4)

    def decode(self, z, num_frames):
        return self.spatial_decode(self.temporal_decode(z, num_frames))
