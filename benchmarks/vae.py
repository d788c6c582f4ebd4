"""Encode/decode time and peak memory of the FULL-size Open-Sora 1.2 VAE (random weights), optionally
beside the PyTorch reference in the same run.

    python scripts/benchmark.py vae --resolutions 144p --num_frames 17 --torch --output bench/vae.json
    python scripts/benchmark.py vae                            # 144p 2s and 240p 2s, graph mode
    flock /work/.cpu.lock python scripts/benchmark.py vae ...  # on a shared machine
    python scripts/benchmark.py vae --vae sd --resolutions 256x256 --num_frames 16 --torch --parts decode

Each case: a (1, 3, T, H, W) video in [-1, 1] (aspect 9:16 -> H x W from the preset table) and a latent
of the matching size. Parts: ``encode`` (``encode_posterior``: spatial then temporal VAE), ``decode``
(``decode(num_frames=T)``), the latter split into its temporal and spatial halves. The VAE runs chunked
as in inference (``micro_frame_size`` 17, ``micro_batch_size`` frames per image-VAE call), so memory is
bounded by one chunk's activations. ``--runs`` times each part that often; in graph mode the first run
includes compiling one graph per chunk shape, so the steady figure is the last run and the first is
reported apart.

``--torch``: the PyTorch reference of the tests (``tests/reference/vae_temporal_torch.py``: upstream's
temporal VAE and pipeline, diffusers' ``AutoencoderKL`` as the spatial VAE), same weights, same inputs,
2 threads, timed alternately with MindSpore (MindSpore part, then the same torch part) so that both see
the same machine; ``ratio`` = MindSpore / torch per part. Both models live in this one process: peak RSS
figures are the process's, and ``rss_rise_gb`` is each part's rise above the RSS before it.

Peak memory: MindSpore's memory pool keeps what a part reached, so the parts after it rise less. For each
part's own peak run it alone, one side per process (``--side``; without ``temporal_decode`` among the parts
the spatial decoder gets a random latent of the same shape):

    for side in mindspore torch; do for part in encode temporal_decode spatial_decode; do
        python scripts/benchmark.py vae --resolutions 144p --num_frames 17 --side $side --parts $part --runs 1
    done; done

``--vae sd``: the SD VAE of Open-Sora 1.0/1.1 instead (``VideoAutoencoderKL``, the SD VAE config, random
weights), frame by frame in micro-batches of ``--micro_batch_size``; parts ``encode`` and ``decode``; the
torch side is diffusers' ``AutoencoderKL`` with the same weights in the same micro-batches.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import host_info, rss_bytes, timed_call, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("encode", "temporal_decode", "spatial_decode")
SD_PARTS = ("encode", "decode")  # --vae sd: the SD image VAE frame by frame (1.0/1.1), no temporal half


def mindspore_parts(vae, x, z, num_frames):
    """{part: callable} over the MindSpore VAE; each returns a numpy array (so the work is done)."""
    import mindspore as ms

    return {
        "encode": lambda: vae.encode_posterior(ms.Tensor(x))[0].asnumpy(),
        "temporal_decode": lambda: vae.temporal_decode(ms.Tensor(z), num_frames).asnumpy(),
        "spatial_decode": lambda x_z: vae.spatial_vae.decode(ms.Tensor(x_z)).asnumpy(),
    }


def torch_parts(ref, x, z, num_frames):
    import torch

    def run(fn):
        with torch.no_grad():
            return fn().numpy()

    return {
        "encode": lambda: run(lambda: ref.encode_mean_std(torch.from_numpy(x))[0]),
        "temporal_decode": lambda: run(lambda: ref.temporal_decode(torch.from_numpy(z), num_frames)),
        "spatial_decode": lambda x_z: run(lambda: ref.spatial_decode(torch.from_numpy(x_z))),
    }


def sd_mindspore_parts(vae, x, z, num_frames):
    import mindspore as ms

    return {"encode": lambda: vae.encode_posterior(ms.Tensor(x))[0].asnumpy(),
            "decode": lambda: vae.decode(ms.Tensor(z), num_frames).asnumpy()}


def sd_torch_parts(ref, x, z, num_frames):
    """diffusers' ``AutoencoderKL`` frame by frame in the same micro-batches, 0.18215 scaling as upstream."""
    import torch

    model, batch = ref

    def framewise(video, fn):
        b, c, t = video.shape[:3]
        frames = torch.from_numpy(video).permute(0, 2, 1, 3, 4).reshape(b * t, c, *video.shape[3:])
        with torch.no_grad():
            out = torch.cat([fn(frames[s:s + batch]) for s in range(0, b * t, batch)])
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4).numpy()

    return {"encode": lambda: framewise(x, lambda f: model.encode(f).latent_dist.mean * 0.18215),
            "decode": lambda: framewise(z, lambda f: model.decode(f / 0.18215).sample)}


def image_size(resolution, aspect_ratio):
    """A preset ("144p") with the aspect ratio, or an explicit "HxW" ("256x256")."""
    from opensora.datasets.aspect import get_image_size

    if "x" in resolution:
        height, width = (int(v) for v in resolution.split("x"))
        return height, width
    return get_image_size(resolution, aspect_ratio)


def run_case(vae, ref, resolution, aspect_ratio, num_frames, runs, parts, only=None) -> dict:
    height, width = image_size(resolution, aspect_ratio)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 3, num_frames, height, width)).astype(np.float32)
    latent = vae.get_latent_size([num_frames, height, width])
    z = rng.standard_normal([1, vae.out_channels] + latent).astype(np.float32)
    result = {"resolution": resolution, "aspect_ratio": aspect_ratio, "num_frames": num_frames, "height": height,
              "width": width, "latent_size": latent, "parts": {}}
    sd = not hasattr(vae, "temporal_vae")
    sides = {"mindspore": (sd_mindspore_parts if sd else mindspore_parts)(vae, x, z, num_frames)}
    if ref is not None:
        sides["torch"] = (sd_torch_parts if sd else torch_parts)(ref, x, z, num_frames)
    if only is not None:
        sides = {only: sides[only]}
    x_z = {}  # the spatial decoder's input: each side's own temporal decode
    if "spatial_decode" in parts and "temporal_decode" not in parts:
        # a random latent (same cost): no temporal decode before it grows the memory pool first
        spatial = vae.spatial_vae
        shape = [1, spatial.out_channels] + spatial.get_latent_size([num_frames, height, width])
        x_z = dict.fromkeys(sides, rng.standard_normal(shape).astype(np.float32))
    for part in parts:
        entry = result["parts"].setdefault(part, {})
        for r in range(runs):
            for side, fns in sides.items():  # alternate: MindSpore, then torch, per run
                fn = fns[part]
                call = (lambda fn=fn, side=side: fn(x_z[side])) if part == "spatial_decode" else fn
                if part == "spatial_decode" and side not in x_z:
                    x_z[side] = sides[side]["temporal_decode"]()
                out, timing = timed_call(call)
                seconds, peak, rise = timing["s"], timing["peak_rss_gb"], timing["increase_gb"]
                if part == "temporal_decode":
                    x_z[side] = out
                stats = entry.setdefault(side, {"seconds": [], "peak_rss_gb": 0.0, "rss_rise_gb": 0.0})
                stats["seconds"].append(round(seconds, 3))
                stats["peak_rss_gb"] = round(max(stats["peak_rss_gb"], peak), 3)
                stats["rss_rise_gb"] = round(max(stats["rss_rise_gb"], rise), 3)
                stats["output_shape"] = list(out.shape)
                print(f"{resolution} {num_frames}f {part} {side} run {r + 1}: {seconds:.2f} s", flush=True)
        for side, stats in entry.items():
            stats["first_s"] = stats["seconds"][0]
            stats["steady_s"] = stats["seconds"][-1]
        if len(entry) == 2:
            entry["ratio_steady"] = round(entry["mindspore"]["steady_s"] / entry["torch"]["steady_s"], 3)
            entry["ratio_first"] = round(entry["mindspore"]["first_s"] / entry["torch"]["first_s"], 3)
    decode = [result["parts"][p] for p in ("temporal_decode", "spatial_decode") if p in result["parts"]]
    if len(decode) == 2:
        for side in sides:
            result.setdefault("decode_steady_s", {})[side] = round(sum(d[side]["steady_s"] for d in decode), 3)
        if len(sides) == 2:
            total = result["decode_steady_s"]
            result["decode_ratio_steady"] = round(total["mindspore"] / total["torch"], 3)
    return result


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="1.2", choices=["1.2", "sd"],
                        help="1.2: OpenSoraVAE_V1_2; sd: the SD VAE of 1.0/1.1 (VideoAutoencoderKL, parts encode/decode)")
    parser.add_argument("--resolutions", nargs="+", default=["144p", "240p"], help="presets or HxW (256x256)")
    parser.add_argument("--aspect_ratio", default="9:16")
    parser.add_argument("--num_frames", default="2s", help="frames per video: a count or 2s/4s... (2s = 51)")
    parser.add_argument("--micro_batch_size", type=int, default=4)
    parser.add_argument("--micro_frame_size", type=int, default=17)
    parser.add_argument("--parts", nargs="+", default=None, choices=list(PARTS) + ["decode"],
                        help=f"1.2: {' '.join(PARTS)} (default all); sd: {' '.join(SD_PARTS)} (default both)")
    parser.add_argument("--mode", default="graph", choices=["pynative", "graph"])
    parser.add_argument("--runs", type=int, default=2, help="timed runs per part and side (graph: first compiles)")
    parser.add_argument("--torch", action="store_true", help="time the PyTorch reference alternately, same inputs")
    parser.add_argument("--side", default=None, choices=["mindspore", "torch"],
                        help="run one side only (peak memory of a part in a process of its own, see above)")
    parser.add_argument("--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    valid = SD_PARTS if args.vae == "sd" else PARTS
    args.parts = args.parts or list(valid)
    if any(p not in valid for p in args.parts):
        parser.error(f"--vae {args.vae} has parts {', '.join(valid)}")

    from opensora.datasets.aspect import get_num_frames
    from opensora.models.vae import OpenSoraVAE_V1_2, VideoAutoencoderKL
    from opensora.runtime import init_runtime

    init_runtime("CPU", args.mode, seed=0)
    num_frames = get_num_frames(args.num_frames)
    start = time.perf_counter()
    if args.vae == "sd":
        vae = VideoAutoencoderKL(micro_batch_size=args.micro_batch_size)  # the SD VAE's config, random weights
    else:
        vae = OpenSoraVAE_V1_2(micro_batch_size=args.micro_batch_size, micro_frame_size=args.micro_frame_size)
    vae.set_train(False)
    model = "VideoAutoencoderKL (SD VAE" if args.vae == "sd" else "OpenSoraVAE_V1_2 (full size"
    report = {"benchmark": "vae", "model": f"{model}, random weights)",
              "parameters": int(sum(int(np.prod(p.shape)) for p in vae.get_parameters())),
              "build_s": time.perf_counter() - start, "rss_after_build_gb": rss_bytes() / 2**30,
              "mode": args.mode, "micro_batch_size": args.micro_batch_size, "runs": args.runs,
              "micro_frame_size": args.micro_frame_size, "host": host_info(), "cases": []}
    ref = None
    if args.torch or args.side == "torch":
        if args.vae == "sd":
            ref = build_torch_sd_reference(vae), args.micro_batch_size
        else:
            ref = build_torch_reference(vae, args.micro_frame_size, args.micro_batch_size)
        reference = "diffusers AutoencoderKL" + ("" if args.vae == "sd" else " + tests/reference/vae_temporal_torch.py")
        report["torch"] = {"threads": 2, "reference": reference,
                           "rss_after_build_gb": rss_bytes() / 2**30}
    for resolution in args.resolutions:
        report["cases"].append(run_case(vae, ref, resolution, args.aspect_ratio, num_frames, args.runs, args.parts,
                                        args.side))
        write_report(report, args.output)  # after each case: a long run keeps what it measured
    return report


def build_torch_reference(vae, micro_frame_size, micro_batch_size):
    """The PyTorch pipeline of the tests with the MindSpore model's weights."""
    import torch

    from opensora.models.vae.loading import SDXL_VAE_CONFIG, read_json
    from tests.reference.vae_temporal_torch import VideoVAEPipelineTorch

    torch.set_num_threads(2)
    state = {p.name: torch.from_numpy(p.asnumpy()) for p in vae.get_parameters()}
    # the full-size VAE_Temporal_SD keywords, as recorded with the official checkpoint's key/shape manifest
    temporal_kwargs = read_json(os.path.join(ROOT, "tests", "manifests", "vae_v1_2.json"))["temporal_vae_kwargs"]
    return VideoVAEPipelineTorch(state, read_json(SDXL_VAE_CONFIG), temporal_kwargs, micro_frame_size,
                                 micro_batch_size)


def build_torch_sd_reference(vae):
    """diffusers' ``AutoencoderKL`` with the SD VAE config and the MindSpore model's weights."""
    import torch
    from diffusers import AutoencoderKL

    from opensora.models.vae.loading import SD_VAE_CONFIG, read_json

    torch.set_num_threads(2)
    model = AutoencoderKL(**{k: v for k, v in read_json(SD_VAE_CONFIG).items() if not k.startswith("_")}).eval()
    model.load_state_dict({p.name[len("module."):]: torch.from_numpy(p.asnumpy()) for p in vae.get_parameters()})
    return model


if __name__ == "__main__":
    run()
