"""Decode time and peak memory of the FULL-size Open-Sora 2.0 Hunyuan VAE (246 M parameters, random weights)
on a 256px clip, side by side with the PyTorch reference of the tests (tests/reference/hunyuan_vae_torch.py,
upstream's code paths; 2 threads, no_grad) on the same latent with the same weights, in the same run.

    python scripts/benchmark.py hunyuan_vae [--num-frames 9] [--runs 2] [--output bench/hunyuan_vae.json]
    flock /work/.cpu.lock .venv/bin/python -m benchmarks.hunyuan_vae ...     # on a shared machine

The VAE is configured as the 2.0 inference configs do (spatial tiling on, temporal tiling off), so a 256px
16:9 clip (192 x 336 pixels, latent 24 x 42) decodes as two tiles (24 x 32 and 24 x 18 latents) blended
over 64 pixels. The MindSpore and PyTorch decodes alternate (one of each per run; the first pair, also used to
compare the outputs, is timed apart as the warm-up: in graph mode it includes compiling), so that each
pair sees the same machine; the paired ratios (MindSpore / PyTorch) are
reported with each side's peak RSS during its decodes and the increase over the RSS before them (both
models stay resident in the process: about 1 GB each). The two outputs are compared as a sanity check.
PyNative by default: ``--mode graph`` is faster (the 9-frame clip 1.3x torch's time), but its first run compiles
for about 3 minutes and rose 13.6 GB against torch's 2.1 GB (README, the Hunyuan VAE section).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import host_info, rss_bytes, timed_call, write_report


def _copy_weights(ref, vae):
    """The torch reference's weights into the MindSpore VAE, by name (the same keys)."""
    import mindspore as ms

    params = vae.parameters_dict()
    state = ref.state_dict()
    if set(params) != set(state):
        raise RuntimeError(f"key sets differ: {sorted(set(params) ^ set(state))[:5]}")
    for name, value in state.items():
        params[name].set_data(ms.Tensor(value.numpy()))


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", default="256px")
    parser.add_argument("--aspect-ratio", "--aspect_ratio", default="16:9")
    parser.add_argument("--num-frames", "--num_frames", type=int, default=9, help="4k+1 frames")
    parser.add_argument("--runs", type=int, default=1, help="timed decodes per framework after the first pair")
    parser.add_argument("--mode", default="pynative", choices=["pynative", "graph"])
    parser.add_argument("--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)

    import mindspore as ms
    import torch

    from opensora.models.registry import VAES
    from opensora.runtime import init_runtime
    from tests.reference.hunyuan_vae_torch import AutoencoderKLCausal3D

    sizes = {("256px", "16:9"): (192, 336), ("256px", "9:16"): (336, 192), ("256px", "1:1"): (256, 256)}
    if (args.resolution, args.aspect_ratio) not in sizes:
        parser.error(f"sizes known here: {sorted(sizes)}")
    height, width = sizes[(args.resolution, args.aspect_ratio)]
    init_runtime("CPU", args.mode, seed=0)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = dict(use_spatial_tiling=True, use_temporal_tiling=False)  # configs/diffusion/inference/256px.py
    start = time.perf_counter()
    ref = AutoencoderKLCausal3D(**config).eval()
    vae = VAES.build({"type": "hunyuan_vae", **config})
    _copy_weights(ref, vae)
    latent_size = vae.get_latent_size([args.num_frames, height, width])
    report = {"benchmark": "hunyuan_vae decode", "model": "hunyuan_vae (full size, random weights, float32)",
              "parameters": int(sum(int(np.prod(p.shape)) for p in vae.get_parameters())),
              "clip": {"resolution": args.resolution, "aspect_ratio": args.aspect_ratio,
                       "num_frames": args.num_frames, "height": height, "width": width},
              "latent": [1, vae.out_channels] + latent_size, "mode": args.mode, "torch_threads": 2,
              "build_s": time.perf_counter() - start, "rss_after_build_gb": rss_bytes() / 2**30, "host": host_info()}
    z = np.random.default_rng(0).standard_normal(report["latent"]).astype(np.float32)
    z_ms, z_torch = ms.Tensor(z), torch.from_numpy(z)

    def ms_decode():
        return vae.decode(z_ms).asnumpy()

    def torch_decode():
        with torch.no_grad():
            return ref.decode(z_torch).numpy()

    out_ms, report["mindspore_first"] = timed_call(ms_decode)  # graph mode: includes compiling
    out_torch, report["torch_first"] = timed_call(torch_decode)
    report["decoded_shape"] = list(out_ms.shape)
    report["max_abs_diff_vs_torch"] = float(np.abs(out_ms - out_torch).max())
    report["max_abs_torch"] = float(np.abs(out_torch).max())
    del out_ms, out_torch
    runs = {"mindspore": [], "torch": []}
    for _ in range(args.runs):
        runs["mindspore"].append(timed_call(ms_decode)[1])
        runs["torch"].append(timed_call(torch_decode)[1])
    if args.mode == "pynative":  # nothing to compile: the first pair counts too
        runs["mindspore"].insert(0, report["mindspore_first"])
        runs["torch"].insert(0, report["torch_first"])
    ratios = [m["s"] / t["s"] for m, t in zip(runs["mindspore"], runs["torch"])]
    report["runs"] = runs
    report["paired_ratios_ms_over_torch"] = ratios
    report["median_ratio_ms_over_torch"] = float(np.median(ratios))
    report["median_s"] = {k: float(np.median([r["s"] for r in v])) for k, v in runs.items()}
    report["peak_rss_gb"] = {k: max(r["peak_rss_gb"] for r in v) for k, v in runs.items()}
    report["max_increase_gb"] = {k: max(r["increase_gb"] for r in v) for k, v in runs.items()}
    write_report(report, args.output)
    return report


if __name__ == "__main__":
    run()
