"""Video size, frame count, fps and the model's size/fps inputs, from presets or explicit values.

Upstream 1.2 rules: ``image_size`` wins over ``resolution`` + ``aspect_ratio`` (an H:W key, so
"9:16" at 240p is 240x426); ``num_frames`` takes "4s"/"2x" presets; an image (1 frame) is
conditioned on fps 120 (``IMG_FPS``); files are written at ``save_fps`` (default
``fps // frame_interval``).
"""
from __future__ import annotations

import numpy as np

from ..config import ConfigError
from ..datasets.aspect import get_image_size

IMG_FPS = 120
MULTI_RESOLUTION_TYPES = (None, "STDiT2", "OpenSora")


def resolve_image_size(image_size=None, resolution=None, aspect_ratio=None) -> tuple[int, int]:
    """(height, width): ``image_size`` if given, else the preset table entry."""
    if image_size is not None and None in list(image_size):
        image_size = None  # "--image-size null" clears a config's explicit size
    if image_size is not None:
        if len(image_size) != 2 or any(int(v) <= 0 for v in image_size):
            raise ConfigError(f"image_size must be two positive integers (height width), got {image_size}")
        return int(image_size[0]), int(image_size[1])
    if resolution is None or aspect_ratio is None:
        raise ConfigError("give --image-size H W, or both --resolution (e.g. 240p) and --aspect-ratio (e.g. 9:16)")
    return tuple(int(v) for v in get_image_size(str(resolution), str(aspect_ratio)))


def resolve_save_fps(save_fps, fps, frame_interval=1) -> int:
    if save_fps is not None:
        return int(save_fps)
    return max(1, int(fps) // max(1, int(frame_interval or 1)))


def model_size_args(info_type, batch_size: int, image_size, num_frames: int, fps) -> dict:
    """The model's extra inputs for a batch (upstream ``prepare_multi_resolution_info``), as float32 arrays.

    "STDiT2"/"OpenSora": height, width, num_frames, ar (H/W), fps (120 for images); None: nothing
    (STDiT 1.0 takes none). The rflow timestep transform also reads height/width/num_frames.
    """
    if info_type not in MULTI_RESOLUTION_TYPES:
        raise ConfigError(f"multi_resolution must be one of {MULTI_RESOLUTION_TYPES}, got {info_type!r}")
    if info_type is None:
        return {}
    h, w = image_size
    fps = fps if num_frames > 1 else IMG_FPS

    def full(value):
        return np.full((batch_size,), value, dtype=np.float32)

    return {"height": full(h), "width": full(w), "num_frames": full(num_frames), "ar": full(h / w), "fps": full(fps)}
