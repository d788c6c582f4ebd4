"""Rectified flow (Open-Sora 1.2): timesteps, the resolution/length timestep shift, Euler sampling, loss.

The model predicts the velocity ``v = x0 - noise`` along the straight path
``x_t = (1 - t/T) x0 + (t/T) noise``. Sampling walks t from T down with Euler steps
``z += v * dt / T``; guidance mixes the conditional and unconditional velocity (the first half of
the model's output channels).

Timestep transform (upstream ``timestep_transform``): with t in [0, 1],
``t' = r t / (1 + (r - 1) t)`` where ``r = sqrt(H W / 512^2) * sqrt(T') * transform_scale``, H and W
the *pixel* size and T' = 1 for an image, ``floor(frames / 17) * 5`` for a video (its latent frames
in whole 17-frame chunks).

Short clips (upstream issue #641): for 2 to 16 frames upstream's T' is 0, so r = 0, every timestep
becomes 0 and the "sample" is the initial noise. Here such clips use T' = ceil(frames / 4), the
number of latent frames the 1.2 VAE actually makes of them (its time compression is 4, with the
last chunk padded), and a warning says so; any other ratio <= 0 raises an error.
"""
from __future__ import annotations

import logging
import math

import numpy as np

import mindspore as ms
from mindspore import ops

from ..utils.finite import check_sampler_step
from .guidance import GuidedModel, TextCondition, apply_guidance
from .iddpm.diffusion import mean_flat
from .noise import make_rng, progress, randn
from .registry import SCHEDULERS

logger = logging.getLogger(__name__)

SAMPLE_METHODS = ("uniform", "logit-normal")


def temporal_frames(num_frames) -> np.ndarray:
    """T' of the timestep shift for each clip length (see the module docstring for 2-16 frames)."""
    n = np.asarray(num_frames, dtype=np.int64).reshape(-1)
    if (n < 1).any():
        raise ValueError(f"num_frames must be >= 1, got {n.tolist()}")
    chunks = n // 17 * 5
    short = (n > 1) & (n < 17)
    if short.any():
        logger.warning("timestep transform: %s frames is shorter than one 17-frame chunk; upstream's formula "
                       "gives 0 there and returns noise (#641). Using the latent frame count ceil(n/4) instead.",
                       sorted(set(n[short].tolist())))
    return np.where(n == 1, 1, np.where(short, (n + 3) // 4, chunks)).astype(np.float64)


def transform_ratio(height, width, num_frames, base_resolution: float = 512 * 512, base_num_frames: float = 1,
                    scale: float = 1.0) -> np.ndarray:
    """The shift ratio r for each sample, from pixel height, width and frame count (host values)."""
    h = np.asarray(height, dtype=np.float64).reshape(-1)
    w = np.asarray(width, dtype=np.float64).reshape(-1)
    ratio = np.sqrt(h * w / base_resolution) * np.sqrt(temporal_frames(num_frames) / base_num_frames) * scale
    if not (ratio > 0).all():
        raise ValueError(f"timestep transform ratio must be positive, got {ratio.tolist()} for height {h.tolist()}, "
                         f"width {w.tolist()}, frames {np.asarray(num_frames).tolist()}")
    return ratio


def apply_transform(t, ratio):
    """``t' = r t / (1 + (r - 1) t)`` for t in [0, 1] (NumPy arrays or MindSpore tensors)."""
    return ratio * t / (1 + (ratio - 1) * t)


def _host(value) -> np.ndarray:
    return value.asnumpy() if isinstance(value, ms.Tensor) else np.asarray(value)


@SCHEDULERS.register("rflow")
class RFlow:
    """``RFlow(num_sampling_steps=30, cfg_scale=7.0, use_timestep_transform=True)`` as in 1.2's config."""

    def __init__(self, num_sampling_steps=10, num_timesteps=1000, cfg_scale=4.0, use_discrete_timesteps=False,
                 use_timestep_transform=False, sample_method="uniform", loc=0.0, scale=1.0, transform_scale=1.0):
        if sample_method not in SAMPLE_METHODS:
            raise ValueError(f"sample_method must be one of {SAMPLE_METHODS}, got {sample_method!r}")
        if use_discrete_timesteps and sample_method != "uniform":
            raise ValueError("discrete timesteps only support sample_method='uniform'")
        if int(num_sampling_steps) < 1:
            raise ValueError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
        self.num_sampling_steps = int(num_sampling_steps)
        self.num_timesteps = int(num_timesteps)
        self.cfg_scale = float(cfg_scale)
        self.use_discrete_timesteps = bool(use_discrete_timesteps)
        self.use_timestep_transform = bool(use_timestep_transform)
        self.sample_method = sample_method
        self.loc, self.scale = float(loc), float(scale)
        self.transform_scale = float(transform_scale)

    # ---- shared by sampling and training ----
    def add_noise(self, x0, noise, t):
        """``(1 - t/T) x0 + (t/T) noise`` for t (B,) in [0, T]."""
        tp = 1.0 - t.astype(ms.float32) / self.num_timesteps
        tp = tp.reshape((tp.shape[0],) + (1,) * (x0.ndim - 1))
        return tp * x0 + (1.0 - tp) * noise

    def shift(self, t: np.ndarray, model_kwargs) -> np.ndarray:
        """The timestep transform of (B,) timesteps in [0, T] with this scheduler's transform_scale."""
        ratio = transform_ratio(_host(model_kwargs["height"]), _host(model_kwargs["width"]),
                                _host(model_kwargs["num_frames"]), scale=self.transform_scale)
        return apply_transform(t / self.num_timesteps, ratio) * self.num_timesteps

    def sampling_timesteps(self, batch_size: int, model_kwargs=None) -> list[np.ndarray]:
        """The N timesteps visited by sampling, each a (B,) float64 array, from T downwards."""
        ts = [(1.0 - i / self.num_sampling_steps) * self.num_timesteps for i in range(self.num_sampling_steps)]
        if self.use_discrete_timesteps:
            ts = [float(int(round(t))) for t in ts]
        ts = [np.full((batch_size,), t, dtype=np.float64) for t in ts]
        if self.use_timestep_transform:
            missing = [k for k in ("height", "width", "num_frames") if (model_kwargs or {}).get(k) is None]
            if missing:
                raise ValueError(f"use_timestep_transform needs {missing} in the model arguments")
            ts = [self.shift(t, model_kwargs) for t in ts]
        return ts

    def sample_t(self, batch_size: int, rng=None, model_kwargs=None) -> np.ndarray:
        """Training timesteps (B,) in [0, T]: uniform, discrete or logit-normal, then shifted if enabled."""
        rng = make_rng(rng)
        if self.use_discrete_timesteps:
            t = rng.integers(0, self.num_timesteps, size=batch_size).astype(np.float64)
        elif self.sample_method == "uniform":
            t = rng.random(batch_size) * self.num_timesteps
        else:  # logit-normal: sigmoid of a normal draw (torch's 1-D LogisticNormal)
            t = 1.0 / (1.0 + np.exp(-rng.normal(self.loc, self.scale, size=batch_size))) * self.num_timesteps
        if self.use_timestep_transform:
            t = self.shift(t, model_kwargs)
        return t

    def training_losses(self, model, x_start, model_kwargs=None, noise=None, mask=None, weights=None, t=None,
                        rng=None):
        """``{"loss": (B,)}``: MSE between the predicted velocity and ``x_start - noise``.

        ``t`` (B,) in [0, T] (drawn by :meth:`sample_t` when None); ``mask`` (B, T) bool: frames to
        denoise, the others are given clean (t = 0) and left out of the mean; ``weights`` (B,) optional.
        """
        model_kwargs = model_kwargs or {}
        b = x_start.shape[0]
        if t is None:
            t = ms.Tensor(self.sample_t(b, rng, model_kwargs).astype(np.float32))
        if noise is None:
            noise = ops.randn(x_start.shape, dtype=x_start.dtype)
        x_t = self.add_noise(x_start, noise, t)
        if mask is not None:
            x_t0 = self.add_noise(x_start, noise, ops.zeros_like(t))
            x_t = ops.where(mask.astype(ms.bool_)[:, None, :, None, None], x_t, x_t0)
        out = model(x_t, t, **model_kwargs)
        if isinstance(out, dict):
            out = out["x"]
        v_pred = out[:, : out.shape[1] // 2] if out.shape[1] == 2 * x_start.shape[1] else out
        sq = (v_pred - (x_start - noise)) ** 2
        if weights is not None:
            sq = sq * weights.reshape((b,) + (1,) * (x_start.ndim - 1))
        return {"loss": mean_flat(sq, mask)}

    # ---- sampling ----
    def sample(self, model, z, text: TextCondition, model_kwargs=None, mask=None, generator=None,
               progress_bar: bool = True, guidance_scale=None, dtype=ms.float32):
        """Denoise ``z`` (B, C, T, H, W); ``mask`` (B, T) edit ratios (1 = generate, 0 = keep) or None."""
        rng = make_rng(generator)
        scale = self.cfg_scale if guidance_scale is None else float(guidance_scale)
        b = z.shape[0]
        guided = GuidedModel(model, text, model_kwargs, dtype)
        timesteps = self.sampling_timesteps(b, model_kwargs)
        z = ops.stop_gradient(z).astype(ms.float32)
        if mask is not None:
            m = mask.asnumpy() if isinstance(mask, ms.Tensor) else np.asarray(mask)
            mask_t = m.astype(np.float32) * np.float32(self.num_timesteps)
            noise_added = m == 1
        for i in progress(range(len(timesteps)), progress_bar, "rflow"):
            t32 = timesteps[i].astype(np.float32)
            t = ms.Tensor(t32)
            x_mask = x0 = keep = None
            if mask is not None:
                x0 = z
                x_noise = self.add_noise(x0, randn(rng, z.shape), t)
                upper = mask_t >= t32[:, None]  # frames still being generated at this step
                renoise = upper & ~noise_added  # frames whose edit ratio is reached now
                z = ops.where(ms.Tensor(renoise)[:, None, :, None, None], x_noise, x0)
                noise_added = upper
                x_mask = ms.Tensor(upper)
                keep = ms.Tensor(upper)[:, None, :, None, None]
            cond, uncond = guided(z, t, x_mask)
            half = cond.shape[1] // 2 if cond.shape[1] == 2 * z.shape[1] else cond.shape[1]
            v = apply_guidance(cond[:, :half], uncond[:, :half], scale)
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else np.zeros_like(timesteps[i])
            dt = ((timesteps[i] - t_next) / self.num_timesteps).astype(np.float32)
            z = z + v * ms.Tensor(dt).reshape((b,) + (1,) * (z.ndim - 1))
            if mask is not None:
                z = ops.where(keep, z, x0)
            check_sampler_step(z, "rflow", i + 1, len(timesteps))
        return z

