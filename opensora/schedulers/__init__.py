"""Samplers and the diffusion math they share with training: IDDPM, DPM-solver, rectified flow.

Every sampler has the same entry point (see :class:`~opensora.schedulers.guidance.TextCondition`)::

    scheduler.sample(model, z, text, model_kwargs=..., mask=..., generator=..., progress=...)

where ``z`` is the initial noise, ``text`` holds the caption embeddings, their mask and the
unconditional (learned null, or negative-prompt) embeddings, ``model_kwargs`` the model's extra
inputs (fps, height, width, ...) and ``mask`` the per-latent-frame conditioning mask of the
mask strategy. A given noise, text and generator seed always give the same latent.
"""
from .guidance import TextCondition, apply_guidance
from .registry import SCHEDULERS

__all__ = ["SCHEDULERS", "TextCondition", "apply_guidance", "build_scheduler"]


def build_scheduler(cfg: dict):
    """``{"type": "rflow", ...}`` -> scheduler instance."""
    return SCHEDULERS.build(cfg)
