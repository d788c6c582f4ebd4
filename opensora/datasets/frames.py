"""Reading a clip and turning it into the model's input, for training.

Thin glue over :func:`opensora.datasets.video_io.read_video` (decord, imageio fallback; images are one
frame) and :func:`opensora.datasets.transforms.get_transform` (upstream's ``center`` / ``resize_crop``),
so that training, the latent cache and inference see the same pixels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .transforms import get_transform
from .video_io import read_video


def read_clip(path: str, pick: Callable[[int], np.ndarray] | None):
    """Frames (T, H, W, 3) uint8 and fps; ``pick(total)`` chooses the frame indices (None: all frames)."""
    frames, info = read_video(path)
    fps = float(info.get("video_fps") or info.get("fps") or 24.0)
    if pick is not None:
        frames = frames[pick(len(frames))]
    return np.asarray(frames), fps


def transform_clip(frames: np.ndarray, name: str, size) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, h, w) float32 in [-1, 1] with upstream's transform ``name``."""
    return np.ascontiguousarray(get_transform(name)(frames, tuple(size)), dtype=np.float32)
