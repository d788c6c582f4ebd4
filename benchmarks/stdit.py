"""STDiT3-XL/2 forward (random weights) at the 144p 9:16 2s latent (1, 4, 15, 18, 32) with a 300-token
caption: graph mode vs PyNative, compile time, peak RSS, achieved FLOP/s vs a large float32 matmul.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.stdit [--depth 28] [--runs 3]
        [--modes graph,blockwise,pynative,torch] [--out report.json] [--max-rss-gb 18] [--check]
        [--interleave]   # two modes, their timed forwards alternating (a fair ratio on a drifting machine)

Modes: ``graph`` = the whole model as one compiled graph (ms.GRAPH_MODE); ``blockwise`` = graph mode
with one compiled spatial and one compiled temporal block graph reused for all 56 blocks
(opensora/models/stdit/blockwise.py; ``--check`` compares it with ``graph``, small depth only);
``pynative`` = op by op; ``torch`` = the PyTorch reference of the tests (tests/reference/stdit3_torch.py,
written from upstream's code paths; 2 threads, no_grad) on the same inputs, so that the ratio
``ratio_vs_torch`` compares runs made under the same machine load (otherwise ``--torch-s``).

Each mode runs in its own subprocess (an OOM or crash in one mode keeps the other's figures); a
watchdog kills a child whose RSS exceeds ``--max-rss-gb``. The JSON report is rewritten (atomically)
after every stage, so a killed run still leaves what it measured. ``--depth N`` (< 28) builds a
model of N spatial+temporal block pairs; full-depth times are then EXTRAPOLATED (labelled so) as
t(N) * 28 / N (a slight upper bound: the embedders and final layer, < 1% of the FLOPs, are scaled too).

Graph mode on the CPU backend allocates every intermediate of the compiled graph statically
(~2.8 GB per spatial+temporal block pair here, not reused; ``memory_optimize_level``,
``MS_DEV_RUNTIME_CONF`` and jit O1 do not change it; ``lazy_inline`` fails on CPU), so the full
28-pair graph needs ~80 GB: measure ``graph`` with ``--depth 1`` or ``2`` (the watchdog kills a
larger run and the other modes' figures are still written); ``blockwise`` runs at full depth.

A sampling step is measured as the sampler runs it: caption keys/values precomputed once
(``precompute_y_kv``, which also drops the mask, as all 300 tokens are valid) and passed as ``y_kv``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import PeakMemory, rss_bytes, status_bytes, summarize

FULL_DEPTH = 28
T, H, W = 15, 18, 32
L, CAPTION_CHANNELS = 300, 4096


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


def forward_inputs() -> dict:
    """The forward's inputs (numpy), the same for every mode: latent, timestep, an all-valid mask,
    fps, pixel height/width and T5-like caption features ``y``."""
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((1, 4, T, H, W)).astype(np.float32),
                timestep=np.array([500.0], np.float32), mask=np.ones((1, L), np.int32),
                fps=np.array([24.0], np.float32), height=np.array([144.0], np.float32),
                width=np.array([256.0], np.float32),
                y=(rng.standard_normal((1, 1, L, CAPTION_CHANNELS)) * 0.1).astype(np.float32))


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


_MARK = "@@stdit-bench"  # prefix of the lines a serving child and the parent exchange on stdout


def _timed_runs(step, runs, serve):
    """``runs`` timed calls of ``step``; when serving (``--interleave``), one call per ``run`` line on
    stdin, each time reported on stdout, until any other line."""
    if not serve:
        return _time_runs(step, runs)
    seconds = []
    print(f"{_MARK} ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        seconds += _time_runs(step, 1)
        print(f"{_MARK} {seconds[-1]}", flush=True)
    return seconds


def _atomic_json(data, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ child
def run_mode(mode, depth, runs, part_path, check=False, serve=False):
    """One mode in this process; every stage's figures are written to ``part_path`` as soon as known."""
    import mindspore as ms

    from opensora.models.registry import MODELS
    from opensora.runtime import init_runtime

    out = {"mode": mode, "depth": depth, "status": "started"}

    def save(status=None):
        if status:
            out["status"] = status
            out[f"rss_gb_at_{status}"] = rss_bytes() / 2**30  # resident now (peak is sampled separately)
        _atomic_json(out, part_path)

    save()
    init_runtime("CPU", mode="pynative" if mode == "pynative" else "graph", jit_level="O0", seed=0)
    inputs = {k: ms.Tensor(v) for k, v in forward_inputs().items()}
    y = inputs.pop("y")
    with PeakMemory() as mem:
        start = time.perf_counter()
        net = MODELS.build({"type": "STDiT3-XL/2", "qk_norm": True, "caption_channels": CAPTION_CHANNELS,
                            "model_max_length": L, "depth": depth})
        net.set_train(False)
        for param in net.get_parameters():  # inference only: no gradient graph
            param.requires_grad = False
        out["build_s"] = time.perf_counter() - start
        out["rss_after_build_gb"] = mem.peak_gb
        cfg = net.config
        flops = stdit3_forward_flops(cfg.depth, cfg.hidden_size, T, (H // 2) * (W // 2), L, CAPTION_CHANNELS)
        out["forward_gflop"] = flops / 1e9
        out["matmul_gflops_float32"] = matmul_flops_per_s(ms) / 1e9
        save("built")

        start = time.perf_counter()
        y_kv, inputs["mask"] = net.precompute_y_kv(y, inputs["mask"])  # all 300 tokens valid: mask None
        y_kv.asnumpy()
        out["precompute_y_kv_first_call_s"] = time.perf_counter() - start
        out["peak_rss_gb_after_precompute"] = mem.peak_gb
        save("precomputed")

        forward = net
        if mode == "blockwise":
            from opensora.inference.blockwise import BlockwiseRunner

            reference = net(**inputs, y=None, y_kv=y_kv).asnumpy() if check else None
            forward = BlockwiseRunner(net)
            out["rss_gb_after_runner_init"] = rss_bytes() / 2**30

        def step():
            return forward(**inputs, y=None, y_kv=y_kv).asnumpy()

        start = time.perf_counter()
        step()
        out["first_step_s"] = time.perf_counter() - start  # graph: compile + one step
        out["peak_rss_gb_after_first_step"] = mem.peak_gb
        save("first_step")
        result = step()  # warm-up: the second pass over every block
        if mode == "blockwise" and check:  # weight swapping must give the whole graph's numbers
            out["check_max_abs_diff_vs_whole_graph"] = float(np.abs(result - reference).max())
        save("warm")
        stats = summarize(_timed_runs(step, runs, serve))
        stats["gflops_achieved"] = flops / stats["median_s"] / 1e9
        stats["fraction_of_matmul_peak"] = stats["gflops_achieved"] / out["matmul_gflops_float32"]
        out["step"] = stats
        out["compile_s_estimate"] = out["first_step_s"] - stats["median_s"]
        out["peak_rss_gb"] = mem.peak_gb
        save("done")
    out["peak_rss_gb"] = mem.peak_gb
    save("done")


def run_torch(depth, runs, part_path, serve=False):
    """The PyTorch reference of the tests (tests/reference/stdit3_torch.py: upstream's code paths, packed
    captions projected in every forward as upstream does), same inputs, 2 threads, no_grad, in this run."""
    import torch

    from tests.reference.stdit3_torch import STDiT3

    torch.set_num_threads(2)
    torch.manual_seed(0)
    out = {"mode": "torch", "depth": depth, "torch_version": torch.__version__, "threads": 2}
    inputs = {k: torch.from_numpy(v) for k, v in forward_inputs().items()}
    with PeakMemory() as mem, torch.no_grad():
        net = STDiT3(depth=depth, caption_channels=CAPTION_CHANNELS, model_max_length=L).eval()
        flops = stdit3_forward_flops(depth, 1152, T, (H // 2) * (W // 2), L, CAPTION_CHANNELS)
        start = time.perf_counter()
        net(**inputs)
        out["first_step_s"] = time.perf_counter() - start
        _atomic_json(out, part_path)
        stats = summarize(_timed_runs(lambda: net(**inputs), runs, serve))
        stats["gflops_achieved"] = flops / stats["median_s"] / 1e9
        out["step"] = stats
        out["peak_rss_gb"] = mem.peak_gb
    out["status"] = "done"
    _atomic_json(out, part_path)


# ------------------------------------------------------------------------------------------ parent
def _rss_gb(pid):
    """RSS of ``pid`` and its descendants (GB)."""
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in children]
    except OSError:
        pass
    return sum(status_bytes("VmRSS", p) for p in pids) / 2**30


def _run_child(mode, args, part_path):
    proc = subprocess.Popen(_child_command(mode, args, part_path))
    watched_peak, killed = 0.0, False
    deadline = time.time() + args.timeout
    while proc.poll() is None:
        rss = _rss_gb(proc.pid)
        watched_peak = max(watched_peak, rss)
        if rss > args.max_rss_gb or time.time() > deadline:
            killed = "rss" if rss > args.max_rss_gb else "timeout"
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    return proc.returncode, watched_peak, killed


def _child_command(mode, args, part_path):
    cmd = [sys.executable, "-m", "benchmarks.stdit", "--child", mode, "--depth", str(args.depth),
           "--runs", str(args.runs if mode != "pynative" else args.pynative_runs), "--part", part_path]
    return cmd + (["--check"] if args.check else [])


def _await_line(proc, mode):
    for line in proc.stdout:
        if line.startswith(_MARK):
            return line[len(_MARK):].strip()
    raise RuntimeError(f"the {mode} child ended early (exit code {proc.wait()})")


def _interleave(modes, args, parts):
    """Alternate one timed forward of each mode, ``--runs`` times, so that both see the same machine
    (its speed drifts by up to 10% over minutes here). The children start one after the other, so
    their compile and warm-up do not overlap, and then wait for their turn."""
    procs = {}
    for mode in modes:
        procs[mode] = subprocess.Popen(_child_command(mode, args, parts[mode]) + ["--serve"], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _await_line(procs[mode], mode)  # ready
    seconds = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode, proc in procs.items():
            proc.stdin.write("run\n")
            proc.stdin.flush()
            seconds[mode].append(float(_await_line(proc, mode)))
    for proc in procs.values():
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait()
    first, second = modes
    ratios = [a / b for a, b in zip(seconds[first], seconds[second])]
    return {"modes": modes, "seconds": seconds, "paired_ratios": ratios,
            "median_paired_ratio": float(np.median(ratios)),
            "note": f"each ratio: one {first} forward / the {second} forward right after it"}


def summarize_report(report, depth):
    modes = report["modes"]
    g = modes.get("graph", {}).get("step") or modes.get("blockwise", {}).get("step")
    p = modes.get("pynative", {}).get("step")
    if g and p:
        report["graph_speedup_vs_pynative"] = p["median_s"] / g["median_s"]
    if depth != FULL_DEPTH:
        report["EXTRAPOLATED_full_depth"] = {
            "note": f"measured at depth {depth}; full-depth figures = measured * {FULL_DEPTH}/{depth} (upper bound)",
            **{m: modes[m]["step"]["median_s"] * FULL_DEPTH / depth for m in modes if "step" in modes[m]},
        }
    measured = modes.get("torch", {}).get("step")
    torch_s = measured["median_s"] * FULL_DEPTH / depth if measured else report.get("torch_reference_s", 41.0)
    ref = g or p
    if ref:
        full = ref["median_s"] * (FULL_DEPTH / depth)
        report["ratio_vs_torch"] = full / torch_s
        report["ratio_vs_torch_basis"] = "torch mode measured in this run" if measured else "--torch-s"
        report["ratio_vs_brief_41s"] = full / 41.0


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=FULL_DEPTH)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pynative-runs", type=int, default=2)
    parser.add_argument("--modes", default="graph,pynative",
                        help="comma list of graph, blockwise, pynative, torch (see above)")
    parser.add_argument("--no-pynative", action="store_true")
    parser.add_argument("--max-rss-gb", type=float, default=18.0, help="kill a mode's process above this RSS")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per mode")
    parser.add_argument("--torch-s", type=float, default=41.0, help="torch forward seconds for the ratio")
    parser.add_argument("--out", default=None, help="write the JSON report here (updated after every stage)")
    parser.add_argument("--check", action="store_true", help="blockwise: compare with the whole-graph forward "
                        "(the whole graph must fit: small --depth only)")
    parser.add_argument("--interleave", action="store_true",
                        help="two modes (e.g. blockwise,torch): alternate their timed forwards")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.depth <= FULL_DEPTH:
        parser.error(f"--depth must be in 1..{FULL_DEPTH}")
    if args.child == "torch":
        run_torch(args.depth, args.runs, args.part, args.serve)
        return
    if args.child:
        run_mode(args.child, args.depth, args.runs, args.part, args.check, args.serve)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.no_pynative and "pynative" in modes:
        modes.remove("pynative")
    bad = set(modes) - {"graph", "pynative", "blockwise", "torch"}
    if bad:
        parser.error(f"unknown mode(s) {sorted(bad)}; use graph, blockwise, pynative and/or torch")

    report = {
        "benchmark": f"STDiT3-XL/2 forward (depth {args.depth} of {FULL_DEPTH}), latent (1, 4, {T}, {H}, {W}), "
                     f"{L}-token caption, y_kv precomputed, float32, random weights",
        "depth": args.depth, "extrapolated": args.depth != FULL_DEPTH, "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(), "torch_reference_s": args.torch_s,
        "torch_reference_note": "torch 2 threads, full depth (brief: ~41 s / forward, ~5.2 GB) unless --torch-s",
        "modes": {},
    }

    def flush():
        summarize_report(report, args.depth)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
            _atomic_json(report, args.out)

    flush()
    if args.interleave:
        if len(modes) != 2:
            parser.error("--interleave takes exactly two modes, e.g. --modes blockwise,torch")
        with tempfile.TemporaryDirectory() as tmp:
            parts = {mode: os.path.join(tmp, f"{mode}.json") for mode in modes}
            report["interleaved"] = _interleave(modes, args, parts)
            for mode in modes:
                report["modes"][mode] = json.load(open(parts[mode], encoding="utf-8"))
        flush()
        print(json.dumps(report, indent=2, default=str))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            part = os.path.join(tmp, f"{mode}.json")
            rc, peak, killed = _run_child(mode, args, part)
            result = json.load(open(part, encoding="utf-8")) if os.path.exists(part) else {"status": "no output"}
            result.update(returncode=rc, watchdog_peak_rss_gb=peak, killed=killed,
                          load_avg_after=os.getloadavg())
            report["modes"][mode] = result
            flush()
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    run()
