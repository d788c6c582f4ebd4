"""Open-Sora 2.0's conditioning types: which reference frames each reads, and the masks the model sees.

Upstream (``opensora/utils/inference.py``: ``collect_references_batch``, ``prepare_inference_condition``):

========================  =========================================  ====================================
cond_type                 pixel frames read from the reference(s)    latent frames conditioned (k of T)
========================  =========================================  ====================================
``t2v``                   none                                       none
``i2v_head``              the first frame of the first path          frame 0
``i2v_tail``              the last frame of the last path            frame T-1
``i2v_loop``              first frame of the first path and last     frames 0 and T-1
                          frame of the last path (``a.png;b.png``)
``v2v_head`` / ``_tail``  the first / last 33 frames of a video      the first / last 9
``v2v_head_easy``/``_tail_easy``  the first / last 65 frames         the first / last 17
========================  =========================================  ====================================

The model gets ``cat(mask (1 channel), masked reference latent (C channels))`` per latent frame.
Nothing is conditioned when the output is a single frame (an image). Where upstream prints a warning
and falls back to text-to-video (a missing reference) or crashes (an ``_easy`` video shorter than 65
frames falls back to 33 frames and then fails to fit 17 latent frames), this port stops with a clear
error before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config import ConfigError


@dataclass(frozen=True)
class CondType:
    name: str
    head: int = 0  # latent frames conditioned at the start
    tail: int = 0  # ... and at the end
    video_frames: int = 0  # pixel frames a video reference must give (v2v); 0: one image frame per end

    @property
    def needs_reference(self) -> bool:
        return self.head + self.tail > 0

    @property
    def is_i2v(self) -> bool:
        """Image conditioning: the image-guidance ramp over latent time applies (``"i2v" in cond_type``)."""
        return "i2v" in self.name


# v2v: 8 latent frames plus the causal VAE's first frame (upstream: 8 + int(causal)), from 32 + 1 frames
COND_TYPES = {c.name: c for c in (
    CondType("t2v"),
    CondType("i2v_head", head=1),
    CondType("i2v_tail", tail=1),
    CondType("i2v_loop", head=1, tail=1),
    CondType("v2v_head", head=9, video_frames=33),
    CondType("v2v_tail", tail=9, video_frames=33),
    CondType("v2v_head_easy", head=17, video_frames=65),
    CondType("v2v_tail_easy", tail=17, video_frames=65),
)}


def cond_type_of(name) -> CondType:
    if name not in COND_TYPES:
        raise ConfigError(f"unknown cond_type {name!r}; choose one of {', '.join(COND_TYPES)}")
    return COND_TYPES[name]


def reference_clips(cond: CondType, paths: list[str], read) -> list[np.ndarray]:
    """The pixel clips (3, t, H, W) to encode for one prompt, in upstream's order; ``read(path)`` gives a
    whole clip (3, T, H, W) in [-1, 1] (an image is one frame)."""
    if not cond.needs_reference:
        return []
    if cond.video_frames:
        clip = read(paths[0])
        have = clip.shape[1]
        if have < cond.video_frames:
            raise ConfigError(f"{cond.name} needs a reference video of at least {cond.video_frames} frames; "
                              f"{paths[0]} has {have}")
        return [clip[:, :cond.video_frames] if cond.head else clip[:, -cond.video_frames:]]
    clips = []
    if cond.head:
        clips.append(read(paths[0])[:, :1])
    if cond.tail:
        clips.append(read(paths[-1])[:, -1:])
    return clips


def inference_condition(cond: CondType, shape, refs: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (B, 1, T, H, W), masked reference (B, C, T, H, W))`` for latents of ``shape``; ``refs[i]``:
    the encoded reference latents (C, t, H, W) of sample i, as :func:`reference_clips` orders them."""
    b, c, t, h, w = shape
    masks = np.zeros((b, 1, t, h, w), np.float32)
    masked = np.zeros((b, c, t, h, w), np.float32)
    if t == 1 or not cond.needs_reference:
        return masks, masked
    if len(refs) != b:
        raise ValueError(f"{len(refs)} reference lists for a batch of {b}")
    if max(cond.head, cond.tail) > t:
        raise ConfigError(f"{cond.name} conditions {max(cond.head, cond.tail)} latent frames but the video has "
                          f"only {t}: generate more frames")
    for i, ref in enumerate(refs):
        if cond.head:
            masks[i, :, :cond.head] = 1
            masked[i, :, :cond.head] = ref[0][:, :cond.head]
        if cond.tail:
            masks[i, :, t - cond.tail:] = 1
            masked[i, :, t - cond.tail:] = ref[-1][:, ref[-1].shape[1] - cond.tail:]
    return masks, masked
