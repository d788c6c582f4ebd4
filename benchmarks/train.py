"""Training step benchmark: step time, samples/s, compile time and peak memory of the compiled step.

    python benchmarks/train.py --sizes tiny medium --modes graph pynative --recompute both --out report.json
    msrun --worker_num=2 --local_worker_num=2 benchmarks/train.py --sizes medium --use_parallel --zero_stage 1
    msrun --worker_num=2 --local_worker_num=2 benchmarks/train.py --sizes medium --modes graph --recompute off \
        --use_parallel --sp_size 2          # sequence parallel: each sample's tokens split over the 2 ranks
    (``--sizes medium-wide``: the medium model on 4x the tokens; with ``medium``, what grows with the sequence)

Random weights and random inputs (cached-latent training: no VAE); the step is the one training runs
(loss -> grads -> [AllReduce] -> clip -> AdamW -> EMA, both sharded under ZeRO-1). Under msrun every rank
reports its own optimizer-state and EMA sizes and peak RSS (``rank{r}`` in the output file name), and
``step_rss_gib``: how much the resident memory grew from the built model to the peak of the steps (the
activations and the compiled step's working memory; with ``--sp_size`` 2 each rank holds half the tokens).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import PeakMemory, host_info, rss_bytes, summarize, write_report  # noqa: E402

SIZES = {
    # model kwargs, latent (C, T, H, W) = pixel frames x (8 H) x (8 W), batch size
    "tiny": dict(model=dict(depth=2, hidden_size=64, num_heads=4, caption_channels=16, model_max_length=8),
                 latent=(4, 4, 8, 8), frames=4, batch=2),
    "medium": dict(model=dict(depth=6, hidden_size=384, num_heads=6, caption_channels=256, model_max_length=32),
                   latent=(4, 8, 16, 16), frames=8, batch=2),
    # the medium model on 4x the tokens (8 frames of 16x16 patches): with "medium", what grows with the sequence
    "medium-wide": dict(model=dict(depth=6, hidden_size=384, num_heads=6, caption_channels=256, model_max_length=32),
                        latent=(4, 8, 32, 32), frames=8, batch=2),
}


def build_step(size: str, recompute: bool, zero_stage: int, world: int, rank: int, sp_size: int = 1):
    import mindspore as ms

    from opensora.models.registry import MODELS
    from opensora.schedulers.rectified_flow import RFlow
    from opensora.training.ema import EMA
    from opensora.training.losses import DiffusionLoss, StepInputs
    from opensora.training.optimizer import AdamW
    from opensora.training.train_step import TrainStep

    spec = SIZES[size]
    ms.set_seed(0)
    model = MODELS.build({"type": "STDiT3-XL/2", "qk_norm": True, "input_sq_size": 64, **spec["model"],
                          "grad_checkpointing": recompute, "enable_sequence_parallelism": sp_size > 1})
    model.set_train(True)
    sched = RFlow(use_timestep_transform=True, sample_method="logit-normal")
    loss = DiffusionLoss(model, sched)
    params = model.trainable_params()
    shard = dict(shard=zero_stage == 1, world=world, rank=rank)
    opt = AdamW(params, lr=1e-4, **shard)
    ema = EMA(params, 0.99, **shard)
    step = TrainStep(loss, opt, clip_grad=1.0, ema=ema, world=world)
    c, t, h, w = spec["latent"]
    b = spec["batch"]
    rng = np.random.default_rng(rank // sp_size)  # a sequence-parallel group shares its samples
    batch = {"x0": rng.standard_normal((b, c, t, h, w)).astype(np.float32),
             "text_emb": rng.standard_normal((b, spec["model"]["model_max_length"],
                                             spec["model"]["caption_channels"])).astype(np.float32),
             "text_mask": np.ones((b, spec["model"]["model_max_length"]), np.int32),
             "fps": np.full(b, 24, np.float32), "height": np.full(b, 8 * h, np.float32),
             "width": np.full(b, 8 * w, np.float32), "num_frames": np.full(b, spec["frames"], np.float32),
             "ar": np.full(b, h / w, np.float32)}
    inputs = StepInputs(sched)(batch, rng)
    n_params = sum(int(np.prod(p.shape)) for p in params)
    return step, opt, ema, inputs, b, n_params


def run_case(size, mode, recompute, steps, zero_stage=0, world=1, rank=0, sp_size=1):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    with PeakMemory() as mem:
        step, opt, ema, inputs, batch, n_params = build_step(size, recompute, zero_stage, world, rank, sp_size)
        built = rss_bytes()
        lr = ms.Tensor(1e-4, ms.float32)
        start = time.perf_counter()
        step(lr, *inputs)[0].asnumpy()  # compile (graph) / warm-up (pynative)
        first = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step(lr, *inputs)[0].asnumpy()
            times.append(time.perf_counter() - start)
    stats = summarize(times)
    return {"size": size, "mode": mode, "recompute": recompute, "zero_stage": zero_stage, "world": world,
            "sp_size": sp_size, "step_rss_gib": round((mem.peak - built) / 2 ** 30, 3),
            "rank": rank, "params": n_params, "batch_per_rank": batch, "first_step_s": round(first, 3),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
            "samples_per_s": round(batch * world / sp_size / stats["median_s"], 3),
            "optimizer_state_mib": round(opt.state_bytes() / 2 ** 20, 2),
            "ema_state_mib": round(ema.state_bytes() / 2 ** 20, 2), "peak_rss_gib": round(mem.peak_gb, 3)}


def _isolated(size, mode, recompute, steps) -> dict:
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--sizes", size, "--modes", mode, "--recompute",
                        "on" if recompute else "off", "--steps", str(steps), "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["results"][0]


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=list(SIZES))
    parser.add_argument("--modes", nargs="+", default=["graph", "pynative"], choices=["graph", "pynative"])
    parser.add_argument("--recompute", default="both", choices=["on", "off", "both"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--use_parallel", action="store_true", help="under msrun: data parallel")
    parser.add_argument("--zero_stage", type=int, default=0, choices=[0, 1])
    parser.add_argument("--sp_size", type=int, default=1, help="under msrun: sequence parallel group size")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args(argv)

    from opensora.runtime import default_env, init_runtime

    default_env()
    rt = init_runtime("CPU", mode="graph", distributed=args.use_parallel, seed=0, sp_size=args.sp_size)
    recompute = {"on": [True], "off": [False], "both": [False, True]}[args.recompute]
    cases = [(s, m, rc) for s in args.sizes for m in args.modes for rc in recompute]
    results = []
    for size, mode, rc in cases:
        if len(cases) > 1 and not args.use_parallel:
            results.append(_isolated(size, mode, rc, args.steps))  # own process: peak RSS of this case only
        else:
            results.append(run_case(size, mode, rc, args.steps, args.zero_stage, rt.device_num, rt.rank_id,
                                    rt.sp_size))
        print(results[-1], flush=True)
    out = args.out
    if out and rt.device_num > 1:
        root, ext = os.path.splitext(out)
        out = f"{root}.rank{rt.rank_id}{ext}"
    write_report({"host": host_info(), "results": results}, out)


if __name__ == "__main__":
    run()
