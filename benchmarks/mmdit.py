"""Open-Sora 2.0 MMDiT: one full-size double-stream and one full-size single-stream block (hidden 3072, 24 heads,
random weights) at 256px 16:9 tokens of a 33-frame clip, MindSpore (graph mode) and the PyTorch reference of
the tests (tests/reference/mmdit_torch.py, 2 threads, no_grad) on the same weights and inputs in the same run,
their timed forwards alternating; plus the tiny model's forward.

    python scripts/benchmark.py mmdit [--runs 3] [--layout v2|flux_dev] [--blocks double,single] [--no-tiny]
        [--out report.json]

Tokens: latent 9 x 24 x 42 (33 frames -> 9 latent frames; 192 x 336 pixels / 8) in 2x2 patches -> 9·12·21 =
2268 image tokens, plus 512 T5 tokens: 2780 tokens in every attention. Each framework runs in its own process
(:func:`benchmarks.common.alternate`; in one process a torch forward took 2.3x as long) on the same
weights (written once by this process); a block's figures: median/min/max seconds per forward, the paired
ratios (each MindSpore forward over the torch forward right after it), achieved GFLOP/s (matmuls only), and
the max abs difference of the two outputs (a parity check at full size). The torch child keeps freed memory
(``KEEP_FREED_MEMORY``: glibc settings; without them its forwards take ~2x as long when alternated here).
MindSpore's block includes the RoPE tables from the ids (gathered), torch's its table computation, as in
each model's forward.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import (KEEP_FREED_MEMORY, PeakMemory, alternate, host_info, serve_timed, summarize,
                               write_report)

FULL = dict(hidden_size=3072, num_heads=24, mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000)
LATENT = (9, 24, 42)  # 256px 16:9 (192 x 336), 33 frames
TEXT_TOKENS = 512
LAYOUTS = {"v2": dict(fused_qkv=False, use_liger_rope=True), "flux_dev": dict(fused_qkv=True, use_liger_rope=False)}


def block_gflop(kind: str, n: int, c: int, mlp_ratio: float = 4.0) -> float:
    """Matmul GFLOP of one block forward over n tokens of width c (modulation and elementwise work ignored):
    double: q, k, v, proj + MLP; single: q, k, v + MLP in, linear2 (c + mlp -> c); both: q·kᵀ and p·v."""
    linear = (4 + 2 * mlp_ratio) * c * c if kind == "double" else (3 + mlp_ratio + 1 + mlp_ratio) * c * c
    return (2 * n * linear + 4 * n * n * c) / 1e9


def block_inputs(hidden: int, seed: int = 0) -> dict:
    """Hidden image/text tokens, the conditioning vector and the (t, h, w) ids of text + image tokens."""
    from tests.fixtures.tiny_mmdit import position_ids

    rng = np.random.default_rng(seed)
    img_ids = position_ids(1, *LATENT)
    return dict(img=rng.standard_normal((1, img_ids.shape[1], hidden)).astype(np.float32),
                txt=rng.standard_normal((1, TEXT_TOKENS, hidden)).astype(np.float32),
                vec=rng.standard_normal((1, hidden)).astype(np.float32),
                ids=np.concatenate([np.zeros((1, TEXT_TOKENS, 3), np.float32), img_ids], axis=1))


def torch_block(kind: str, layout: str):
    """The reference block (torch's default initialisation, seed 0) and its RoPE table function."""
    import torch

    from tests.reference import mmdit_torch as ref

    torch.manual_seed(0)
    c, heads, fused = FULL["hidden_size"], FULL["num_heads"], LAYOUTS[layout]["fused_qkv"]
    block = (ref.DoubleStreamBlock(c, heads, FULL["mlp_ratio"], True, fused) if kind == "double"
             else ref.SingleStreamBlock(c, heads, FULL["mlp_ratio"], fused)).eval()
    tables = ref.liger_tables if LAYOUTS[layout]["use_liger_rope"] else ref.flux_tables
    return block, lambda ids: tables(ids, FULL["axes_dim"], FULL["theta"])


# ------------------------------------------------------------------------------------------ children
def _ms_block_step(kind: str, layout: str, weights: str, inputs: dict):
    import mindspore as ms
    from mindspore import nn, ops

    from opensora.models.layers.embeddings import AxialRotaryEmbedding
    from opensora.models.mmdit.layers import DoubleStreamBlock, SingleStreamBlock
    from opensora.runtime import init_runtime
    from opensora.utils.checkpoint import load_into, read_checkpoint

    init_runtime("CPU", mode="graph", seed=0)
    halves = LAYOUTS[layout]["use_liger_rope"]
    kw = dict(fused_qkv=LAYOUTS[layout]["fused_qkv"], rope_halves=halves)
    c, heads = FULL["hidden_size"], FULL["num_heads"]
    block = (DoubleStreamBlock(c, heads, FULL["mlp_ratio"], qkv_bias=True, **kw) if kind == "double"
             else SingleStreamBlock(c, heads, FULL["mlp_ratio"], **kw))
    load_into(block, read_checkpoint(weights), source=weights)
    pe = AxialRotaryEmbedding(FULL["axes_dim"], FULL["theta"], halves=halves, float32_angles=halves)

    class Runner(nn.Cell):
        def __init__(self):
            super().__init__()
            self.block, self.pe = block, pe

        def construct(self, img, txt, vec, ids):
            rope = self.pe(ids, halves)
            if kind == "double":
                return self.block(img, txt, vec, rope)[0]
            n_txt, n_img = txt.shape[1], img.shape[1]
            return ops.split(self.block(ops.cat((txt, img), axis=1), vec, rope), (n_txt, n_img), axis=1)[1]

    runner = Runner()
    args = [ms.Tensor(inputs[k]) for k in ("img", "txt", "vec", "ids")]
    return lambda: runner(*args).asnumpy()


def _torch_block_step(kind: str, layout: str, weights: str, inputs: dict):
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    block, rope = torch_block(kind, layout)
    block.load_state_dict(load_file(weights), strict=True)
    img, txt, vec, ids = (torch.from_numpy(inputs[k]) for k in ("img", "txt", "vec", "ids"))

    def step():
        with torch.no_grad():
            pe = rope(ids)
            if kind == "double":
                return block(img, txt, vec, pe)[0].numpy()
            return block(torch.cat((txt, img), 1), vec, pe)[:, txt.shape[1]:].numpy()

    return step


def run_child(framework: str, kind: str, layout: str, directory: str) -> None:
    """Build one framework's block from ``directory``'s weights and inputs, write its first output and figures
    there, then serve timed forwards (:func:`serve_timed`)."""
    inputs = dict(np.load(os.path.join(directory, "inputs.npz")))
    weights = os.path.join(directory, "weights.safetensors")
    out = {}
    with PeakMemory() as mem:
        start = time.perf_counter()
        make = _ms_block_step if framework == "mindspore" else _torch_block_step
        step = make(kind, layout, weights, inputs)
        np.save(os.path.join(directory, f"{framework}_out.npy"), step())
        out["build_and_first_call_s"] = time.perf_counter() - start  # MindSpore: including the graph compile
        step()  # warm-up
        out["seconds"] = serve_timed(step)
    out["peak_rss_gb"] = mem.peak_gb
    with open(os.path.join(directory, f"{framework}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)


def run_tiny_child(runs: int, path: str) -> None:
    """The tiny test model (2 + 2 blocks, hidden 64, v2 layout) in graph mode: the sampler's step
    (conditioning prepared once) and the full forward."""
    import mindspore as ms

    from opensora.models.registry import MODELS
    from opensora.runtime import init_runtime
    from tests.fixtures.tiny_mmdit import tiny_inputs, tiny_kwargs

    init_runtime("CPU", mode="graph", seed=0)
    net = MODELS.build({"type": "flux", **tiny_kwargs("v2")})
    net.set_train(False)
    inputs = tiny_inputs("v2")
    tensors = {k: ms.Tensor(v) for k, v in inputs.items()}
    out = {"tokens": int(inputs["img"].shape[1] + inputs["txt"].shape[1]), "batch": int(inputs["img"].shape[0])}
    start = time.perf_counter()
    prepared = net.prepare_conditioning(**{k: tensors[k] for k in ("img_ids", "txt", "txt_ids", "y_vec", "cond")})
    out["prepare_conditioning_first_call_s"] = time.perf_counter() - start
    steps = {"step_prepared": lambda: net(tensors["img"], timesteps=tensors["timesteps"], **prepared),
             "forward_full": lambda: net(**tensors)}
    for name, fn in steps.items():
        start = time.perf_counter()
        fn().asnumpy()
        first = time.perf_counter() - start
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            fn().asnumpy()
            seconds.append(time.perf_counter() - start)
        out[name] = {**summarize(seconds), "first_call_s": first}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)


def run_tiny_torch(runs: int) -> dict:
    import torch

    from tests.fixtures.tiny_mmdit import reference_model, tiny_inputs

    torch.set_num_threads(2)
    ref = reference_model("v2")
    inputs = {k: torch.from_numpy(v) for k, v in tiny_inputs("v2").items()}
    seconds = []
    with torch.no_grad():
        ref(**inputs)
        for _ in range(runs):
            start = time.perf_counter()
            ref(**inputs)
            seconds.append(time.perf_counter() - start)
    return summarize(seconds)


# ------------------------------------------------------------------------------------------ parent
def bench_block(kind: str, layout: str, runs: int) -> dict:
    from safetensors.torch import save_file

    inputs = block_inputs(FULL["hidden_size"])
    n = inputs["ids"].shape[1]
    out = {"block": kind, "layout": layout, "tokens": n, "image_tokens": n - TEXT_TOKENS, "text_tokens": TEXT_TOKENS,
           "gflop": block_gflop(kind, n, FULL["hidden_size"])}
    with tempfile.TemporaryDirectory(prefix="mmdit-bench-") as directory:
        block, _ = torch_block(kind, layout)
        save_file({k: v.contiguous() for k, v in block.state_dict().items()},
                  os.path.join(directory, "weights.safetensors"))
        del block
        np.savez(os.path.join(directory, "inputs.npz"), **inputs)
        child = [sys.executable, "-m", "benchmarks.mmdit", "--kind", kind, "--layout", layout, "--dir", directory]
        seconds = alternate({fw: child + ["--child", fw] for fw in ("mindspore", "torch")}, runs,
                            env={"torch": KEEP_FREED_MEMORY})
        outputs = {}
        for fw in ("mindspore", "torch"):
            with open(os.path.join(directory, f"{fw}.json"), encoding="utf-8") as f:
                part = json.load(f)
            outputs[fw] = np.load(os.path.join(directory, f"{fw}_out.npy"))
            out[fw] = {**summarize(seconds[fw]), "gflops_achieved": out["gflop"] / statistics.median(seconds[fw]),
                       "build_and_first_call_s": part["build_and_first_call_s"], "peak_rss_gb": part["peak_rss_gb"]}
    out["max_abs_diff_vs_torch"] = float(np.abs(outputs["mindspore"] - outputs["torch"]).max())
    out["max_abs_output"] = float(np.abs(outputs["torch"]).max())
    out["paired_ratios_ms_over_torch"] = [a / b for a, b in zip(seconds["mindspore"], seconds["torch"])]
    out["median_paired_ratio"] = statistics.median(out["paired_ratios_ms_over_torch"])
    return out


def bench_tiny(runs: int) -> dict:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="mmdit-bench-") as directory:
        path = os.path.join(directory, "tiny.json")
        subprocess.run([sys.executable, "-m", "benchmarks.mmdit", "--child", "tiny", "--runs", str(runs),
                        "--dir", path], check=True, stdout=subprocess.DEVNULL)
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    out["torch_reference_forward"] = run_tiny_torch(runs)
    return out


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards of each framework per block")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="v2",
                        help="v2: separate q/k/v, Liger RoPE (Open_Sora_v2); flux_dev: fused qkv, Flux RoPE")
    parser.add_argument("--blocks", default="double,single", help="comma list of double, single")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny model's forward")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--child", choices=("mindspore", "torch", "tiny"), help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="double", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "tiny":
        run_tiny_child(max(args.runs, 10), args.dir)
        return 0
    if args.child:
        run_child(args.child, args.kind, args.layout, args.dir)
        return 0
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    if not blocks or set(blocks) - {"double", "single"}:
        parser.error("--blocks takes double and/or single")

    import torch

    report = {"benchmark": "mmdit", "host": host_info(), "torch": torch.__version__, "torch_threads": 2,
              "mindspore_mode": "graph", "load_avg_at_start": os.getloadavg(), "latent": LATENT,
              "config": {**FULL, **LAYOUTS[args.layout]}, "blocks": {}}
    for kind in blocks:
        report["blocks"][kind] = bench_block(kind, args.layout, args.runs)
    if not args.no_tiny:
        report["tiny"] = bench_tiny(args.runs)
    report["load_avg_at_end"] = os.getloadavg()
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
