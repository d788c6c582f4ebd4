"""Encode/decode time and peak memory of the FULL-size Open-Sora 1.2 VAE (random weights).

    python -m benchmarks.vae                                   # 144p 2s and 240p 2s (slow on a CPU)
    python -m benchmarks.vae --resolutions 144p --num_frames 17 --output bench/vae.json
    flock /tmp/heavy.lock python -m benchmarks.vae ...         # on a shared machine

Each case: a (1, 3, T, H, W) video in [-1, 1] (aspect 9:16 -> landscape H x W from the preset table),
``encode_posterior`` and ``decode(num_frames=T)`` timed separately, with the process's peak RSS during
each. The VAE runs chunked as in inference (``micro_frame_size`` 17, ``micro_batch_size`` frames per
image-VAE call), so memory is bounded by one chunk's activations, not the whole video's.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from benchmarks.common import PeakMemory, host_info, rss_bytes, write_report


def run_case(vae, resolution: str, aspect_ratio: str, num_frames: int, parts) -> dict:
    import mindspore as ms

    from opensora.datasets.aspect import get_image_size

    height, width = get_image_size(resolution, aspect_ratio)
    x = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (1, 3, num_frames, height, width)).astype(np.float32))
    result = {"resolution": resolution, "aspect_ratio": aspect_ratio, "num_frames": num_frames,
              "height": height, "width": width, "latent_size": vae.get_latent_size([num_frames, height, width])}
    latent_shape = tuple([1, vae.out_channels] + result["latent_size"])
    z = None
    if "encode" in parts:
        gc.collect()
        with PeakMemory() as mem:
            start = time.perf_counter()
            z, _ = vae.encode_posterior(x)
            z.asnumpy()
            result["encode_s"] = time.perf_counter() - start
        result["encode_peak_rss_gb"] = mem.peak_gb
        result["encoded_shape"] = list(z.shape)
    if "decode" in parts:
        if z is None:
            z = ms.Tensor(np.random.default_rng(1).standard_normal(latent_shape).astype(np.float32))
        gc.collect()
        with PeakMemory() as mem:
            start = time.perf_counter()
            out = vae.decode(z, num_frames=num_frames)
            out.asnumpy()
            result["decode_s"] = time.perf_counter() - start
        result["decode_peak_rss_gb"] = mem.peak_gb
        result["decoded_shape"] = list(out.shape)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", nargs="+", default=["144p", "240p"])
    parser.add_argument("--aspect_ratio", default="9:16")
    parser.add_argument("--num_frames", default="2s", help="frames per video: a count or 2s/4s... (2s = 51)")
    parser.add_argument("--micro_batch_size", type=int, default=4)
    parser.add_argument("--micro_frame_size", type=int, default=17)
    parser.add_argument("--parts", nargs="+", default=["encode", "decode"], choices=["encode", "decode"])
    parser.add_argument("--mode", default="pynative", choices=["pynative", "graph"])
    parser.add_argument("--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)

    from opensora.datasets.aspect import get_num_frames
    from opensora.models.vae import OpenSoraVAE_V1_2
    from opensora.runtime import init_runtime

    init_runtime("CPU", args.mode, seed=0)
    num_frames = get_num_frames(args.num_frames)
    start = time.perf_counter()
    vae = OpenSoraVAE_V1_2(micro_batch_size=args.micro_batch_size, micro_frame_size=args.micro_frame_size)
    vae.set_train(False)
    report = {"benchmark": "vae", "model": "OpenSoraVAE_V1_2 (full size, random weights)",
              "parameters": int(sum(int(np.prod(p.shape)) for p in vae.get_parameters())),
              "build_s": time.perf_counter() - start, "rss_after_build_gb": rss_bytes() / 2**30,
              "mode": args.mode, "micro_batch_size": args.micro_batch_size,
              "micro_frame_size": args.micro_frame_size, "host": host_info(), "cases": []}
    for resolution in args.resolutions:
        report["cases"].append(run_case(vae, resolution, args.aspect_ratio, num_frames, args.parts))
        write_report(report, args.output)  # after each case: a long run keeps what it measured
    return report


if __name__ == "__main__":
    main()
