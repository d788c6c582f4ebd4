"""IDDPM sampler (Open-Sora 1.0 / 1.1): linear betas, 1000 steps, learned sigma, respaced sampling.

``IDDPM(num_sampling_steps=100, cfg_scale=7.0, cfg_channel=3)`` as in upstream's configs.
Guidance is applied to the first ``cfg_channel`` output channels (None: half of the outputs, i.e.
all latent channels of the epsilon prediction); the learned variance comes from the conditional
branch. Frame conditioning follows upstream's ``p_sample``: an edit ratio r is scaled to the
respaced step count N, the frame is kept as the reference while ``t > int(r * N)``, re-noised to
step ``int(r * N)`` when the loop reaches it, and denoised afterwards.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import ops

from ...utils.finite import check_sampler_step
from ..guidance import GuidedModel, TextCondition, apply_guidance
from ..noise import make_rng, progress, randn
from ..registry import SCHEDULERS
from .diffusion import GaussianDiffusion
from .schedule import DiffusionSchedule, linear_betas, respace_betas, space_timesteps

__all__ = ["IDDPM", "GaussianDiffusion", "DiffusionSchedule", "linear_betas", "respace_betas", "space_timesteps"]


@SCHEDULERS.register("iddpm")
class IDDPM(GaussianDiffusion):
    def __init__(
        self,
        num_sampling_steps=None,
        timestep_respacing=None,
        noise_schedule="linear",
        use_kl=False,
        sigma_small=False,
        predict_xstart=False,
        learn_sigma=True,
        rescale_learned_sigmas=False,
        diffusion_steps=1000,
        cfg_scale=4.0,
        cfg_channel=None,
    ):
        if num_sampling_steps is not None:
            if timestep_respacing not in (None, ""):
                raise ValueError("give either num_sampling_steps or timestep_respacing, not both")
            timestep_respacing = str(int(num_sampling_steps))
        if use_kl:
            loss_type = "rescaled_kl"
        elif rescale_learned_sigmas:
            loss_type = "rescaled_mse"
        else:
            loss_type = "mse"
        var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
        schedule = DiffusionSchedule.create(noise_schedule, diffusion_steps, timestep_respacing)
        super().__init__(schedule, "start_x" if predict_xstart else "epsilon", var_type, loss_type)
        self.cfg_scale = float(cfg_scale)
        self.cfg_channel = cfg_channel
        self.num_sampling_steps = self.num_timesteps

    def p_sample(self, guided: GuidedModel, x, i: int, rng, scale: float, mask_t=None):
        """One reverse step from respaced index ``i``; ``mask_t`` (B, T) int: per-frame re-noise step."""
        b = x.shape[0]
        t = ms.Tensor(np.full((b,), i, dtype=np.int32))
        x_mask = x0 = None
        if mask_t is not None:
            x0 = x
            s = self.schedule
            x_noise = x0 * float(s.sqrt_alphas_cumprod[i]) + randn(rng, x.shape) * float(
                s.sqrt_one_minus_alphas_cumprod[i])
            renoise = ms.Tensor(mask_t == i)[:, None, :, None, None]
            x = ops.where(renoise, x_noise, x0)
            x_mask = ms.Tensor(mask_t > i)
        cond, uncond = guided(x, self.model_timesteps(t), x_mask)
        channels = self.cfg_channel if self.cfg_channel is not None else cond.shape[1] // 2
        out = self.p_mean_variance(apply_guidance(cond, uncond, scale, channels), x, t)
        noise = randn(rng, x.shape)
        sample = out["mean"] + (1.0 if i > 0 else 0.0) * ops.exp(0.5 * out["log_variance"]) * noise
        if mask_t is not None:
            sample = ops.where(ms.Tensor(mask_t < i)[:, None, :, None, None], x0, sample)
        return sample

    def sample(self, model, z, text: TextCondition, model_kwargs=None, mask=None, generator=None,
               progress_bar: bool = True, guidance_scale=None, dtype=ms.float32):
        """Denoise ``z`` (B, C, T, H, W) from pure noise; ``mask`` (B, T) edit ratios in [0, 1] or None."""
        rng = make_rng(generator)
        scale = self.cfg_scale if guidance_scale is None else float(guidance_scale)
        guided = GuidedModel(model, text, model_kwargs, dtype)
        x = ops.stop_gradient(z).astype(ms.float32)
        mask_t = None
        if mask is not None:
            m = mask.asnumpy() if isinstance(mask, ms.Tensor) else np.asarray(mask)
            # upstream: (mask * len(betas)).int() in float32
            mask_t = (m.astype(np.float32) * np.float32(self.num_timesteps)).astype(np.int32)
        steps = list(range(self.num_timesteps))[::-1]
        for n, i in enumerate(progress(steps, progress_bar, "iddpm")):
            x = self.p_sample(guided, x, i, rng, scale, mask_t)
            check_sampler_step(x, "iddpm", n + 1, len(steps))
        return x

