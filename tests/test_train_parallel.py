"""The training step machinery on a toy network: AdamW + clipping + EMA against torch, and under msrun
(two CPU workers, mccl) data parallel and ZeRO-1 (optimizer state and EMA sharded) against one process
that sees both ranks' batches.

This file is also the msrun worker: ``python tests/test_train_parallel.py toy_worker OUT`` (both
zero stages in one launch, to pay the start-up once).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, PER_RANK, WORLD = 4, 3, 2
DIM_IN, HIDDEN, DIM_OUT = 7, 33, 5  # odd sizes: slices need padding


def _batches(step: int, rank: int):
    rng = np.random.default_rng([step, rank])
    x = rng.standard_normal((PER_RANK, DIM_IN)).astype(np.float32)
    y = rng.standard_normal((PER_RANK, DIM_OUT)).astype(np.float32)
    return x, y


def _init_weights():
    rng = np.random.default_rng(123)
    return {
        "l1.weight": (rng.standard_normal((HIDDEN, DIM_IN)) * 0.3).astype(np.float32),
        "l1.bias": (rng.standard_normal((HIDDEN,)) * 0.1).astype(np.float32),
        "l2.weight": (rng.standard_normal((DIM_OUT, HIDDEN)) * 0.3).astype(np.float32),
        "l2.bias": (rng.standard_normal((DIM_OUT,)) * 0.1).astype(np.float32),
    }


HPARAMS = dict(lr=3e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
CLIP = 0.5
EMA_DECAY = 0.8  # far from 1, so that four steps move the EMA well away from the initial weights


def _build_toy():
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops

    class Toy(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = _init_weights()
            self.l1_weight = Parameter(Tensor(self.w["l1.weight"]), name="l1.weight")
            self.l1_bias = Parameter(Tensor(self.w["l1.bias"]), name="l1.bias")
            self.l2_weight = Parameter(Tensor(self.w["l2.weight"]), name="l2.weight")
            self.l2_bias = Parameter(Tensor(self.w["l2.bias"]), name="l2.bias")

        def construct(self, x, y):
            h = ops.tanh(ops.matmul(x, self.l1_weight.T) + self.l1_bias)
            out = ops.matmul(h, self.l2_weight.T) + self.l2_bias
            return ((out - y) ** 2).mean()

    return Toy()


def train_toy(zero_stage: int, world: int, rank: int, batch_fn):
    import mindspore as ms

    from opensora.training.ema import EMA
    from opensora.training.optimizer import AdamW
    from opensora.training.train_step import TrainStep

    net = _build_toy()
    shard = dict(shard=zero_stage == 1, world=world, rank=rank)
    opt = AdamW(net.trainable_params(), **shard, **HPARAMS)
    ema = EMA(net.trainable_params(), EMA_DECAY, **shard)
    step = TrainStep(net, opt, clip_grad=CLIP, ema=ema, world=world)
    losses = []
    for i in range(STEPS):
        x, y = batch_fn(i)
        loss, finite, _, _ = step(ms.Tensor(HPARAMS["lr"], ms.float32), ms.Tensor(x), ms.Tensor(y))
        assert bool(finite.asnumpy())
        losses.append(float(loss.asnumpy()))
    params = {p.name: p.asnumpy() for p in net.trainable_params()}
    return params, losses, opt, ema


def _worker(out_dir: str) -> None:
    import mindspore as ms

    from benchmarks.common import rss_bytes
    from opensora.runtime import init_runtime
    from opensora.training.ema import EMA

    rt = init_runtime("CPU", mode="graph", distributed=True, seed=0)
    result = {"rank": rt.rank_id, "world": rt.device_num}
    for zero in (0, 1):
        params, losses, opt, ema = train_toy(zero, rt.device_num, rt.rank_id, lambda i: _batches(i, rt.rank_id))
        np.savez(os.path.join(out_dir, f"rank{rt.rank_id}_zero{zero}.npz"), **params)
        ema_full = {k: v.asnumpy() for k, v in ema.plain_state().items()}  # gathered from the slices
        np.savez(os.path.join(out_dir, f"rank{rt.rank_id}_zero{zero}_ema.npz"), **ema_full)
        # resuming: a fresh EMA takes this rank's slices of the full values, the ones training left
        fresh = EMA(_build_toy().trainable_params(), EMA_DECAY, shard=zero == 1, world=rt.device_num,
                    rank=rt.rank_id)
        fresh.load_plain_state(ema_full, "round trip")
        reload_diff = max(float(np.abs(a.asnumpy() - b.asnumpy()).max()) for a, b in zip(fresh.ema, ema.ema))
        result[f"zero{zero}"] = {"losses": losses, "optimizer_state_bytes": opt.state_bytes(),
                                 "moment_shapes": [list(m.shape) for m in opt.moments_m],
                                 "ema_state_bytes": ema.state_bytes(), "ema_reload_max_diff": reload_diff}
    result["rss_bytes"] = rss_bytes()
    with open(os.path.join(out_dir, f"rank{rt.rank_id}.json"), "w") as f:
        json.dump(result, f)


def _both_ranks(i):
    xs, ys = zip(*(_batches(i, r) for r in range(WORLD)))
    return np.concatenate(xs), np.concatenate(ys)


def _torch_reference():
    """torch.optim.AdamW + clip_grad_norm_ on the same toy and both ranks' batches together."""
    import torch

    w = {k: torch.tensor(v, requires_grad=True) for k, v in _init_weights().items()}
    ema = {k: v.detach().clone() for k, v in w.items()}
    opt = torch.optim.AdamW(list(w.values()), **HPARAMS)
    losses = []
    for i in range(STEPS):
        x, y = (torch.tensor(a) for a in _both_ranks(i))
        h = torch.tanh(x @ w["l1.weight"].T + w["l1.bias"])
        loss = ((h @ w["l2.weight"].T + w["l2.bias"] - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(w.values()), CLIP)
        opt.step()
        with torch.no_grad():  # upstream's update_ema
            for k, v in w.items():
                ema[k].mul_(EMA_DECAY).add_(v, alpha=1 - EMA_DECAY)
        losses.append(float(loss))
    return {k: v.detach().numpy() for k, v in w.items()}, losses, {k: v.numpy() for k, v in ema.items()}


def test_adamw_step_matches_torch_graph_and_pynative():
    import mindspore as ms

    ref, ref_losses, ref_ema = _torch_reference()
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        ms.set_context(mode=mode)
        params, losses, _, ema = train_toy(0, 1, 0, _both_ranks)
        ema = ema.plain_state()
        for name, value in ref.items():
            np.testing.assert_allclose(params[name], value, atol=2e-6, err_msg=name)
            np.testing.assert_allclose(ema[name].asnumpy(), ref_ema[name], atol=2e-6, err_msg=f"ema {name}")
            assert np.abs(ref_ema[name] - value).max() > 1e-3  # the EMA is not just the weights
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msrun(args: list[str], log_dir: str, workers: int = 2, timeout: int = 300):
    """Start ``msrun`` with ``workers`` local CPU workers; the venv's python first in PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    cmd = [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={_free_port()}",
           "--join=True", f"--log_dir={log_dir}", *args]
    before = set(glob.glob(os.path.join(ROOT, "rank_*")))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:  # a refused graph compile (a deliberate bad case) dumps rank_N/om/analyze_fail.ir in the cwd
        for dump in set(glob.glob(os.path.join(ROOT, "rank_*"))) - before:
            shutil.rmtree(dump, ignore_errors=True)
    if proc.returncode != 0:
        logs = ""
        for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
            with open(os.path.join(log_dir, name), errors="replace") as f:
                logs += f"--- {name}\n" + f.read()[-3000:]
        raise AssertionError(f"msrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs}")
    return proc


@pytest.mark.msrun
def test_msrun_data_parallel_and_zero1_match_single_process(tmp_path):
    import mindspore as ms

    start = time.time()
    run_msrun([os.path.abspath(__file__), "toy_worker", str(tmp_path)], str(tmp_path / "logs"))
    ms.set_context(mode=ms.GRAPH_MODE)
    single, single_losses, single_opt, single_ema = train_toy(0, 1, 0, _both_ranks)
    single_ema = {k: v.asnumpy() for k, v in single_ema.plain_state().items()}
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(WORLD)]
    for zero in (0, 1):
        p0 = dict(np.load(tmp_path / f"rank0_zero{zero}.npz"))
        p1 = dict(np.load(tmp_path / f"rank1_zero{zero}.npz"))
        for name, value in single.items():
            np.testing.assert_array_equal(p0[name], p1[name], err_msg=f"zero{zero}: ranks differ in {name}")
            np.testing.assert_allclose(p0[name], value, atol=1e-6, err_msg=f"zero{zero} vs one process: {name}")
        e0 = dict(np.load(tmp_path / f"rank0_zero{zero}_ema.npz"))
        e1 = dict(np.load(tmp_path / f"rank1_zero{zero}_ema.npz"))
        for name, value in single_ema.items():
            np.testing.assert_array_equal(e0[name], e1[name], err_msg=f"zero{zero}: ranks' EMA differ in {name}")
            np.testing.assert_allclose(e0[name], value, atol=1e-6, err_msg=f"zero{zero} EMA vs one process: {name}")
        # the logged loss is the mean over ranks = the one-process loss on the global batch
        np.testing.assert_allclose(ranks[0][f"zero{zero}"]["losses"], single_losses, rtol=1e-5)
    full = single_opt.state_bytes()
    for r in ranks:
        assert r["zero0"]["optimizer_state_bytes"] == full
        # each rank keeps ceil(numel / 2) elements of each moment: about half
        assert r["zero1"]["optimizer_state_bytes"] <= full / 2 + 4 * 2 * 4 * 2
        assert all(len(s) == 1 for s in r["zero1"]["moment_shapes"])
        # the EMA is sharded like the moments (one float32 copy of the parameters, halved), and a resumed
        # rank takes back exactly the slices it had
        assert r["zero0"]["ema_state_bytes"] == full // 2
        assert r["zero1"]["ema_state_bytes"] <= full / 4 + 4 * 4 * 2
        assert r["zero0"]["ema_reload_max_diff"] == 0.0 and r["zero1"]["ema_reload_max_diff"] == 0.0
    print(f"\nmsrun toy: optimizer state per rank zero0={full} B, zero1={ranks[0]['zero1']['optimizer_state_bytes']} B; "
          f"rss rank0={ranks[0]['rss_bytes'] / 2**20:.0f} MiB; {time.time() - start:.1f}s")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "toy_worker":
    sys.path.insert(0, ROOT)
    _worker(sys.argv[2])


def test_dynamic_loss_scale_skips_overflow_and_grows_back():
    import mindspore as ms

    from opensora.training.loss_scaler import LossScaler
    from opensora.training.optimizer import AdamW
    from opensora.training.train_step import TrainStep

    net = _build_toy()
    opt = AdamW(net.trainable_params(), **HPARAMS)
    scaler = LossScaler("dynamic", scale_value=2.0 ** 127, scale_factor=2.0, scale_window=2)  # overflows
    step = TrainStep(net, opt, scaler, clip_grad=CLIP)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    lr = ms.Tensor(HPARAMS["lr"], ms.float32)
    scales, finite = [], []
    for i in range(12):
        x, y = _batches(i, 0)
        loss, ok, scale, _ = step(lr, ms.Tensor(x * 3), ms.Tensor(y * 3))  # larger loss: scaled, it overflows
        scales.append(float(scale.asnumpy()))
        finite.append(bool(ok.asnumpy()))
        if finite[-1]:
            assert np.isfinite(float(loss.asnumpy()))  # the reported loss is unscaled
        else:
            for p in net.trainable_params():  # a skipped step changes nothing
                np.testing.assert_array_equal(p.asnumpy(), before[p.name])
        before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    assert finite[0] is False and finite.count(True) >= 3
    # the scale sequence follows mindspore.amp.DynamicLossScaler's rule: halve on overflow (not below 1),
    # double after `scale_window` consecutive finite steps
    expected, good = [2.0 ** 127], 0
    for ok in finite[:-1]:
        good = good + 1 if ok else 0
        if not ok:
            expected.append(max(expected[-1] / 2, 1.0))
        elif good >= 2:
            expected.append(expected[-1] * 2)
            good = 0
        else:
            expected.append(expected[-1])
    assert scales == expected
    assert int(opt.step.asnumpy()) == finite.count(True)
