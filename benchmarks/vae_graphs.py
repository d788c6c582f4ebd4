"""Where the 1.2 VAE's graph-mode memory goes: per compiled graph (the spatial and temporal encoders and decoders of
the FULL-size Open-Sora 1.2 VAE, random weights, one chunk's input), the RSS rise after compiling it
(``Cell.compile``, before any run) and after its first run, each graph in a process of its own.

    python scripts/benchmark.py vae_graphs --resolution 144p            # all four graphs
    python scripts/benchmark.py vae_graphs --graphs temporal_decoder --output bench/vae_graphs.json

Inputs as in inference: ``micro_batch_size`` frames for the spatial VAE's graphs, one ``micro_frame_size`` chunk
(its latent frames for the decoder) for the temporal VAE's. Compare the totals with ``benchmarks/vae.py --side``
(a whole part alone in a process, PyTorch's rise beside it): on MindSpore 2.10's CPU backend the compiled graphs
hold most of what a part rises.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import PeakMemory, child_report, host_info, rss_bytes, write_report

GRAPHS = ("spatial_encoder", "spatial_decoder", "temporal_encoder", "temporal_decoder")


def graph_and_input(vae, graph, height, width, micro_batch_size, micro_frame_size):
    """(cell, input shape) of one compiled graph for one chunk at height x width."""
    spatial, temporal = vae.spatial_vae, vae.temporal_vae
    latent_hw = spatial.get_latent_size([1, height, width])[1:]
    channels = spatial.out_channels
    return {
        "spatial_encoder": (spatial.module.encoder, (micro_batch_size, 3, height, width)),
        "spatial_decoder": (spatial.module.decoder, (micro_batch_size, channels, *latent_hw)),
        "temporal_encoder": (temporal.encoder, (1, channels, micro_frame_size, *latent_hw)),
        "temporal_decoder": (temporal.decoder, (1, temporal.decoder.conv1.conv.weight.shape[1],
                                                vae.geometry.latent_chunk, *latent_hw)),
    }[graph]


def measure_one(args) -> dict:
    """In this process: build the VAE, compile one graph, run it once; RSS rises above the built model."""
    import mindspore as ms

    from benchmarks.vae import image_size
    from opensora.models.vae import OpenSoraVAE_V1_2
    from opensora.runtime import init_runtime

    init_runtime("CPU", "graph", seed=0)
    vae = OpenSoraVAE_V1_2(micro_batch_size=args.micro_batch_size, micro_frame_size=args.micro_frame_size)
    vae.set_train(False)
    height, width = image_size(args.resolution, args.aspect_ratio)
    cell, shape = graph_and_input(vae, args.one, height, width, args.micro_batch_size, args.micro_frame_size)
    x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    before = rss_bytes()
    with PeakMemory() as compiling:
        cell.compile(x)
    with PeakMemory() as running:
        cell(x).asnumpy()
    gib = 2**30
    return {"graph": args.one, "input_shape": list(shape), "rss_after_build_gb": round(before / gib, 3),
            "compile_rise_gb": round((compiling.peak - before) / gib, 3),
            "first_run_rise_gb": round((max(running.peak, compiling.peak) - before) / gib, 3)}


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=GRAPHS)
    parser.add_argument("--resolution", default="144p", help="a preset or HxW (256x256)")
    parser.add_argument("--aspect_ratio", default="9:16")
    parser.add_argument("--micro_batch_size", type=int, default=4)
    parser.add_argument("--micro_frame_size", type=int, default=17)
    parser.add_argument("--one", default=None, choices=GRAPHS, help=argparse.SUPPRESS)  # the per-graph child
    parser.add_argument("--output", default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args)))
        return {}
    report = {"benchmark": "vae_graphs", "model": "OpenSoraVAE_V1_2 (full size, random weights)", "mode": "graph",
              "resolution": args.resolution, "aspect_ratio": args.aspect_ratio,
              "micro_batch_size": args.micro_batch_size, "micro_frame_size": args.micro_frame_size,
              "host": host_info(), "graphs": []}
    common = ["--resolution", args.resolution, "--aspect_ratio", args.aspect_ratio,
              "--micro_batch_size", str(args.micro_batch_size), "--micro_frame_size", str(args.micro_frame_size)]
    for graph in args.graphs:
        entry = child_report("benchmarks.vae_graphs", "--one", graph, *common)
        print(f"{graph} {entry['input_shape']}: compile +{entry['compile_rise_gb']:.2f} GB, "
              f"first run +{entry['first_run_rise_gb']:.2f} GB", flush=True)
        report["graphs"].append(entry)
        write_report(report, args.output)  # after each graph: a long run keeps what it measured
    return report


if __name__ == "__main__":
    run()
