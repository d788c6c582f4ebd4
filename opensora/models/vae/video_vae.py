"""The video VAEs of Open-Sora: ``VideoAutoencoderKL`` (1.0/1.1: the SD image VAE frame by frame) and
``VideoAutoencoderPipeline`` / ``OpenSoraVAE_V1_2`` (1.2: SDXL image VAE, then the causal temporal VAE).

Upstream's semantics (``opensora/v1.2:opensora/models/vae/vae.py``):
- ``VideoAutoencoderKL.encode``: a posterior *sample* times 0.18215 (also for the SDXL VAE inside the
  1.2 pipeline: upstream hard-codes 0.18215), ``micro_batch_size`` frames at a time.
- ``VideoAutoencoderPipeline.encode``: spatial sample, then the temporal VAE on chunks of
  ``micro_frame_size`` (17) frames -> 5 latent frames each, then ``(z - shift) / scale`` per channel.
  17 -> 5, 51 -> 15, 102 -> 30 latent frames; a shorter last chunk gives ceil(n/4).
- ``decode(z, num_frames)``: ``z * scale + shift``, the temporal VAE on chunks of 5 latent frames
  (each told how many pixel frames it holds), then the image VAE frame by frame.
The frame loops are Python loops over cells, so in graph mode each cell compiles once per shape and
only one chunk's activations are alive at a time (this bounds the memory of long 720p videos).

``encode_posterior`` (not in upstream) gives a latent cache its (mean, std); see its docstring.
"""
from __future__ import annotations

import os

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...errors import MissingFileError
from ..registry import VAES
from .autoencoder_kl import AutoencoderKL, sample_gaussian
from .geometry import ChunkedGeometry, FrameCountError, FramewiseGeometry
from .loading import SD_VAE_CONFIG, SDXL_VAE_CONFIG, load_vae_weights, read_json, resolve_dir
from .vae_temporal import VAE_Temporal_SD  # noqa: F401  (registers VAE_Temporal_SD for vae_temporal configs)

SD_SCALING_FACTOR = 0.18215
# Hub ids whose architecture is known without a download (weights must still be local)
KNOWN_CONFIGS = {
    "stabilityai/sd-vae-ft-ema": SD_VAE_CONFIG,
    "stabilityai/sd-vae-ft-mse": SD_VAE_CONFIG,
    "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers": SDXL_VAE_CONFIG,
    "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers/vae": SDXL_VAE_CONFIG,
}
OPENSORA_V1_2_SHIFT = (-0.10, 0.34, 0.27, 0.98)
OPENSORA_V1_2_SCALE = (3.85, 2.32, 2.33, 3.06)


def _frames_to_batch(x):
    b, c, t, h, w = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _batch_to_frames(x, b):
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).transpose(0, 2, 1, 3, 4)


def _chunks(total: int, size):
    size = total if not size else size
    return [(i, min(i + size, total)) for i in range(0, total, size)]


def _resolve_2d_config(from_pretrained, subfolder, config):
    """The diffusers config of an image VAE: given, next to local weights, or a known hub id's."""
    if config is not None:
        return read_json(config) if isinstance(config, str) else dict(config)
    if from_pretrained:
        local = resolve_dir(from_pretrained, subfolder)
        candidates = [os.path.join(local, "config.json")] if os.path.isdir(local) else \
            [os.path.join(os.path.dirname(os.path.abspath(local)), "config.json")]
        for path in candidates:
            if os.path.isfile(path):
                return read_json(path)
        key = f"{from_pretrained}/{subfolder}" if subfolder else from_pretrained
        if key in KNOWN_CONFIGS or from_pretrained in KNOWN_CONFIGS:
            return read_json(KNOWN_CONFIGS.get(key, KNOWN_CONFIGS.get(from_pretrained)))
    return read_json(SD_VAE_CONFIG)


def _image_vae_geometry(from_pretrained=None, subfolder=None, config=None, **_) -> FramewiseGeometry:
    cfg = _resolve_2d_config(from_pretrained, subfolder, config)
    return FramewiseGeometry(channels=int(cfg.get("latent_channels", 4)),
                             spatial_factor=2 ** (len(cfg.get("block_out_channels", (64,))) - 1))


@VAES.register("VideoAutoencoderKL", geometry=_image_vae_geometry)
class VideoAutoencoderKL(nn.Cell):
    """The SD (or SDXL) image VAE applied frame by frame; latents scaled by 0.18215.

    ``from_pretrained``: a local directory like ``stabilityai/sd-vae-ft-ema`` (``subfolder`` as in
    diffusers), a ``.safetensors`` / converted ``.ckpt`` file, or None (random weights).
    ``config``: a diffusers config dict / ``config.json`` path overriding the one found next to the
    weights (default: the SD VAE's). ``cache_dir`` / ``local_files_only`` are accepted for config
    compatibility; nothing is ever downloaded.
    """

    def __init__(self, from_pretrained=None, micro_batch_size=None, cache_dir=None, local_files_only=False,
                 subfolder=None, config=None, load_weights=True):
        super().__init__()
        self.module = AutoencoderKL.from_config(_resolve_2d_config(from_pretrained, subfolder, config))
        self.geometry = FramewiseGeometry(channels=self.module.latent_channels,
                                          spatial_factor=self.module.downsample_factor)
        self.out_channels = self.geometry.channels
        self.patch_size = (1, self.module.downsample_factor, self.module.downsample_factor)
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = SD_SCALING_FACTOR
        if from_pretrained and load_weights:
            local = resolve_dir(from_pretrained, subfolder)
            if not os.path.exists(local):
                raise MissingFileError(
                    f"VideoAutoencoderKL: {local!r} is not a local directory or file; download the Hugging Face "
                    "repository (e.g. stabilityai/sd-vae-ft-ema) and set from_pretrained to its local path")
            load_vae_weights(self.module, local)

    def encode_posterior(self, x):
        """(B, C, T, H, W) -> scaled posterior (mean, std), each (B, latent, T, H/8, W/8)."""
        b = x.shape[0]
        frames = _frames_to_batch(x)
        means, stds = [], []
        for start, end in _chunks(frames.shape[0], self.micro_batch_size):
            mean, std = self.module.encode(frames[start:end])
            means.append(mean * self.scaling_factor)
            stds.append(std * self.scaling_factor)
        mean = means[0] if len(means) == 1 else ops.cat(means, axis=0)
        std = stds[0] if len(stds) == 1 else ops.cat(stds, axis=0)
        return _batch_to_frames(mean, b), _batch_to_frames(std, b)

    def encode(self, x):
        """(B, C, T, H, W) -> a posterior sample times 0.18215 (upstream's encode)."""
        mean, std = self.encode_posterior(x)
        return sample_gaussian(mean, std)

    def decode(self, x, num_frames=None):
        """(B, latent, T, h, w) scaled latent -> (B, C, T, 8h, 8w) in about [-1, 1]; ``num_frames``, when given,
        must be T (the video VAEs' common signature)."""
        if num_frames is not None and num_frames != x.shape[2]:
            raise FrameCountError(f"this VAE decodes one frame per latent frame: {x.shape[2]} latent frames "
                                  f"cannot give {num_frames} frames")
        b = x.shape[0]
        frames = _frames_to_batch(x) / self.scaling_factor
        outs = [self.module.decode(frames[s:e]) for s, e in _chunks(frames.shape[0], self.micro_batch_size)]
        return _batch_to_frames(outs[0] if len(outs) == 1 else ops.cat(outs, axis=0), b)

    def get_latent_size(self, input_size):
        return self.geometry.latent_size(input_size)

    @property
    def dtype(self):
        return self.module.encoder.conv_in.weight.dtype


def _pipeline_geometry(config=None, vae_2d=None, vae_temporal=None, micro_frame_size=None, **_) -> ChunkedGeometry:
    if config is not None:
        vae_2d, vae_temporal = config.get("vae_2d", vae_2d), config.get("vae_temporal", vae_temporal)
        micro_frame_size = config.get("micro_frame_size", micro_frame_size)
    spatial, temporal = VAES.geometry(dict(vae_2d)), VAES.geometry(dict(vae_temporal))
    return ChunkedGeometry(channels=temporal.channels, spatial_factor=spatial.spatial_factor,
                           time_factor=temporal.time_factor, micro_frame_size=micro_frame_size)


@VAES.register("VideoAutoencoderPipeline", geometry=_pipeline_geometry)
class VideoAutoencoderPipeline(nn.Cell):
    """Spatial VAE then temporal VAE (Open-Sora 1.2). Keywords as upstream's
    ``VideoAutoencoderPipelineConfig`` (``vae_2d`` / ``vae_temporal`` are registry configs)."""

    def __init__(self, config=None, vae_2d=None, vae_temporal=None, from_pretrained=None, freeze_vae_2d=False,
                 cal_loss=False, micro_frame_size=None, shift=0.0, scale=1.0, **kwargs):
        super().__init__()
        if config is not None:  # upstream passes one config object/dict
            cfg = dict(config)
            vae_2d, vae_temporal = cfg.get("vae_2d", vae_2d), cfg.get("vae_temporal", vae_temporal)
            freeze_vae_2d, cal_loss = cfg.get("freeze_vae_2d", freeze_vae_2d), cfg.get("cal_loss", cal_loss)
            micro_frame_size = cfg.get("micro_frame_size", micro_frame_size)
            shift, scale = cfg.get("shift", shift), cfg.get("scale", scale)
        self.spatial_vae = VAES.build(dict(vae_2d))
        self.temporal_vae = VAES.build(dict(vae_temporal))
        self.cal_loss = cal_loss
        self.micro_frame_size = micro_frame_size
        self.geometry = ChunkedGeometry(
            channels=self.temporal_vae.geometry.channels, spatial_factor=self.spatial_vae.geometry.spatial_factor,
            time_factor=self.temporal_vae.geometry.time_factor, micro_frame_size=micro_frame_size)
        self.micro_z_frame_size = self.geometry.latent_chunk
        if freeze_vae_2d:
            for p in self.spatial_vae.get_parameters():
                p.requires_grad = False
        self.out_channels = self.temporal_vae.out_channels
        self.patch_size = (self.temporal_vae.patch_size[0],) + tuple(self.spatial_vae.patch_size[1:])
        c = self.out_channels
        # persistent buffers in upstream's state dict: (1, C, 1, 1, 1)
        self.scale = Parameter(Tensor(np.broadcast_to(np.asarray(scale, np.float32), (c,)).reshape(1, c, 1, 1, 1)),
                               name="scale", requires_grad=False)
        self.shift = Parameter(Tensor(np.broadcast_to(np.asarray(shift, np.float32), (c,)).reshape(1, c, 1, 1, 1)),
                               name="shift", requires_grad=False)
        if from_pretrained:
            load_vae_weights(self, from_pretrained)

    def _temporal_chunks(self, x_z):
        """Encode ``x_z`` chunk by chunk -> lists of temporal posterior means and stds."""
        means, stds = [], []
        for start, end in _chunks(x_z.shape[2], self.micro_frame_size):
            mean, std = self.temporal_vae.encode(x_z[:, :, start:end])
            means.append(mean)
            stds.append(std)
        return means, stds

    def encode(self, x):
        """(B, 3, T, H, W) in [-1, 1] -> normalised latent (B, 4, T', H/8, W/8) (a posterior sample)."""
        x_z = self.spatial_vae.encode(x)
        means, stds = self._temporal_chunks(x_z)
        z = ops.cat([sample_gaussian(m, s) for m, s in zip(means, stds)], axis=2)
        if self.cal_loss:
            return z, (means[-1], stds[-1]), x_z
        return (z - self.shift.astype(z.dtype)) / self.scale.astype(z.dtype)

    def encode_posterior(self, x):
        """(mean, std) of the normalised latent, for latent caches (``scripts/infer_vae.py``).

        Defined as: the spatial posterior *mean* (the SD VAE's std is negligible next to the
        temporal VAE's), then the temporal posterior of each 17-frame chunk, normalised like
        :meth:`encode`: ``mean = (mu_t - shift) / scale``, ``std = sigma_t / scale``. A draw
        ``mean + std * noise`` is then distributed as :meth:`encode`'s output given the spatial mean.
        """
        x_z, _ = self.spatial_vae.encode_posterior(x)
        means, stds = self._temporal_chunks(x_z)
        mean, std = ops.cat(means, axis=2), ops.cat(stds, axis=2)
        scale = self.scale.astype(mean.dtype)
        return (mean - self.shift.astype(mean.dtype)) / scale, std / scale

    def decode(self, z, num_frames=None):
        """(B, 4, T', h, w) normalised latent -> (B, 3, num_frames, 8h, 8w)."""
        if num_frames is None:
            raise ValueError("VideoAutoencoderPipeline.decode needs num_frames (the pixel frame count, e.g. 51 for "
                             "15 latent frames): the temporal VAE cannot tell 49, 50 or 51 frames apart")
        expected = self.geometry.latent_frames(num_frames)
        if z.shape[2] != expected:
            raise FrameCountError(f"{num_frames} frames are {expected} latent frames for this VAE, but the latent "
                                  f"has {z.shape[2]}")
        x_z = self.temporal_decode(z, num_frames)
        x = self.spatial_vae.decode(x_z)
        return (x, x_z) if self.cal_loss else x

    def temporal_decode(self, z, num_frames):
        """The first half of :meth:`decode`: (B, 4, T', h, w) latent -> the spatial VAE's latent
        (B, 4, num_frames, h, w), the temporal VAE run on chunks of ``micro_z_frame_size`` latent frames."""
        if not self.cal_loss:
            z = z * self.scale.astype(z.dtype) + self.shift.astype(z.dtype)
        if not self.micro_frame_size:
            return self.temporal_vae.decode(z, num_frames=num_frames)
        frames = self.geometry.chunk_pixel_frames(num_frames)  # what each chunk of latents decodes to
        pieces = [self.temporal_vae.decode(z[:, :, start:end], num_frames=n)
                  for (start, end), n in zip(_chunks(z.shape[2], self.micro_z_frame_size), frames)]
        return pieces[0] if len(pieces) == 1 else ops.cat(pieces, axis=2)

    def get_latent_size(self, input_size):
        return self.geometry.latent_size(input_size)

    @property
    def dtype(self):
        return self.temporal_vae.decoder.conv_out.conv.weight.dtype


def _pipeline_config_from_dir(path: str) -> dict:
    """``config.json`` of an ``hpcai-tech/OpenSora-VAE-v1.2``-style directory (or {})."""
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else None
    return read_json(cfg_path) if cfg_path and os.path.isfile(cfg_path) else {}


def v1_2_pipeline_kwargs(micro_batch_size=4, micro_frame_size=17, from_pretrained=None, local_files_only=False,
                         freeze_vae_2d=False, cal_loss=False, vae_2d_config=None, temporal_kwargs=None, shift=None,
                         scale=None) -> dict:
    """:class:`VideoAutoencoderPipeline`'s keywords for :func:`OpenSoraVAE_V1_2`'s (everything but loading the
    weights): the architecture is read from ``from_pretrained``'s ``config.json`` when it is a folder."""
    dir_cfg = _pipeline_config_from_dir(from_pretrained) if from_pretrained else {}
    if vae_2d_config is None:
        # the directory's config.json may describe the 2D VAE: a "config" dict (written by this port for
        # small models) or upstream's {"from_pretrained": <hub id or local dir>, "subfolder": "vae"}
        saved_2d = dir_cfg.get("vae_2d") or {}
        vae_2d_config = saved_2d.get("config") or _resolve_2d_config(
            saved_2d.get("from_pretrained") or "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
            saved_2d.get("subfolder", "vae") if saved_2d.get("from_pretrained") else "vae", None)
    if isinstance(vae_2d_config, str) and os.path.isdir(vae_2d_config):
        vae_2d_config = os.path.join(vae_2d_config, "config.json")
    vae_2d = dict(type="VideoAutoencoderKL", config=vae_2d_config, micro_batch_size=micro_batch_size,
                  local_files_only=local_files_only)
    saved_temporal = dir_cfg.get("vae_temporal") or {}
    if temporal_kwargs is None and saved_temporal.get("type") == "VAE_Temporal":
        temporal_kwargs = {k: v for k, v in saved_temporal.items() if k not in ("type", "from_pretrained")}
    vae_temporal = dict(type="VAE_Temporal", **temporal_kwargs) if temporal_kwargs else dict(type="VAE_Temporal_SD")
    return dict(vae_2d=vae_2d, vae_temporal=vae_temporal, freeze_vae_2d=freeze_vae_2d, cal_loss=cal_loss,
                micro_frame_size=micro_frame_size,
                shift=shift if shift is not None else dir_cfg.get("shift", OPENSORA_V1_2_SHIFT),
                scale=scale if scale is not None else dir_cfg.get("scale", OPENSORA_V1_2_SCALE))


def _v1_2_geometry(**kwargs) -> ChunkedGeometry:
    return _pipeline_geometry(**v1_2_pipeline_kwargs(**kwargs))


@VAES.register("OpenSoraVAE_V1_2", geometry=_v1_2_geometry)
def OpenSoraVAE_V1_2(micro_batch_size=4, micro_frame_size=17, from_pretrained=None, local_files_only=False,  # noqa: N802
                     freeze_vae_2d=False, cal_loss=False, vae_2d_config=None, temporal_kwargs=None, shift=None,
                     scale=None):
    """Upstream's builder. ``from_pretrained``: an ``hpcai-tech/OpenSora-VAE-v1.2``-style directory
    (config.json + model.safetensors), a ``.safetensors`` file, or a converted ``.ckpt``.

    The SDXL VAE architecture comes from ``vae_2d_config`` (a diffusers config dict, a config.json, or a
    directory like ``pixart_sigma_sdxlvae_T5_diffusers/vae``) or else the bundled SDXL VAE config. Extra
    keywords for small test models (not in upstream): ``vae_2d_config``, ``temporal_kwargs``
    (``VAE_Temporal`` keywords replacing ``VAE_Temporal_SD``'s), ``shift``/``scale``.
    """
    kwargs = v1_2_pipeline_kwargs(micro_batch_size, micro_frame_size, from_pretrained, local_files_only,
                                  freeze_vae_2d, cal_loss, vae_2d_config, temporal_kwargs, shift, scale)
    return VideoAutoencoderPipeline(**kwargs, from_pretrained=from_pretrained)
