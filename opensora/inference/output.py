"""Output files: upstream's names, PNG for one frame, H.264 MP4 otherwise, written atomically.

Names: ``{save_dir}/{sample_name or "sample"}_{idx:04d}`` (``-k`` appended when num_sample > 1);
with ``prompt_as_path`` the (file-name-safe) prompt replaces ``_{idx:04d}`` and the default
prefix is empty. Latents (``save_latent`` / ``no_vae_decode``) go to ``latents/<name>.npz`` next to the
video.

:func:`plan_outputs` lists every file of a run before any model is loaded: each must lie inside
``save_dir`` and no two samples may share one (an error naming them). :func:`apply_existing_policy`
then decides what happens to files that already exist: by default that is an error naming them;
``overwrite`` replaces them; ``skip_existing`` (the default with ``prompt_as_path``, as upstream)
keeps every sample whose files all exist and makes the others.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..utils.outputs import OutputError, check_distinct, inside
from .prompts import safe_file_name

logger = logging.getLogger(__name__)


def save_path_name(save_dir: str, sample_name=None, sample_idx: int = 0, prompt: str = "",
                   prompt_as_path: bool = False, num_sample: int = 1, k: int = 0) -> str:
    """The output path without extension (upstream ``get_save_path_name``), inside ``save_dir``."""
    if sample_name is None:
        sample_name = "" if prompt_as_path else "sample"
    suffix = safe_file_name(prompt) if prompt_as_path else f"_{sample_idx:04d}"
    name = f"{sample_name}{suffix}"
    if num_sample != 1:
        name = f"{name}-{k}"
    return inside(save_dir, name, "--sample-name" if not prompt_as_path else "the prompt as a file name")


def latent_file(path_no_ext: str) -> str:
    return os.path.join(os.path.dirname(path_no_ext), "latents", os.path.basename(path_no_ext) + ".npz")


@dataclass(frozen=True)
class SampleOutput:
    """The files one sample (prompt ``index``, sample ``k``) writes; ``base`` is the path without extension."""

    index: int
    k: int
    base: str
    files: tuple[str, ...]

    def finished(self) -> bool:
        return all(os.path.isfile(f) for f in self.files)


def sample_files(base: str, video_ext: str | None, latent: bool, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A sample's files: its video (``video_ext``: ".mp4"/".png", None when no video is written), its latent,
    then ``extra`` (files a pipeline writes beside them)."""
    return ((base + video_ext,) if video_ext else ()) + ((latent_file(base),) if latent else ()) + tuple(extra)


def check_plan(plan: list[SampleOutput], texts: dict[int, str], num_sample: int) -> list[SampleOutput]:
    """Refuses two samples of ``plan`` that would write one file, naming their prompts (``texts`` by index)."""
    claims = [(f"prompt {s.index} ({texts[s.index][:60]!r})" + (f" sample {s.k}" if num_sample > 1 else ""), f)
              for s in plan for f in s.files]
    check_distinct(claims, "sample")
    return plan


def plan_outputs(save_dir: str, texts: list[str], start_index: int, sample_name, prompt_as_path: bool,
                 num_sample: int, video_ext: str | None, latent: bool) -> list[SampleOutput]:
    """Every sample's files (``video_ext``: ".mp4"/".png", None when no video is written); refuses names that
    leave ``save_dir`` and two samples that would write one file."""
    plan = []
    for j, text in enumerate(texts):
        for k in range(num_sample):
            base = save_path_name(save_dir, sample_name, start_index + j, text, prompt_as_path, num_sample, k)
            plan.append(SampleOutput(start_index + j, k, base, sample_files(base, video_ext, latent)))
    return check_plan(plan, {start_index + j: text for j, text in enumerate(texts)}, num_sample)


def skip_existing_of(cfg) -> bool:
    """``--skip-existing``; unset, it follows ``--prompt-as-path`` (upstream skips finished prompts then)."""
    return cfg.prompt_as_path if cfg.skip_existing is None else cfg.skip_existing


def apply_existing_policy(plan: list[SampleOutput], overwrite: bool, skip_existing: bool) -> list[SampleOutput]:
    """-> the samples to make. Existing files: replaced (``overwrite``), their samples skipped when all
    their files exist (``skip_existing``), or an :class:`OutputError` naming them (neither)."""
    if overwrite and skip_existing:
        raise OutputError("--overwrite and --skip-existing contradict each other; give one")
    existing = [f for s in plan for f in s.files if os.path.isfile(f)]
    if not existing:
        return list(plan)
    if overwrite:
        logger.warning("--overwrite: %d existing output file(s) will be replaced", len(existing))
        return list(plan)
    if skip_existing:
        todo = [s for s in plan if not s.finished()]
        if len(todo) < len(plan):
            logger.info("skipping %d finished sample(s) whose files exist", len(plan) - len(todo))
        return todo
    shown = ", ".join(os.path.basename(f) for f in existing[:3]) + (" ..." if len(existing) > 3 else "")
    raise OutputError(f"{len(existing)} output file(s) of this run already exist in {os.path.dirname(existing[0])} "
                      f"({shown}): give --overwrite true to replace them, --skip-existing true to keep them and "
                      "make only the missing ones (e.g. after an interruption), or another --save-dir")


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
