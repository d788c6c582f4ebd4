"""Open-Sora 2.0's Hunyuan causal 3D VAE (upstream ``AutoencoderKLCausal3D``, registry name ``"hunyuan_vae"``):
4x in time (n = 4k + 1 frames -> k + 1 latent frames), 8x in space, 16 latent channels, with upstream's
spatial and temporal tiling.

Upstream's semantics kept:
- ``encode(x)`` returns ``scale_factor * (z - shift_factor)`` with ``z`` a posterior *sample* (upstream's
  default ``sample_posterior=True``; pass ``noise`` to inject the standard normal draw);
  ``decode(z)`` takes ``z / scale_factor + shift_factor`` and returns every decoded frame (4k + 1);
  ``decode(z, num_frames)`` keeps the first ``num_frames`` as the 2.0 pipeline does (``x[:, :, :num_frames]``).
- ``use_temporal_tiling`` applies when the clip is longer than ``sample_tsize`` frames (``sample_tsize / 4``
  latent frames), else ``use_spatial_tiling`` when H or W exceeds ``sample_size`` (``sample_size / 8``
  latents); the 2.0 inference configs use spatial tiling only. See ``tiling.py`` for the arithmetic.
The encoder and decoder are cells: in graph mode each compiles once per tile shape and is reused for
every tile of that shape; the tiling itself runs eagerly between them, holding one row of tiles.

``encode_posterior`` (not upstream's) gives latent caches the scaled posterior (mean, std).
"""
from __future__ import annotations

import inspect

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn
from mindspore.nn.utils import no_init_parameters

from ...config import check_kwargs
from ...dtypes import to_ms_dtype
from ..layers.nn import Conv3d
from ..registry import VAES
from ..vae.autoencoder_kl import posterior_mean_std
from ..vae.geometry import CausalGeometry, FrameCountError
from ..vae.loading import load_vae_weights
from .blocks import causal_decoder, causal_encoder, sampling_plan
from .tiling import tiled_2d, tiled_t


def causal_geometry(latent_channels=16, block_out_channels=(128, 256, 512, 512), time_compression_ratio=4,
                    spatial_compression_ratio=8) -> CausalGeometry:
    """The latent geometry the encoder's resampling plan gives (16 channels, 8x space, 4x time at full size)."""
    plan = sampling_plan(len(block_out_channels), time_compression_ratio, spatial_compression_ratio)
    return CausalGeometry(channels=int(latent_channels), spatial_factor=2 ** sum(space for _, space in plan),
                          time_factor=2 ** sum(time for time, _ in plan))


class AutoencoderKLCausal3D(nn.Cell):
    """Upstream's ``AutoencoderKLCausal3D(AutoEncoder3DConfig(...))``: the same keywords (``from_pretrained``
    is the builder's) and parameter names. ``dtype``: the parameters' dtype (upstream builds in bf16)."""

    def __init__(self, act_fn="silu", in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                 norm_num_groups=32, scale_factor=0.476986, shift_factor=0.0, time_compression_ratio=4,
                 spatial_compression_ratio=8, mid_block_add_attention=True, block_out_channels=(128, 256, 512, 512),
                 sample_size=256, sample_tsize=64, use_slicing=False, use_spatial_tiling=False,
                 use_temporal_tiling=False, tile_overlap_factor=0.25, dropout=0.0, channel=False, dtype=ms.float32):
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"act_fn {act_fn!r}: only 'silu' (upstream's) is implemented")
        if dropout:
            raise ValueError("dropout: only 0.0 (inference) is implemented")
        if isinstance(sample_size, (list, tuple)):  # upstream reads the first entry for the latent tile
            sample_size = sample_size[0]
        dtype = to_ms_dtype(dtype)
        plan = sampling_plan(len(block_out_channels), time_compression_ratio, spatial_compression_ratio)
        self.encoder = causal_encoder(in_channels, latent_channels, block_out_channels, layers_per_block,
                                       norm_num_groups, plan, mid_block_add_attention, dtype=dtype)
        self.decoder = causal_decoder(latent_channels, out_channels, block_out_channels, layers_per_block,
                                       norm_num_groups, plan, mid_block_add_attention, dtype=dtype)
        self.quant_conv = Conv3d(2 * latent_channels, 2 * latent_channels, 1, dtype=dtype)
        self.post_quant_conv = Conv3d(latent_channels, latent_channels, 1, dtype=dtype)
        self.geometry = causal_geometry(latent_channels, block_out_channels, time_compression_ratio,
                                        spatial_compression_ratio)
        self.out_channels = int(latent_channels)
        self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)
        self.use_slicing = bool(use_slicing)
        self.use_spatial_tiling, self.use_temporal_tiling = bool(use_spatial_tiling), bool(use_temporal_tiling)
        # upstream's tile sizes: pixels and latents, in space and time
        self.tile_sample_min_size = int(sample_size)
        self.tile_latent_min_size = int(sample_size / (2 ** (len(block_out_channels) - 1)))
        self.tile_sample_min_tsize = int(sample_tsize)
        self.tile_latent_min_tsize = int(sample_tsize) // time_compression_ratio
        self.tile_overlap_factor = float(tile_overlap_factor)

    # ------------------------------------------------------------------ tiles
    def _encode_tile(self, x):
        return self.quant_conv(self.encoder(x))

    def _decode_tile(self, z):
        return self.decoder(self.post_quant_conv(z))

    def _spatial(self, x, run, size: int, out_size: int):
        """``run`` on ``x`` whole, or on (size x size) tiles whose outputs are (out_size x out_size) when H or W
        exceeds ``size`` and spatial tiling is on (upstream's ``spatial_tiled_encode/decode``)."""
        if not self.use_spatial_tiling or max(x.shape[3], x.shape[4]) <= size:
            return run(x)
        f = self.tile_overlap_factor
        extent = int(out_size * f)
        return tiled_2d(x, run, size, int(size * (1 - f)), extent, out_size - extent)

    def _temporal(self, x, run, length: int, out_length: int):
        """``run`` on ``x`` whole, or on (length + 1)-frame tiles with (out_length + 1)-frame outputs when T exceeds
        ``length`` and temporal tiling is on (upstream's ``temporal_tiled_encode/decode``)."""
        if not self.use_temporal_tiling or x.shape[2] <= length:
            return run(x)
        f = self.tile_overlap_factor
        extent = int(out_length * f)
        return tiled_t(x, run, length, int(length * (1 - f)), extent, out_length - extent)

    def _moments(self, x):
        """Video -> posterior moments (B, 2 * latent, t, h, w), tiled as configured."""
        def spatial(v):
            return self._spatial(v, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)

        return self._temporal(x, spatial, self.tile_sample_min_tsize, self.tile_latent_min_tsize)

    def _decode_unscaled(self, z):
        def spatial(v):
            return self._spatial(v, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)

        return self._temporal(z, spatial, self.tile_latent_min_tsize, self.tile_sample_min_tsize)

    def _per_sample(self, fn, x):
        """``use_slicing``: one sample at a time (upstream's batch slicing)."""
        if not self.use_slicing or x.shape[0] == 1:
            return fn(x)
        outs = [fn(x[i:i + 1]) for i in range(x.shape[0])]
        if isinstance(outs[0], tuple):
            return tuple(ms.ops.cat([o[k] for o in outs], axis=0) for k in range(len(outs[0])))
        return ms.ops.cat(outs, axis=0)

    # ------------------------------------------------------------------ the VAE interface
    def _check_video(self, x):
        if x.ndim != 5:
            raise ValueError(f"expected a video (B, C, T, H, W), got shape {tuple(x.shape)}")

    def encode_posterior(self, x):
        """(B, 3, T, H, W) in [-1, 1] -> the scaled posterior (mean, std), each (B, 16, t, h, w): a draw
        ``mean + std * noise`` is what :meth:`encode` returns."""
        self._check_video(x)
        mean, std = self._per_sample(lambda v: posterior_mean_std(self._moments(v)), x)
        return self.scale_factor * (mean - self.shift_factor), self.scale_factor * std

    def encode(self, x, sample_posterior: bool = True, noise=None):
        """Upstream's ``encode``: ``scale_factor * (z - shift_factor)``, ``z`` a posterior sample (or its mean with
        ``sample_posterior=False``). ``noise``: the standard normal draw (array or tensor), else a fresh one."""
        mean, std = self.encode_posterior(x)
        if not sample_posterior:
            return mean
        if noise is None:
            noise = ms.ops.randn(mean.shape, dtype=mean.dtype)
        elif tuple(noise.shape) != tuple(mean.shape):
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from the latent's {tuple(mean.shape)}")
        noise = Tensor(noise) if isinstance(noise, np.ndarray) else noise
        return mean + std * noise.astype(mean.dtype)

    def decode(self, z, num_frames: int | None = None):
        """(B, 16, t, h, w) scaled latent -> (B, 3, 4(t-1)+1, 8h, 8w); with ``num_frames`` the first
        ``num_frames`` of them (the 2.0 pipeline's crop)."""
        self._check_video(z)
        if num_frames is not None:
            available = self.geometry.pixel_frames(z.shape[2])
            if not 1 <= int(num_frames) <= available:
                raise FrameCountError(f"num_frames={num_frames}: {z.shape[2]} latent frames decode to "
                                      f"{available} frames")
        z = z / self.scale_factor + self.shift_factor
        out = self._per_sample(self._decode_unscaled, z)
        return out if num_frames is None or int(num_frames) == out.shape[2] else out[:, :, :int(num_frames)]

    def get_latent_size(self, input_size):
        return self.geometry.latent_size(input_size)

    def get_last_layer(self):
        return self.decoder.conv_out.conv.weight

    @property
    def dtype(self):
        return self.decoder.conv_out.conv.weight.dtype


def _check_config(kwargs: dict) -> None:
    params = inspect.signature(CausalVAE3D_HUNYUAN).parameters
    check_kwargs(kwargs, params, "vae 'hunyuan_vae'")


def hunyuan_vae_geometry(**kwargs) -> CausalGeometry:
    """The geometry of ``CausalVAE3D_HUNYUAN(**kwargs)`` without building it."""
    _check_config(kwargs)
    keys = ("latent_channels", "block_out_channels", "time_compression_ratio", "spatial_compression_ratio")
    return causal_geometry(**{k: kwargs[k] for k in keys if k in kwargs})


@VAES.register("hunyuan_vae", geometry=hunyuan_vae_geometry)
def CausalVAE3D_HUNYUAN(from_pretrained: str | None = None, device_map=None, torch_dtype="float32",  # noqa: N802
                        act_fn="silu", in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                        norm_num_groups=32, scale_factor=0.476986, shift_factor=0.0, time_compression_ratio=4,
                        spatial_compression_ratio=8, mid_block_add_attention=True,
                        block_out_channels=(128, 256, 512, 512), sample_size=256, sample_tsize=64, use_slicing=False,
                        use_spatial_tiling=False, use_temporal_tiling=False, tile_overlap_factor=0.25, dropout=0.0,
                        channel=False) -> AutoencoderKLCausal3D:
    """Upstream's builder: ``AutoEncoder3DConfig`` keywords; ``from_pretrained``: ``hunyuan_vae.safetensors``
    (read lazily, every key and shape checked; bf16 weights stay bf16 when ``torch_dtype`` is bf16) or a
    ``.ckpt`` from ``tools/convert_vae.py``. ``torch_dtype``: the parameters' dtype ("bf16" as upstream's default
    on Ascend; float32 here by default, the CPU having no bf16 compute). ``device_map`` is accepted for config
    compatibility (MindSpore places the model on the runtime's device)."""
    kwargs = {k: v for k, v in locals().items() if k not in ("from_pretrained", "device_map", "torch_dtype")}
    if from_pretrained:
        with no_init_parameters():  # the weights come from the file: no random initialisation
            vae = AutoencoderKLCausal3D(**kwargs, dtype=torch_dtype)
        load_vae_weights(vae, from_pretrained)
    else:
        vae = AutoencoderKLCausal3D(**kwargs, dtype=torch_dtype)
    vae.set_train(False)
    return vae
