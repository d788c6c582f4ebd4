"""Reading a clip and turning it into the model's input, for training.

Thin glue over the VAE teammate's :mod:`opensora.datasets.video_io` (``read_video``: decord, imageio
fallback) and :mod:`opensora.datasets.transforms` (upstream's ``center`` and ``resize_crop``), so that
training, the latent cache and inference see the same pixels. Images are one-frame clips.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .dataset import SampleError, is_image


def _read_video_frames(path: str):
    """(frames (T, H, W, 3) uint8 indexable, fps) via video_io.read_video."""
    from .video_io import read_video

    out = read_video(path)
    frames, info = (out if isinstance(out, tuple) else (out, {}))
    fps = info.get("video_fps", info.get("fps", 24.0)) if isinstance(info, dict) else float(info)
    return frames, float(fps or 24.0)


def read_clip(path: str, pick: Callable[[int], np.ndarray] | None):
    """Frames (T, H, W, 3) uint8 and fps; ``pick(total)`` chooses frame indices (None: an image)."""
    if is_image(path) or pick is None:
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))[None]
    frames, fps = _read_video_frames(path)
    total = len(frames)
    if total == 0:
        raise SampleError(f"{path}: no frames decoded")
    indices = pick(total)
    clip = np.asarray(frames[indices] if hasattr(frames, "__getitem__") else [frames[i] for i in indices])
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise SampleError(f"{path}: unexpected frame array of shape {clip.shape}")
    return clip, fps


def transform_clip(frames: np.ndarray, name: str, size) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1] with upstream's transform ``name``."""
    from . import transforms

    fn = {"center": "center_crop_video", "resize_crop": "resize_crop_video"}.get(name)
    if fn is None:
        raise ValueError(f"transform_name must be 'center' or 'resize_crop', got {name!r}")
    return np.ascontiguousarray(getattr(transforms, fn)(frames, tuple(size)), dtype=np.float32)


def video_suffix_ok(path: str) -> bool:
    return os.path.splitext(path)[1] != ""
