"""IDDPM and DPM-solver against NumPy references written here from the formulas (IDDPM paper /
upstream gaussian_diffusion.py, respace.py, dpm_solver.py), never from the code under test."""
import numpy as np
import pytest

import mindspore as ms

from opensora.schedulers import SCHEDULERS, TextCondition
from opensora.schedulers.iddpm import IDDPM


def reference_respaced_betas(n_steps, total=1000):
    betas = np.linspace(1e-4, 0.02, total)
    stride = (total - 1) / (n_steps - 1) if n_steps > 1 else 1
    kept = sorted({int(round(i * stride)) for i in range(n_steps)})
    acp = np.cumprod(1 - betas)
    prev = np.concatenate([[1.0], acp[kept][:-1]])
    return kept, 1 - acp[kept] / prev


@pytest.mark.parametrize("n", [100, 30, 7])
def test_respaced_betas(n):
    kept, want = reference_respaced_betas(n)
    sched = IDDPM(num_sampling_steps=n, cfg_scale=7.0)
    assert sched.num_timesteps == n
    np.testing.assert_array_equal(sched.schedule.timestep_map, kept)
    np.testing.assert_allclose(sched.schedule.betas, want, rtol=1e-12)
    assert kept[0] == 0 and kept[-1] == 999


def eps_model(x, timestep, y, mask=None, x_mask=None, fps=None):
    """8 output channels: eps = 0.2 x + mean(y); variance values = 0.25 (conditional) / -0.75."""
    ym = y.mean(axis=(1, 2, 3)).reshape(-1, 1, 1, 1, 1)
    eps = 0.2 * x + ym
    var = ms.ops.zeros_like(x) + ms.ops.where(ym > 0, 0.25, -0.75)
    return ms.ops.concat([eps, var], axis=1)


def text(b):
    return TextCondition(np.full((b, 1, 3, 4), 1.0, np.float32), np.ones((b, 3), np.int32),
                         np.full((b, 1, 3, 4), -1.0, np.float32))


@pytest.mark.parametrize("cfg_channel", [None, 3])
def test_sampling_steps_match_reference(cfg_channel):
    n, scale, seed = 4, 6.0, 11
    z = np.random.default_rng(0).standard_normal((1, 4, 2, 2, 2)).astype(np.float32)
    sched = IDDPM(num_sampling_steps=n, cfg_scale=scale, cfg_channel=cfg_channel)
    out = sched.sample(eps_model, ms.Tensor(z), text(1), generator=seed, progress_bar=False).asnumpy()

    # reference: the respaced process, learned-range variance, noise drawn from the same seeded stream
    kept, betas = reference_respaced_betas(n)
    acp = np.cumprod(1 - betas)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    post_logvar = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    rng = np.random.default_rng(seed)
    x = z.astype(np.float64)
    ch = 4 if cfg_channel is None else cfg_channel
    for i in reversed(range(n)):
        e_c, e_u = 0.2 * x + 1.0, 0.2 * x - 1.0
        eps = e_c.copy()
        eps[:, :ch] = e_u[:, :ch] + scale * (e_c[:, :ch] - e_u[:, :ch])
        frac = (0.25 + 1) / 2
        logvar = frac * np.log(betas[i]) + (1 - frac) * post_logvar[i]
        x0 = np.sqrt(1 / acp[i]) * x - np.sqrt(1 / acp[i] - 1) * eps
        mean = (betas[i] * np.sqrt(acp_prev[i]) / (1 - acp[i])) * x0 + (
            (1 - acp_prev[i]) * np.sqrt(1 - betas[i]) / (1 - acp[i])) * x
        noise = rng.standard_normal(z.shape, dtype=np.float32)
        x = mean + (i > 0) * np.exp(0.5 * logvar) * noise
    np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-4)


def test_model_sees_original_timesteps():
    seen = []

    def spy(x, timestep, y, mask=None):
        seen.append(timestep.asnumpy()[0])
        return ms.ops.concat([x * 0, x * 0], axis=1)

    IDDPM(num_sampling_steps=5).sample(spy, ms.Tensor(np.zeros((1, 4, 1, 2, 2), np.float32)), text(1),
                                       progress_bar=False)
    assert seen == [999, 749, 500, 250, 0]  # round(i * 999 / 4), descending


def reference_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def test_training_loss_mse_plus_vb():
    rng = np.random.default_rng(5)
    x0, noise = rng.standard_normal((2, 2, 4, 2, 2, 2)).astype(np.float32) * 0.5
    t = np.array([10, 600], np.int32)
    out_eps, out_var = rng.standard_normal((2, 2, 4, 2, 2, 2)).astype(np.float32) * 0.3

    def model(x, timestep):
        return ms.ops.concat([ms.Tensor(out_eps), ms.Tensor(out_var)], axis=1)

    sched = IDDPM(timestep_respacing="")
    terms = sched.training_losses(model, ms.Tensor(x0), noise=ms.Tensor(noise), t=ms.Tensor(t))
    betas = np.linspace(1e-4, 0.02, 1000)
    acp = np.cumprod(1 - betas)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    post_logvar = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    c1 = betas * np.sqrt(acp_prev) / (1 - acp)
    c2 = (1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp)
    sh = (2, 1, 1, 1, 1)
    a, s = np.sqrt(acp[t]).reshape(sh), np.sqrt(1 - acp[t]).reshape(sh)
    xt = a * x0 + s * noise
    mse = ((noise - out_eps) ** 2).mean(axis=(1, 2, 3, 4))
    true_mean = c1[t].reshape(sh) * x0 + c2[t].reshape(sh) * xt
    pred_x0 = np.sqrt(1 / acp[t]).reshape(sh) * xt - np.sqrt(1 / acp[t] - 1).reshape(sh) * out_eps
    model_mean = c1[t].reshape(sh) * pred_x0 + c2[t].reshape(sh) * xt
    frac = (out_var + 1) / 2
    model_logvar = frac * np.log(betas[t]).reshape(sh) + (1 - frac) * post_logvar[t].reshape(sh)
    kl = reference_kl(true_mean, post_logvar[t].reshape(sh), model_mean, model_logvar).mean(axis=(1, 2, 3, 4))
    vb = kl / np.log(2.0)  # neither t is 0, so both are KL terms
    np.testing.assert_allclose(terms["mse"].asnumpy(), mse, rtol=1e-5)
    np.testing.assert_allclose(terms["vb"].asnumpy(), vb, rtol=2e-4)
    np.testing.assert_allclose(terms["loss"].asnumpy(), mse + vb, rtol=2e-4)


def reference_dpmpp_2m(model_eps, x, steps, total=1000):
    """DPM-Solver++(2M), time-uniform, lower order at the end for < 10 steps (Lu et al. 2022)."""
    betas = np.linspace(1e-4, 0.02, total)
    log_a = 0.5 * np.cumsum(np.log(1 - betas))
    t_grid = np.arange(1, total + 1) / total

    def la(t):
        return np.interp(t, t_grid, log_a)

    def lam(t):
        return la(t) - 0.5 * np.log(1 - np.exp(2 * la(t)))

    def sig(t):
        return np.sqrt(1 - np.exp(2 * la(t)))

    def x0_pred(x, t):
        return (x - sig(t) * model_eps(x, (t - 1 / total) * 1000)) / np.exp(la(t))

    ts = np.linspace(1.0, 1 / total, steps + 1)
    ms_, prev_t = [x0_pred(x, ts[0])], [ts[0]]
    for k in range(1, steps + 1):
        t, s = ts[k], prev_t[-1]
        h = lam(t) - lam(s)
        order = 1 if k == 1 or (steps < 10 and k == steps) else 2
        x_new = sig(t) / sig(s) * x - np.exp(la(t)) * np.expm1(-h) * ms_[-1]
        if order == 2:
            r0 = (lam(s) - lam(prev_t[-2])) / h
            x_new = x_new - 0.5 * np.exp(la(t)) * np.expm1(-h) * (ms_[-1] - ms_[-2]) / r0
        x = x_new
        prev_t.append(t)
        if k < steps:
            ms_.append(x0_pred(x, t))
    return x


@pytest.mark.parametrize("steps", [5, 12])
def test_dpm_solver_matches_reference(steps):
    scale = 4.0
    z = np.random.default_rng(4).standard_normal((1, 4, 2, 2, 2)).astype(np.float32)

    def ref_eps(x, t_in):
        c, u = 0.2 * x + 1.0 + t_in / 1000, 0.2 * x - 1.0 + t_in / 1000
        return u + scale * (c - u)

    def model(x, timestep, y, mask=None):
        ym = y.mean(axis=(1, 2, 3)).reshape(-1, 1, 1, 1, 1)
        eps = 0.2 * x + ym + (timestep / 1000).reshape(-1, 1, 1, 1, 1)
        return ms.ops.concat([eps, eps * 0 + 9.0], axis=1)

    sched = SCHEDULERS.build({"type": "dpm-solver", "num_sampling_steps": steps, "cfg_scale": scale})
    out = sched.sample(model, ms.Tensor(z), text(1), progress_bar=False).asnumpy()
    want = reference_dpmpp_2m(ref_eps, z.astype(np.float64), steps)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_dpm_solver_refuses_masks():
    sched = SCHEDULERS.build({"type": "dpm-solver", "num_sampling_steps": 5})
    with pytest.raises(ValueError, match="does not support frame conditioning"):
        sched.sample(eps_model, ms.Tensor(np.zeros((1, 4, 2, 2, 2), np.float32)), text(1),
                     mask=np.ones((1, 2)), progress_bar=False)


def test_unknown_scheduler_and_kwarg_are_clear():
    from opensora.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'rflow'"):
        SCHEDULERS.build({"type": "rflw"})
    with pytest.raises(ConfigError, match="cfg_scale"):
        SCHEDULERS.build({"type": "iddpm", "cfg_scal": 3})
