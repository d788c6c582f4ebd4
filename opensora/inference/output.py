"""Output files: upstream's names, PNG for one frame, H.264 MP4 otherwise, written atomically.

Names: ``{save_dir}/{sample_name or "sample"}_{idx:04d}`` (``-k`` appended when num_sample > 1);
with ``prompt_as_path`` the (file-name-safe) prompt replaces ``_{idx:04d}`` and the default
prefix is empty, and finished files are skipped so that a rerun resumes.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .prompts import safe_file_name

logger = logging.getLogger(__name__)


def save_path_name(save_dir: str, sample_name=None, sample_idx: int = 0, prompt: str = "",
                   prompt_as_path: bool = False, num_sample: int = 1, k: int = 0) -> str:
    """The output path without extension (upstream ``get_save_path_name``)."""
    if sample_name is None:
        sample_name = "" if prompt_as_path else "sample"
    suffix = safe_file_name(prompt) if prompt_as_path else f"_{sample_idx:04d}"
    path = os.path.join(save_dir, f"{sample_name}{suffix}")
    if num_sample != 1:
        path = f"{path}-{k}"
    return path


def finished(path_no_ext: str) -> bool:
    """A sample is finished when its .mp4 or .png exists (files are written atomically)."""
    return os.path.isfile(path_no_ext + ".mp4") or os.path.isfile(path_no_ext + ".png")


def to_uint8(video: np.ndarray) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> (T, H, W, C) uint8, rounding as upstream (x*255 + 0.5, clamped)."""
    x = (np.clip(np.asarray(video, dtype=np.float32), -1.0, 1.0) + 1.0) / 2.0
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 3, 0)


def save_sample(video: np.ndarray, save_path: str, fps: int) -> str:
    """Write (C, T, H, W) in [-1, 1] as ``save_path.png`` (T == 1) or ``save_path.mp4``; -> the path."""
    frames = to_uint8(video)
    ext = ".png" if frames.shape[0] == 1 else ".mp4"
    path = save_path + ext
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(save_path)}.tmp{os.getpid()}{ext}")
    try:
        if ext == ".png":
            from PIL import Image

            Image.fromarray(frames[0]).save(tmp)
        else:
            write_mp4(tmp, frames, fps)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("saved %s", path)
    return path


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 -> H.264 MP4 at the exact size (yuv420p needs even sizes; odd ones use yuv444p)."""
    import imageio

    even = frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                     ffmpeg_log_level="error", pixelformat="yuv420p" if even else "yuv444p")
