"""Open-Sora 2.0 MMDiT under sequence parallel: memory per rank of the sampler's forward, sp_size 1 against 2.

    python scripts/benchmark.py mmdit_sp [--mode graph|pynative] [--out report.json]        # one process
    msrun --worker_num=2 --local_worker_num=2 --join=True --log_dir=/tmp/msrun_bench \\
        scripts/benchmark.py mmdit_sp --use_parallel --sp_size 2 [--mode ...]              # split over 2 ranks

A medium MMDiT (hidden 768, 12 heads, 2 double + 4 single blocks, the Open-Sora 2.0 layout, random weights,
float32) at the tokens of a 256px 16:9 33-frame clip: latent 9 x 24 x 42 in 2x2 patches = 2268 image tokens, plus
512 T5 tokens (4096 features). ``forward_rss_gib``: the peak resident memory during the forwards (a warm-up, then
``--runs`` timed ones) minus the resident memory once the model and inputs are built: the activations and working
memory of the forward of one sample (in graph mode also what compiling it takes; MindSpore's CPU graph keeps its
intermediates allocated between runs). Every rank reports its own figures.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import PeakMemory, host_info, rss_bytes, write_report

MEDIUM = dict(in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=768, mlp_ratio=4.0, num_heads=12,
              depth=2, depth_single_blocks=4, axes_dim=[16, 24, 24], theta=10000, qkv_bias=True, cond_embed=True,
              guidance_embed=False, fused_qkv=False, use_liger_rope=True)
LATENT = (9, 24, 42)  # 256px 16:9 (192 x 336), 33 frames
TEXT_TOKENS = 512


def inputs(seed: int = 0) -> dict:
    import mindspore as ms

    from opensora.schedulers import flow_v2

    rng = np.random.default_rng(seed)
    t, h, w = LATENT
    n = t * (h // 2) * (w // 2)
    arrays = dict(img=rng.standard_normal((1, n, MEDIUM["in_channels"])),
                  img_ids=flow_v2.image_ids(1, t, h, w), txt=rng.standard_normal((1, TEXT_TOKENS, 4096)),
                  txt_ids=flow_v2.text_ids(1, TEXT_TOKENS), timesteps=np.array([0.7]),
                  y_vec=rng.standard_normal((1, MEDIUM["vec_in_dim"])),
                  cond=rng.standard_normal((1, n, MEDIUM["in_channels"] + 4)))
    return {k: ms.Tensor(v.astype(np.float32)) for k, v in arrays.items()}


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--use_parallel", action="store_true", help="under msrun")
    parser.add_argument("--sp_size", type=int, default=1, help="under msrun: sequence parallel group size")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    parser.add_argument("--runs", type=int, default=2, help="measured forwards (after one warm-up)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)

    from opensora.models.registry import MODELS
    from opensora.runtime import init_runtime

    rt = init_runtime("CPU", mode=args.mode, distributed=args.use_parallel, seed=0, sp_size=args.sp_size)
    model = MODELS.build({"type": "flux", **MEDIUM, "enable_sequence_parallelism": rt.sp_size > 1})
    model.set_train(False)
    x = inputs()
    built = rss_bytes()
    times = []
    with PeakMemory() as mem:
        model(**x).asnumpy()  # warm-up (compiles in graph mode)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model(**x).asnumpy()
            times.append(time.perf_counter() - t0)
    report = {"rank": rt.rank_id, "sp_size": rt.sp_size, "mode": args.mode,
              "tokens": int(x["img"].shape[1]) + TEXT_TOKENS,
              "forward_rss_gib": round((mem.peak - built) / 2 ** 30, 3), "built_rss_gib": round(built / 2 ** 30, 3),
              "peak_rss_gib": round(mem.peak / 2 ** 30, 3), "forward_s": round(min(times), 3), "host": host_info()}
    write_report(report, args.out)
    return report
