"""DPM-Solver++ (multistep, order 2) over the discrete linear-beta process, as upstream's "dpm-solver".

Upstream (Open-Sora 1.0-1.2, ``opensora/schedulers/dpms``) wraps the model as a noise predictor
(the first half of its output channels), with classifier-free guidance on all of them, and runs
``DPM_Solver(algorithm_type="dpmsolver++").sample(steps=N, order=2, skip_type="time_uniform",
method="multistep")`` with ``lower_order_final`` (a first-order last step when N < 10).

Continuous time t in [1/1000, 1]: ``log alpha_t`` is the piecewise-linear interpolation of
``0.5 * cumsum(log(1 - beta))`` at t_n = (n + 1) / 1000, ``sigma_t = sqrt(1 - alpha_t^2)``,
``lambda_t = log alpha_t - log sigma_t``; the model sees ``(t - 1/1000) * 1000``. The schedule is
scalar per step, so it is computed in float64 on the host; only the latent updates are tensors.
It does not support frame conditioning (masks), like upstream.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import ops

from .guidance import GuidedModel, TextCondition, apply_guidance
from .iddpm.schedule import named_betas
from ..utils.finite import check_sampler_step
from .noise import progress
from .registry import SCHEDULERS


class NoiseScheduleVP:
    """The discrete VP schedule in continuous time (DPM-Solver's ``NoiseScheduleVP('discrete')``)."""

    def __init__(self, betas: np.ndarray, clipped_lambda: float = -5.1):
        log_alphas = 0.5 * np.cumsum(np.log(1.0 - np.asarray(betas, dtype=np.float64)))
        # clip the tail where lambda < -5.1 (numerical trouble for cosine schedules; a no-op for linear)
        lambdas = log_alphas - 0.5 * np.log(1.0 - np.exp(2.0 * log_alphas))
        cut = int(np.searchsorted(lambdas[::-1], clipped_lambda))
        if cut > 0:
            log_alphas = log_alphas[:-cut]
        self.total_n = len(log_alphas)
        self.log_alpha_array = log_alphas
        self.t_array = np.linspace(0.0, 1.0, self.total_n + 1)[1:]

    def log_alpha(self, t: float) -> float:
        """Piecewise-linear in t, extended linearly beyond the end points."""
        xp, yp = self.t_array, self.log_alpha_array
        k = int(np.clip(np.searchsorted(xp, t) - 1, 0, len(xp) - 2))
        return float(yp[k] + (t - xp[k]) * (yp[k + 1] - yp[k]) / (xp[k + 1] - xp[k]))

    def alpha(self, t: float) -> float:
        return float(np.exp(self.log_alpha(t)))

    def sigma(self, t: float) -> float:
        return float(np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t))))

    def lam(self, t: float) -> float:
        la = self.log_alpha(t)
        return float(la - 0.5 * np.log(1.0 - np.exp(2.0 * la)))


@SCHEDULERS.register("dpm-solver")
class DPM_SOLVER:  # noqa: N801 (upstream's class name)
    def __init__(self, num_sampling_steps=None, cfg_scale=4.0, order=2, noise_schedule="linear",
                 diffusion_steps=1000):
        self.num_sampling_steps = 20 if num_sampling_steps is None else int(num_sampling_steps)
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        if self.num_sampling_steps < order:
            raise ValueError(f"num_sampling_steps ({self.num_sampling_steps}) must be >= order ({order})")
        self.cfg_scale = float(cfg_scale)
        self.order = order
        self.ns = NoiseScheduleVP(named_betas(noise_schedule, diffusion_steps))

    def time_steps(self) -> np.ndarray:
        """N + 1 uniformly spaced continuous times from 1 to 1/total_N."""
        return np.linspace(1.0, 1.0 / self.ns.total_n, self.num_sampling_steps + 1)

    def sample(self, model, z, text: TextCondition, model_kwargs=None, mask=None, generator=None,
               progress_bar: bool = True, guidance_scale=None, dtype=ms.float32):
        if mask is not None:
            raise ValueError("dpm-solver does not support frame conditioning (mask strategies, references, loops); "
                             "use the iddpm or rflow scheduler")
        scale = self.cfg_scale if guidance_scale is None else float(guidance_scale)
        guided = GuidedModel(model, text, model_kwargs, dtype)
        ns, b = self.ns, z.shape[0]

        def data_prediction(x, t: float):
            t_in = ms.Tensor(np.full((b,), (t - 1.0 / ns.total_n) * 1000.0, dtype=np.float32))
            cond, uncond = guided(x, t_in)
            half = cond.shape[1] // 2 if cond.shape[1] == 2 * x.shape[1] else cond.shape[1]
            eps = apply_guidance(cond[:, :half], uncond[:, :half], scale)
            return (x - ns.sigma(t) * eps) / ns.alpha(t)

        ts = self.time_steps()
        steps = self.num_sampling_steps
        x = ops.stop_gradient(z).astype(ms.float32)
        prev_t, prev_m = [float(ts[0])], [data_prediction(x, float(ts[0]))]
        for step in progress(range(1, steps + 1), progress_bar, "dpm-solver"):
            t = float(ts[step])
            order = min(self.order, step)  # warm-up: the first step is first order
            if steps < 10:
                order = min(order, steps + 1 - step)  # lower_order_final
            x = self._update(x, prev_m, prev_t, t, order)
            check_sampler_step(x, "dpm-solver", step, steps)
            prev_t = (prev_t + [t])[-self.order:]
            if step < steps:
                prev_m = (prev_m + [data_prediction(x, t)])[-self.order:]
        return x

    def _update(self, x, models, times, t: float, order: int):
        """DPM-Solver++ update from times[-1] to t (first order, or second order multistep)."""
        ns = self.ns
        s0 = times[-1]
        lam_s0, lam_t = ns.lam(s0), ns.lam(t)
        h = lam_t - lam_s0
        phi_1 = float(np.expm1(-h))
        ratio = ns.sigma(t) / ns.sigma(s0)
        a_t = ns.alpha(t)
        if order == 1:
            return ratio * x - (a_t * phi_1) * models[-1]
        s1 = times[-2]
        r0 = float((lam_s0 - ns.lam(s1)) / h)
        d1 = (1.0 / r0) * (models[-1] - models[-2])
        return ratio * x - (a_t * phi_1) * models[-1] - 0.5 * (a_t * phi_1) * d1
