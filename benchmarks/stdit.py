"""STDiT3-XL/2 forward (random weights) at the 144p 9:16 2s latent (1, 4, 15, 18, 32) with a 300-token
caption: graph mode vs PyNative, compile time, peak RSS, achieved FLOP/s vs a large float32 matmul.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.stdit [--runs 3] [--no-pynative] [--out report.json]

A sampling step is measured as the sampler runs it: caption keys/values precomputed once
(``precompute_y_kv``) and passed as ``y_kv``. Needs ~6+ GB and several minutes.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import PeakMemory, host_info, summarize, write_report


def stdit3_forward_flops(depth, hidden, T, S, L, caption_channels, mlp_ratio=4.0, with_caption=False, out_dim=32,
                         in_dim=16):
    """Multiply-adds x2 of the matmuls of one STDiT3 forward (elementwise ops ignored)."""
    n, c = T * S, hidden
    linear = (3 + 1 + 1 + 1 + 2 * mlp_ratio) * c * c  # qkv, proj, cross q, cross proj, mlp
    per_block_common = 2 * n * linear + 4 * n * L * c  # + cross attention scores/values
    spatial = per_block_common + 4 * n * S * c
    temporal = per_block_common + 4 * n * T * c
    total = depth * (spatial + temporal) + 2 * n * c * (out_dim + in_dim)
    if with_caption:  # caption projection and per-block keys/values
        total += 2 * L * (caption_channels * c + c * c) + 2 * depth * 2 * L * c * 2 * c
    return total


def matmul_flops_per_s(ms, n=2048, repeats=5):
    from mindspore import ops

    a = ms.Tensor(np.random.standard_normal((n, n)).astype(np.float32))
    b = ms.Tensor(np.random.standard_normal((n, n)).astype(np.float32))
    ops.matmul(a, b).asnumpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ops.matmul(a, b).asnumpy()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times))


def _time_runs(fn, runs):
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pynative-runs", type=int, default=2)
    parser.add_argument("--no-pynative", action="store_true")
    parser.add_argument("--out", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)

    import mindspore as ms

    from opensora.models.registry import MODELS
    from opensora.runtime import init_runtime

    init_runtime("CPU", mode="graph", jit_level="O0", seed=0)
    report = {"benchmark": "STDiT3-XL/2 forward, latent (1, 4, 15, 18, 32), 300-token caption", "host": host_info()}
    T, H, W = 15, 18, 32
    L, caption_channels = 300, 4096
    rng = np.random.default_rng(0)
    inputs = dict(
        x=ms.Tensor(rng.standard_normal((1, 4, T, H, W)).astype(np.float32)),
        timestep=ms.Tensor(np.array([500.0], np.float32)),
        mask=ms.Tensor(np.ones((1, L), np.int32)),
        fps=ms.Tensor(np.array([24.0], np.float32)),
        height=ms.Tensor(np.array([144.0], np.float32)),
        width=ms.Tensor(np.array([256.0], np.float32)),
    )
    y = ms.Tensor((rng.standard_normal((1, 1, L, caption_channels)) * 0.1).astype(np.float32))

    with PeakMemory() as mem:
        start = time.perf_counter()
        net = MODELS.build({"type": "STDiT3-XL/2", "qk_norm": True, "caption_channels": caption_channels,
                            "model_max_length": L})
        net.set_train(False)
        report["build_s"] = time.perf_counter() - start
        cfg = net.config
        flops = stdit3_forward_flops(cfg.depth, cfg.hidden_size, T, (H // 2) * (W // 2), L, caption_channels)
        report["forward_gflop"] = flops / 1e9
        report["matmul_gflops_float32"] = matmul_flops_per_s(ms) / 1e9

        # graph mode: compile (first call), then a sampling step with precomputed caption keys/values
        start = time.perf_counter()
        y_kv = net.precompute_y_kv(y)
        y_kv.asnumpy()
        report["graph_precompute_y_kv_first_call_s"] = time.perf_counter() - start

        def step():
            net(**inputs, y=None, y_kv=y_kv).asnumpy()

        start = time.perf_counter()
        step()
        report["graph_compile_and_first_step_s"] = time.perf_counter() - start
        step()  # warm-up
        graph = summarize(_time_runs(step, args.runs))
        graph["gflops_achieved"] = flops / graph["median_s"] / 1e9
        graph["fraction_of_matmul_peak"] = graph["gflops_achieved"] / report["matmul_gflops_float32"]
        report["graph"] = graph

        def full_forward():
            net(**inputs, y=y).asnumpy()

        full_forward()  # compile
        report["graph_forward_with_caption"] = summarize(_time_runs(full_forward, 1))
    report["peak_rss_gb_graph"] = mem.peak_gb

    if not args.no_pynative:
        init_runtime("CPU", mode="pynative", seed=0)
        with PeakMemory() as mem:
            step()  # warm-up
            pyn = summarize(_time_runs(step, args.pynative_runs))
            pyn["gflops_achieved"] = flops / pyn["median_s"] / 1e9
            report["pynative"] = pyn
            report["graph_speedup_vs_pynative"] = pyn["median_s"] / graph["median_s"]
        report["peak_rss_gb_pynative"] = mem.peak_gb
    report["torch_reference_note"] = "PyTorch 2 threads on this machine: ~41 s / forward, ~5.2 GB peak (brief)"
    report["ratio_vs_torch_41s"] = graph["median_s"] / 41.0
    write_report(report, args.out)


if __name__ == "__main__":
    main()
