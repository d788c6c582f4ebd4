"""Gaussian diffusion on MindSpore tensors: q_sample, posterior, p(x_{t-1}|x_t), training losses.

Shared by the IDDPM sampler and by training. Everything here is differentiable MindSpore ops on
tensors of shape (B, C, T, H, W) (any rank >= 2 works where no frame mask is used); timestep
arguments are int tensors of shape (B,) indexing the (respaced) schedule.

Training losses follow IDDPM with learned sigma (``LEARNED_RANGE``): the MSE on epsilon plus the
variational-bound term, computed with the mean prediction frozen (stop-gradient) so only the
variance head learns from it. With a frame mask (B, T) (True = frame is denoised), conditioned
frames are given at t = 0 and excluded from the mean.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import mindspore as ms
from mindspore import ops

from .schedule import DiffusionSchedule

# model output types (upstream's ModelMeanType / ModelVarType / LossType, as strings)
MEAN_TYPES = ("epsilon", "start_x")
VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")


def extract(arr, t, ndim: int):
    """``arr[t]`` as float32, shaped (B, 1, ..., 1) with ``ndim`` dims, for broadcasting."""
    if isinstance(arr, np.ndarray):
        arr = ms.Tensor(arr.astype(np.float32))
    out = ops.gather(arr, t.astype(ms.int32), 0)
    return out.reshape((t.shape[0],) + (1,) * (ndim - 1))


def mean_flat(tensor, mask=None):
    """Mean over all non-batch dims; with ``mask`` (B, T) only over frames where mask is True."""
    if mask is None:
        return tensor.mean(axis=tuple(range(1, tensor.ndim)))
    if tensor.ndim != 5 or tensor.shape[2] != mask.shape[1]:
        raise ValueError(f"a frame mask {tuple(mask.shape)} needs a (B, C, T, H, W) tensor, got {tuple(tensor.shape)}")
    m = mask.astype(tensor.dtype)
    per_frame = tensor.sum(axis=(1, 3, 4))  # (B, T)
    per_value = tensor.shape[1] * tensor.shape[3] * tensor.shape[4]
    return (per_frame * m).sum(axis=1) / (m.sum(axis=1) * per_value)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + ops.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * ops.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of ``x`` (data in [-1, 1] on a 1/255 grid) under a discretised Gaussian, in nats."""
    centered = x - means
    inv_std = ops.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = ops.log(ops.clamp(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = ops.log(ops.clamp(1.0 - cdf_min, min=1e-12))
    log_delta = ops.log(ops.clamp(cdf_plus - cdf_min, min=1e-12))
    return ops.where(x < -0.999, log_cdf_plus, ops.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """Tensor operations over a :class:`DiffusionSchedule`."""

    def __init__(self, schedule: DiffusionSchedule, model_mean_type: str = "epsilon",
                 model_var_type: str = "learned_range", loss_type: str = "mse"):
        for value, valid, what in ((model_mean_type, MEAN_TYPES, "model_mean_type"),
                                   (model_var_type, VAR_TYPES, "model_var_type"), (loss_type, LOSS_TYPES, "loss_type")):
            if value not in valid:
                raise ValueError(f"{what} must be one of {valid}, got {value!r}")
        self.schedule = schedule
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.num_timesteps = schedule.num_timesteps
        self._map = ms.Tensor(schedule.timestep_map.astype(np.int32))

    @property
    def learn_sigma(self) -> bool:
        return self.model_var_type == "learned_range"

    def _c(self, name: str, t, ndim: int):
        return extract(getattr(self.schedule, name), t, ndim)

    def model_timesteps(self, t):
        """Respaced index -> the original step the model was trained on (float32, as the model takes it)."""
        return ops.gather(self._map, t.astype(ms.int32), 0).astype(ms.float32)

    # ---- forward process ----
    def q_sample(self, x_start, t, noise):
        """Sample q(x_t | x_0) = sqrt(acp_t) x_0 + sqrt(1 - acp_t) noise."""
        n = x_start.ndim
        return self._c("sqrt_alphas_cumprod", t, n) * x_start + self._c("sqrt_one_minus_alphas_cumprod", t, n) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        n = x_t.ndim
        mean = self._c("posterior_mean_coef1", t, n) * x_start + self._c("posterior_mean_coef2", t, n) * x_t
        return mean, self._c("posterior_variance", t, n), self._c("posterior_log_variance_clipped", t, n)

    def predict_xstart_from_eps(self, x_t, t, eps):
        n = x_t.ndim
        return self._c("sqrt_recip_alphas_cumprod", t, n) * x_t - self._c("sqrt_recipm1_alphas_cumprod", t, n) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        n = x_t.ndim
        return (self._c("sqrt_recip_alphas_cumprod", t, n) * x_t - pred_xstart) / self._c(
            "sqrt_recipm1_alphas_cumprod", t, n)

    # ---- reverse process ----
    def p_mean_variance(self, model_output, x, t, clip_denoised: bool = False):
        """p(x_{t-1} | x_t) from a model output of 2C channels (learned range) or C channels (fixed)."""
        n, c = x.ndim, x.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"a learned-sigma model must output {2 * c} channels, got {model_output.shape[1]}")
            model_output, var_values = model_output[:, :c], model_output[:, c:]
            min_log = self._c("posterior_log_variance_clipped", t, n)
            max_log = self._c("log_betas", t, n)
            frac = (var_values + 1) / 2  # the model's [-1, 1] spans [posterior variance, beta]
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.model_var_type == "fixed_small":
            log_variance = self._c("posterior_log_variance_clipped", t, n) + ops.zeros_like(x)
        else:  # fixed_large: beta_t, with the posterior variance at t = 0 for a better decoder likelihood
            s = self.schedule
            fixed = np.log(np.append(s.posterior_variance[1], s.betas[1:]))
            log_variance = extract(fixed, t, n) + ops.zeros_like(x)
        if self.model_mean_type == "start_x":
            pred_xstart = model_output
        else:
            pred_xstart = self.predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = ops.clamp(pred_xstart, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart}

    # ---- training ----
    def vb_terms_bpd(self, model_output, x_start, x_t, t, mask=None):
        """One term of the variational bound in bits per dim: KL to the true posterior, or the decoder
        NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]), mask) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll, mask) / math.log(2.0)
        return ops.where(t == 0, nll, kl)

    def training_losses(self, model: Callable, x_start, model_kwargs=None, noise=None, mask=None, weights=None, t=None):
        """Losses for one batch: ``{"loss", "mse", "vb"}`` each of shape (B,).

        ``model(x_t, timestep, **model_kwargs)`` is called with the original-process timestep.
        ``t`` (B,) int: the respaced indices (drawn uniformly when None); ``noise``: drawn when None;
        ``mask`` (B, T) bool: frames to denoise (others are conditioning, kept at t = 0);
        ``weights``: optional per-step loss weights (length num_timesteps).
        """
        model_kwargs = model_kwargs or {}
        b = x_start.shape[0]
        if t is None:
            t = ops.randint(0, self.num_timesteps, (b,), dtype=ms.int32)
        if noise is None:
            noise = ops.randn(x_start.shape, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        if mask is not None:
            x_t0 = self.q_sample(x_start, ops.zeros_like(t), noise)
            x_t = ops.where(mask.astype(ms.bool_)[:, None, :, None, None], x_t, x_t0)
        model_output = model(x_t, self.model_timesteps(t), **model_kwargs)
        if isinstance(model_output, dict):
            model_output = model_output["x"]
        terms = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            if mask is not None:
                raise ValueError("the KL loss does not support a frame mask")
            terms["loss"] = self.vb_terms_bpd(model_output, x_start, x_t, t)
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        c = x_start.shape[1]
        eps_out = model_output
        if self.learn_sigma:
            eps_out = model_output[:, :c]
            # the VB term trains the variance only: the mean prediction is frozen inside it
            frozen = ops.concat([ops.stop_gradient(eps_out), model_output[:, c:]], axis=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t, mask)
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = noise if self.model_mean_type == "epsilon" else x_start
        sq = (target - eps_out) ** 2
        if weights is not None:
            sq = extract(np.asarray(weights, dtype=np.float32), t, x_start.ndim) * sq
        terms["mse"] = mean_flat(sq, mask)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
