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


def save_sample(video: np.ndarray, save_path: str, fps: int) -> str:
    """Write (C, T, H, W) in [-1, 1] as ``save_path.png`` (T == 1) or H.264 ``save_path.mp4``, atomically,
    with the project's one video writer (the same one the three-stage decoder uses); -> the path."""
    from ..datasets.video_io import save_video

    path = save_video(np.asarray(video, dtype=np.float32), save_path, fps=float(fps), layout="cthw")
    logger.info("saved %s", path)
    return path


def save_latent(latent: np.ndarray, path: str, num_frames: int, fps: float) -> str:
    """A sampled latent (C, T, H, W) for ``scripts/infer_vae_decode.py``: keys ``latent``, ``num_frames``
    (pixel frames to decode) and ``fps`` (its layout; the latent *cache* of training is another one)."""
    from ..datasets.embedding_cache import atomic_savez

    atomic_savez(path, latent=np.asarray(latent, dtype=np.float32), num_frames=np.int32(num_frames),
                 fps=np.float32(fps))
    return path
