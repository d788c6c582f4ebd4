"""Open-Sora 2.0's flow sampler: the shifted schedule, packing, and the two denoising loops.

As upstream's ``opensora/utils/sampling.py`` (``main``):

* **Schedule**: ``linspace(1, 0, N + 1)`` in float32, shifted by ``t' = a t / (1 + (a - 1) t)`` where
  ``a = (1 + (L - 256) * 2 / 3840) * sqrt(T)`` (L latent tokens per frame, T latent frames), or a fixed
  ``flow_shift``. 256px 16:9 at 129 frames: a = 5.733; 768px: 11.87.
* **Sign convention**: the model predicts noise minus data and the Euler loop runs t from 1 to 0:
  ``x += (t_next - t) * v`` (the opposite of 1.2's rectified flow).
* :class:`I2VDenoiser` (the video model): three model calls per step on a batch of 3B — text + image
  condition, negative text + image condition, negative text without image condition — mixed as
  ``v = v_neg_noimg + g_img (v_neg - v_neg_noimg) + g_txt (v_cond - v_neg)``. "Oscillation" sets a
  guidance scale to 1 on odd steps from step 10; for image conditioning the image scale also ramps
  over latent time, from 1 at the first latent frame to ``linspace(g_img, 1, N + 1)[i]`` at the last.
* :class:`DistilledDenoiser` (Flux-dev, the first frame of text-to-image-to-video): one call per step,
  no CFG; the guidance scale goes into the model's guidance embedding.

Latents are packed in 2x2 patches: (B, C, T, H, W) -> (B, T*H/2*W/2, 4C). The loops keep the latent in
the model's dtype and round after every elementwise operation as upstream's bf16 tensors do (a no-op in
float32); timesteps and guidance scales are rounded to the model's dtype before the model sees them.

The model is called through the project's protocol: once per prompt batch
``prepared = model.prepare_conditioning(img_ids, txt, txt_ids, y_vec, cond=..., guidance=...)`` (keyword
arguments holding what is constant over the steps: text, pooled-vector, image-condition and guidance
projections, RoPE tables), then every step ``model(img, timesteps=t, **prepared)``. ``text`` below is the
dict of the first four (``img_ids``, ``txt``, ``txt_ids``, ``y_vec``) for the rows the model sees (3B for the
video sampler).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

import mindspore as ms
from mindspore import ops

from ..utils.finite import check_sampler_step
from .noise import progress

PATCH = 2


# ---------------------------------------------------------------- schedule (host, float32 as torch)
def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32 as torch's element formula computes it (the CUDA
    kernel, upstream's device): ``start + step * i`` for the first half, ``end - step * (steps - 1 - i)``
    for the second, each a fused multiply-add (one rounding; emulated in float64). torch's CPU kernel fills
    8- or 16-wide vectors from their first index instead, which can move a value by one ulp."""
    steps = int(steps)
    if steps == 1:
        return np.array([start], np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps, dtype=np.float64)
    half = steps // 2
    head = np.float64(start32) + step * idx[:half]
    tail = np.float64(end32) - step * (steps - 1 - idx[half:])
    return np.concatenate([head, tail]).astype(np.float32)


def shift_alpha(tokens_per_frame: int, latent_frames: int, base_shift: float = 1.0, max_shift: float = 3.0) -> float:
    """Upstream's shift: linear in tokens per latent frame (1 at 256, 3 at 4096), times sqrt(latent frames)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (slope * tokens_per_frame + (base_shift - slope * 256)) * math.sqrt(latent_frames)


def time_shift(alpha: float, t: np.ndarray) -> np.ndarray:
    """``a t / (1 + (a - 1) t)`` in float32 with the scalars rounded as torch rounds Python numbers."""
    t = np.asarray(t, np.float32)
    return (np.float32(alpha) * t / (np.float32(1.0) + np.float32(alpha - 1) * t)).astype(np.float32)


def get_schedule(num_steps: int, tokens_per_frame: int, latent_frames: int, flow_shift: float | None = None,
                 shift: bool = True) -> list[float]:
    """The N + 1 times from 1 to 0 (floats), shifted unless ``shift`` is False; ``flow_shift`` fixes the shift."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = linspace32(1.0, 0.0, int(num_steps) + 1)
    if shift:
        alpha = shift_alpha(tokens_per_frame, latent_frames) if flow_shift is None else float(flow_shift)
        t = time_shift(alpha, t)
    return [float(v) for v in t]


def oscillation_scale(scale: float, step: int, force_num: int = 10) -> float:
    """Upstream's ``get_oscillation_gs``: the scale before step ``force_num`` and on even steps, else 1."""
    return scale if step < force_num or step % 2 == 0 else 1.0


def image_guidance_ramp(scale: float, step: int, num_times: int, latent_frames: int) -> np.ndarray:
    """(T,) float32: the image scale per latent frame, 1 -> ``linspace(scale, 1, num_times)[step]``."""
    upper = linspace32(scale, 1.0, num_times)[step]
    return linspace32(1.0, float(upper), latent_frames)


# ---------------------------------------------------------------- packing (NumPy arrays or MindSpore tensors)
def pack(x, patch: int = PATCH):
    """(B, C, T, H, W) -> (B, T*(H/p)*(W/p), C*p*p), token order (t, h, w), features (c, ph, pw)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // patch, patch, w // patch, patch)
    x = x.transpose(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, t * (h // patch) * (w // patch), c * patch * patch)


def unpack(x, latent_frames: int, height: int, width: int, patch: int = PATCH):
    """Inverse of :func:`pack` for a latent of ``latent_frames`` x ``height`` x ``width`` (latent pixels)."""
    b, _, d = x.shape
    c = d // (patch * patch)
    x = x.reshape(b, latent_frames, height // patch, width // patch, c, patch, patch)
    x = x.transpose(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(b, c, latent_frames, height, width)


def image_ids(batch: int, latent_frames: int, height: int, width: int, patch: int = PATCH) -> np.ndarray:
    """(B, T*(H/p)*(W/p), 3) float32 positions (t, h, w) of the packed tokens, in patch units."""
    hp, wp = height // patch, width // patch
    grid = np.stack(np.meshgrid(np.arange(latent_frames), np.arange(hp), np.arange(wp), indexing="ij"), axis=-1)
    return np.broadcast_to(grid.reshape(1, -1, 3), (batch, latent_frames * hp * wp, 3)).astype(np.float32)


def text_ids(batch: int, length: int) -> np.ndarray:
    """Text positions are all 0: T5 already encodes positions, so RoPE leaves text tokens as they are."""
    return np.zeros((batch, length, 3), np.float32)


# ---------------------------------------------------------------- denoising
class _Rounding:
    """Elementwise arithmetic in float32 rounded to ``dtype`` after each operation (torch's bf16/fp16 ops)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.exact = dtype == ms.float32

    def __call__(self, x: ms.Tensor) -> ms.Tensor:
        return x if self.exact else x.astype(self.dtype).astype(ms.float32)

    def full(self, n: int, value: float) -> ms.Tensor:
        """``torch.full((n,), value, dtype)``: the value rounded once to the dtype."""
        return ms.Tensor(np.full((n,), value, np.float32)).astype(self.dtype)


def _euler(r: _Rounding, img: ms.Tensor, pred: ms.Tensor, t_curr: float, t_next: float) -> ms.Tensor:
    # upstream: img + (t_prev - t_curr) * pred, the difference taken in Python (double) then used as float32
    dt = np.float32(t_next - t_curr)
    return r(img + r(pred * ms.Tensor(dt)))


class I2VDenoiser:
    """The video model's loop (see the module doc); guidance scales as upstream's ``SamplingOption``."""

    def __init__(self, guidance: float = 7.5, guidance_img: float | None = 3.0, text_osci: bool = False,
                 image_osci: bool = False, scale_temporal_osci: bool = False, force_num: int = 10):
        self.guidance = float(guidance)
        self.guidance_img = None if guidance_img is None else float(guidance_img)
        self.text_osci, self.image_osci = bool(text_osci), bool(image_osci)
        self.scale_temporal_osci = bool(scale_temporal_osci)
        self.force_num = int(force_num)

    def scales(self, step: int, num_times: int, latent_frames: int, image_ramp: bool):
        """(text scale, image scale: a float or a (T,) per-latent-frame array) at ``step``."""
        g_txt = oscillation_scale(self.guidance, step, self.force_num) if self.text_osci else self.guidance
        g_img = self.guidance_img
        if self.image_osci:
            g_img = oscillation_scale(g_img, step, self.force_num)
        if image_ramp and g_img > 1.0:
            g_img = image_guidance_ramp(g_img, step, num_times, latent_frames)
        return g_txt, g_img

    def denoise(self, model, img, timesteps: list[float], text: Mapping[str, Any], cond, latent_frames: int,
                image_ramp: bool = False, dtype=ms.float32, progress_bar: bool = False) -> ms.Tensor:
        """``img`` (B, L, D) packed noise; ``text`` for the batch of 3B ([prompts; negatives; negatives]);
        ``cond`` (B, L, D') the packed ``cat(mask, masked reference)``; ``image_ramp``: the cond type is an
        image one (upstream: ``scale_temporal_osci and "i2v" in cond_type``). -> the packed latent (B, L, D)."""
        if self.guidance_img is None:
            raise ValueError("the video sampler needs guidance_img (the image guidance scale)")
        r = _Rounding(dtype)
        b = img.shape[0]
        tokens_per_frame = img.shape[1] // latent_frames
        cond = cond.astype(dtype)
        prepared = model.prepare_conditioning(**text, cond=ops.concat([cond, cond, ops.zeros_like(cond)], axis=0),
                                              guidance=r.full(3 * b, self.guidance))
        img = r(img.astype(ms.float32))
        ramp = image_ramp and self.scale_temporal_osci
        for i in progress(range(len(timesteps) - 1), progress_bar, "v2 denoise"):
            t_curr, t_next = timesteps[i], timesteps[i + 1]
            x3 = ops.concat([img, img, img], axis=0).astype(dtype)
            pred = model(x3, timesteps=r.full(3 * b, t_curr), **prepared).astype(ms.float32)
            v_cond, v_neg, v_neg_noimg = pred[:b], pred[b:2 * b], pred[2 * b:]
            g_txt, g_img = self.scales(i, len(timesteps), latent_frames, ramp)
            if isinstance(g_img, np.ndarray):  # per latent frame -> per token, rounded to the dtype as upstream
                g_img = r(ms.Tensor(np.repeat(g_img, tokens_per_frame)[None, :, None]))
            else:
                g_img = ms.Tensor(np.float32(g_img))
            v = r(v_neg_noimg + r(r(v_neg - v_neg_noimg) * g_img))
            v = r(v + r(r(v_cond - v_neg) * ms.Tensor(np.float32(g_txt))))
            img = _euler(r, img, v, t_curr, t_next)
            check_sampler_step(img, "v2 sampler", i + 1, len(timesteps) - 1)
        return img.astype(dtype)


class DistilledDenoiser:
    """Flux-dev's loop: no CFG, ``guidance`` through the model's guidance embedding (upstream: 4.0)."""

    def __init__(self, guidance: float = 4.0):
        self.guidance = float(guidance)

    def denoise(self, model, img, timesteps: list[float], text: Mapping[str, Any], dtype=ms.float32,
                progress_bar: bool = False) -> ms.Tensor:
        """``img`` (B, L, D) packed noise, ``text`` for the B rows -> the packed latent."""
        r = _Rounding(dtype)
        b = img.shape[0]
        prepared = model.prepare_conditioning(**text, guidance=r.full(b, self.guidance))
        img = r(img.astype(ms.float32))
        for i in progress(range(len(timesteps) - 1), progress_bar, "flux denoise"):
            t_curr, t_next = timesteps[i], timesteps[i + 1]
            pred = model(img.astype(dtype), timesteps=r.full(b, t_curr), **prepared)
            img = _euler(r, img, pred.astype(ms.float32), t_curr, t_next)
            check_sampler_step(img, "flux sampler", i + 1, len(timesteps) - 1)
        return img.astype(dtype)
