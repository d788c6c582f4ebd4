"""Half precision on this machine: the full-size STDiT3-XL/2's weight bytes and peak memory built in fp32 vs fp16
(weights held in the model dtype, as upstream's ``model.to(dtype)``), and the tiny sampling step in fp32 vs
fp16 (benchmarks/sample.py with ``--dtype``). Each measurement runs in its own process, one after the other.

    flock /work/.cpu.lock .venv/bin/python scripts/benchmark.py precision [--out report.json]

The CPU computes float16 with slower kernels than float32 (and nothing in bfloat16): the step times say
what fp16 costs here, not what half precision gives on Ascend.
"""
from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import child_report, host_info, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml")


def weights_child(dtype: str) -> dict:
    """Build the full-size STDiT3-XL/2 with random weights held in ``dtype``: parameter bytes and peak RSS."""
    import mindspore as ms

    from benchmarks.common import status_bytes
    from opensora.models.registry import MODELS

    ms.set_context(device_target="CPU")
    model = MODELS.build({"type": "STDiT3-XL/2", "dtype": dtype, "caption_channels": 4096, "model_max_length": 300})
    params = list(model.get_parameters())
    return {"dtype": dtype, "parameters": sum(p.size for p in params),
            "weight_bytes": sum(p.size * p.itemsize for p in params),
            "param_dtypes": sorted({str(p.dtype) for p in params}),
            "peak_rss_gb": status_bytes("VmHWM") / 2 ** 30}


def _child(dtype: str) -> dict:
    return child_report("benchmarks.precision", "--weights-child", dtype)


def _sample_step(dtype: str, runs: int) -> dict:
    from benchmarks import sample

    report = sample.run(["--config", TINY_CONFIG, "--dtype", dtype, "--eval_count", str(runs)])
    return {"dtype": dtype, "step_latency": report["step_latency"], "compile_s": report["compile_s"],
            "end_to_end_per_video_s": report["end_to_end_per_video_s"], "peak_rss_gb": report["peak_rss_gb"]}


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--runs", type=int, default=2, help="tiny sampling runs per dtype")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny sampling step")
    parser.add_argument("--weights-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.weights_child:
        print(json.dumps(weights_child(args.weights_child)))
        return {}
    report = {"host": host_info()}
    if not args.skip_full:
        full = {dtype: _child(dtype) for dtype in ("fp32", "fp16")}
        full["weight_bytes_ratio_fp16_over_fp32"] = full["fp16"]["weight_bytes"] / full["fp32"]["weight_bytes"]
        report["stdit3_xl2_weights"] = full
    report["tiny_sampling"] = {dtype: _sample_step(dtype, args.runs) for dtype in ("fp32", "fp16")}
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    run()
