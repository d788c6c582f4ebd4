"""Upstream's video transforms in numpy (no torch, no torchvision): opensora/v1.2 datasets/utils.py
``get_transforms_video`` and video_transforms.py.

- ``center`` (``UCFCenterCropVideo``): scale so the short edge equals the target height, bilinear, then
  a center crop to (height, width).
- ``resize_crop`` (``ResizeCrop`` / ``resize_crop_to_fill``): scale so the frame covers the target,
  bilinear, then crop the middle of the long side.
- ``normalize``: uint8 [0, 255] -> float32 [-1, 1] (``ToTensorVideo`` + ``Normalize(0.5, 0.5)``).
Bilinear resizing follows ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
(no antialiasing), as upstream. Frames are (T, H, W, C); the ``*_video`` helpers return (C, T, H, W).
"""
from __future__ import annotations

import numpy as np

TRANSFORMS = ("center", "resize_crop")


def _axis_weights(in_size: int, out_size: int, scale: float | None = None):
    """Source indices and weights of a 1-D linear resize, align_corners=False (torch's rule:
    ``src = (dst + 0.5) / scale - 0.5``, clamped at 0)."""
    scale = out_size / in_size if scale is None else scale
    src = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


def resize_bilinear(frames: np.ndarray, size, scale: float | None = None) -> np.ndarray:
    """(T, H, W, C) -> (T, h, w, C) float32. ``scale``: the factor used for coordinates when the
    size came from ``scale_factor`` (as upstream's ``resize_scale``)."""
    h, w = int(size[0]), int(size[1])
    x = frames.astype(np.float32, copy=False)
    lo, hi, f = _axis_weights(x.shape[1], h, scale)
    x = x[:, lo] * (1 - f)[None, :, None, None] + x[:, hi] * f[None, :, None, None]
    lo, hi, f = _axis_weights(x.shape[2], w, scale)
    return x[:, :, lo] * (1 - f)[None, None, :, None] + x[:, :, hi] * f[None, None, :, None]


def _crop(frames, i, j, h, w):
    if i < 0 or j < 0 or i + h > frames.shape[1] or j + w > frames.shape[2]:
        raise ValueError(f"crop ({i}, {j}, {h}, {w}) outside frames of size {frames.shape[1:3]}")
    return frames[:, i:i + h, j:j + w]


def center_crop(frames: np.ndarray, size) -> np.ndarray:
    """``UCFCenterCropVideo``: short edge -> size[0] (scale_factor = size[0] / min(H, W)), center crop."""
    th, tw = int(size[0]), int(size[1])
    height, width = frames.shape[1:3]
    scale = th / min(height, width)
    # torch's interpolate(scale_factor=s): output floor(in * s), coordinates mapped with s itself
    out = resize_bilinear(frames, (int(np.floor(height * scale)), int(np.floor(width * scale))), scale)
    if out.shape[1] < th or out.shape[2] < tw:
        raise ValueError(f"frames {height}x{width} scaled to {out.shape[1]}x{out.shape[2]} are smaller than the "
                         f"crop {th}x{tw}; use the resize_crop transform for this aspect ratio")
    i = int(round((out.shape[1] - th) / 2.0))
    j = int(round((out.shape[2] - tw) / 2.0))
    return _crop(out, i, j, th, tw)


def resize_crop(frames: np.ndarray, size) -> np.ndarray:
    """``resize_crop_to_fill``: scale so both sides cover the target, then crop the middle of the long side."""
    th, tw = int(size[0]), int(size[1])
    height, width = frames.shape[1:3]
    rh, rw = th / height, tw / width
    if rh > rw:
        sh, sw = th, round(width * rh)
        out, i, j = resize_bilinear(frames, (sh, sw)), 0, int(round(sw - tw) / 2.0)
    else:
        sh, sw = round(height * rw), tw
        out, i, j = resize_bilinear(frames, (sh, sw)), int(round(sh - th) / 2.0), 0
    return _crop(out, i, j, th, tw)


def normalize(frames: np.ndarray) -> np.ndarray:
    """[0, 255] -> [-1, 1] float32."""
    return frames.astype(np.float32) / 127.5 - 1.0


def to_cthw(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2))


def center_crop_video(frames: np.ndarray, size) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1], upstream's ``center`` transform."""
    return to_cthw(normalize(np.clip(center_crop(frames, size), 0, 255)))


def resize_crop_video(frames: np.ndarray, size) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1], upstream's ``resize_crop`` transform."""
    return to_cthw(normalize(np.clip(resize_crop(frames, size), 0, 255)))


def get_transform(name: str):
    """``center`` / ``resize_crop`` (upstream's names; ``resize-crop``, ``center_crop`` accepted)."""
    key = name.replace("-", "_").lower()
    key = {"center_crop": "center", "resizecrop": "resize_crop"}.get(key, key)
    if key == "center":
        return center_crop_video
    if key == "resize_crop":
        return resize_crop_video
    raise ValueError(f"unknown transform {name!r}; use one of {', '.join(TRANSFORMS)}")
