"""Frame masks for conditioned training (Open-Sora 1.1/1.2 ``MaskGenerator``), drawn on the host.

A mask is one boolean per latent frame: True = generated (noised, in the loss), False = a conditioning
frame (kept clean with t=0, excluded from the loss). Training with them teaches image-to-video
(``image_head``), extension (``quarter_head``), connection (``*_head_tail``) and interpolation.
Names, ratios and the per-type rules follow upstream; ``intepolate`` keeps upstream's spelling, and
1.1's names (``mask_no``, ``mask_image_head``, ...) are accepted too.
Randomness comes from a NumPy Generator passed in, so a resumed run draws the same masks.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import ConfigError

MASK_TYPES = ("identity", "quarter_random", "quarter_head", "quarter_tail", "quarter_head_tail",
              "image_random", "image_head", "image_tail", "image_head_tail", "random", "intepolate")


V1_1_NAMES = {"mask_no": "identity"}  # Open-Sora 1.1 spells the types with a "mask_" prefix


def canonical_mask_name(name: str) -> str:
    name = str(name)
    if name in V1_1_NAMES:
        return V1_1_NAMES[name]
    return name[len("mask_"):] if name.startswith("mask_") else name


class MaskGenerator:
    def __init__(self, mask_ratios: dict):
        ratios = {}
        for name, value in dict(mask_ratios or {}).items():
            key = canonical_mask_name(name)
            ratios[key] = ratios.get(key, 0.0) + float(value)
        for name, value in ratios.items():
            if name not in MASK_TYPES:
                raise ConfigError(f"mask_ratios: unknown mask type {name!r}; valid types: {', '.join(MASK_TYPES)}")
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"mask_ratios: {name} = {value} must be within [0, 1]")
        if "identity" not in ratios:
            ratios["identity"] = 1.0 - sum(float(v) for v in ratios.values())
        total = sum(float(v) for v in ratios.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6) or ratios["identity"] < -1e-9:
            raise ConfigError(f"mask_ratios must sum to at most 1 (identity takes the rest), got {total:.4f}")
        self.mask_ratios = {k: float(v) for k, v in ratios.items()}

    def pick(self, rng: np.random.Generator) -> str:
        draw, acc = rng.random(), 0.0
        for name, ratio in self.mask_ratios.items():
            acc += ratio
            if draw < acc:
                return name
        return "identity"

    def get_mask(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        name = self.pick(rng)
        mask = np.ones(num_frames, dtype=bool)
        if num_frames <= 1:
            return mask
        quarter = max(1, num_frames // 4)  # upstream hard-codes condition frames <= T // 4
        if name == "quarter_random":
            size = int(rng.integers(1, quarter + 1))
            pos = int(rng.integers(0, num_frames - size + 1))
            mask[pos:pos + size] = False
        elif name == "image_random":
            mask[int(rng.integers(0, num_frames))] = False
        elif name == "quarter_head":
            mask[:int(rng.integers(1, quarter + 1))] = False
        elif name == "image_head":
            mask[:1] = False
        elif name == "quarter_tail":
            mask[-int(rng.integers(1, quarter + 1)):] = False
        elif name == "image_tail":
            mask[-1:] = False
        elif name == "quarter_head_tail":
            size = int(rng.integers(1, quarter + 1))
            mask[:size] = False
            mask[-size:] = False
        elif name == "image_head_tail":
            mask[:1] = False
            mask[-1:] = False
        elif name == "intepolate":
            mask[int(rng.integers(0, 2))::2] = False
        elif name == "random":
            ratio = rng.uniform(0.1, 0.9)
            mask = rng.random(num_frames) > ratio
            if not mask.any():
                mask[-1] = True
        return mask

    def get_masks(self, batch_size: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self.get_mask(num_frames, rng) for _ in range(batch_size)])
