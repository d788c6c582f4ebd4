"""Gaussian diffusion schedules in NumPy (float64): betas, respacing, and every derived coefficient.

No tensors here: samplers and training losses look coefficients up with
:func:`opensora.schedulers.iddpm.diffusion.extract`. Formulas follow IDDPM (Nichol & Dhariwal) as
upstream Open-Sora uses them: linear betas from ``1e-4`` to ``0.02`` (scaled by ``1000 / T``),
and respacing that keeps ``alphas_cumprod`` at the retained steps.
"""
from __future__ import annotations

import math

import numpy as np


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Ho et al.'s linear schedule, stretched so any ``num_timesteps`` covers the same noise range."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """IDDPM's cosine schedule ("squaredcos_cap_v2")."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def named_betas(name: str, num_timesteps: int) -> np.ndarray:
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "squaredcos_cap_v2":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; use 'linear' or 'squaredcos_cap_v2'")


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The retained steps of the original process, ascending.

    ``section_counts``: an int or "N" (N evenly spread steps), "a,b,c" (the process cut in equal
    sections, each strided to its count) or "ddimN" (DDIM's integer stride).
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


def respace_betas(betas: np.ndarray, use_timesteps) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process that only visits ``use_timesteps``, and the map new index -> original step."""
    keep = set(int(t) for t in use_timesteps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    last, new_betas, timestep_map = 1.0, [], []
    for i, acp in enumerate(alphas_cumprod):
        if i in keep:
            new_betas.append(1.0 - acp / last)
            last = acp
            timestep_map.append(i)
    return np.array(new_betas, dtype=np.float64), np.array(timestep_map, dtype=np.int64)


class DiffusionSchedule:
    """All per-step coefficients of a (possibly respaced) Gaussian diffusion, float64 arrays of length T."""

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(self.num_timesteps) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the posterior variance is 0 at t = 0: its log is clipped to the value at t = 1
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if self.num_timesteps > 1 else np.array([], dtype=np.float64)
        )
        self.log_betas = np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def create(cls, noise_schedule: str = "linear", diffusion_steps: int = 1000, timestep_respacing=None):
        """Upstream's construction: ``timestep_respacing`` None/"" keeps all steps, else see space_timesteps."""
        betas = named_betas(noise_schedule, diffusion_steps)
        if timestep_respacing is None or timestep_respacing == "":
            return cls(betas)
        new_betas, timestep_map = respace_betas(betas, space_timesteps(diffusion_steps, timestep_respacing))
        return cls(new_betas, timestep_map)
