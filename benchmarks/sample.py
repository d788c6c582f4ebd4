"""Sampling benchmark (in the spirit of Enflame's benchmark_open_sora.py for Open-Sora 1.2).

    python scripts/benchmark.py sample --config configs/tiny/inference/sample_t2v.yaml \
        --warmup-count 1 --eval-count 2 --benchmark-save-path outputs/bench_sample.json
    python scripts/benchmark.py sample --config ... --three-stage true   # also each stage's peak memory
    python scripts/benchmark.py sample --config configs/tiny/inference/sample_v2.yaml   # Open-Sora 2.0 (sample_v2.py)

Report: model load time per component, compile time (first model call minus the median call),
per-step latency (median/min/max of timed, synchronised model calls), end-to-end time per video,
sampling / VAE decode / save time per video, peak RSS, frames per second (frames generated per
second of end-to-end time, not x1000), the attention path, the config and the host.
Warm-up runs use the same settings (so that they compile the same graphs) and write to a
temporary folder.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from .common import PeakMemory, host_info, status_bytes, summarize, write_report


class StepTimer:
    """Wraps the diffusion model: times each (synchronised) call; everything else is delegated."""

    def __init__(self, model):
        self.__dict__["model"] = model
        self.__dict__["times"] = []
        self.__dict__["construct"] = model.construct

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __setattr__(self, name, value):
        setattr(self.model, name, value)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.model(*args, **kwargs)
        out.asnumpy()  # wait for the device
        self.times.append(time.perf_counter() - start)
        return out


def _options():
    from opensora.config import Option, str2bool
    from opensora.inference.options import OPTIONS

    return OPTIONS + [
        Option("warmup_count", int, 1, "untimed runs first (compilation)"),
        Option("eval_count", int, 1, "timed runs over all prompts"),
        Option("benchmark_save_path", str, None, "JSON report path"),
        Option("three_stage", str2bool, False, "also run run_sample_3stages.sh and record each stage's peak memory"),
    ]


def timed_runs(pipe, timer: StepTimer, cfg, reset_stats) -> tuple[float | None, list[float], list[str]]:
    """``warmup_count`` untimed runs (into a temporary folder), then ``eval_count`` timed ones after
    ``reset_stats()``: -> (the first model call's time, end-to-end seconds per video of each timed run, the
    last run's outputs)."""
    save_dir = cfg.save_dir
    with tempfile.TemporaryDirectory() as tmp:
        pipe.cfg.save_dir = tmp
        for _ in range(cfg.warmup_count):
            pipe.run()
    first_call = timer.times[0] if timer.times else None
    pipe.cfg.save_dir = save_dir
    timer.times.clear()
    reset_stats()
    e2e, saved = [], []
    for _ in range(cfg.eval_count):
        start = time.perf_counter()
        saved = pipe.run()
        e2e.append((time.perf_counter() - start) / max(1, len(saved)))
    return first_call, e2e, saved


def _mean(values):
    return statistics.mean(values) if values else None


def run(argv=None) -> dict:
    from opensora.inference.v2.options import is_v2_config

    if is_v2_config(argv):  # Open-Sora 2.0: its own pipeline and report (benchmarks/sample_v2.py)
        from .sample_v2 import run as run_v2

        return run_v2(argv)
    from opensora.config import Schema
    from opensora.inference.pipeline import InferencePipeline
    from opensora.runtime import init_runtime_from

    cfg = Schema(_options(), description="sampling benchmark").parse(argv)
    if cfg.prompt is None and cfg.prompt_path is None:
        cfg.prompt = ["a cat walks along the river."]
    cfg.verbose = 0
    cfg.overwrite, cfg.skip_existing = True, False  # every timed run writes its videos again
    report = {"benchmark": "sample", "config": {k: v for k, v in cfg.items()}, "host": None}
    with PeakMemory() as mem:
        init_runtime_from(cfg, seed=cfg.seed)
        t0 = time.perf_counter()
        pipe = InferencePipeline(cfg).load()
        report["model_load_s"] = {"total": time.perf_counter() - t0, **pipe.stats["load_s"]}
        timer = StepTimer(pipe.model)
        pipe.model = timer

        def reset_stats():
            for key in ("sample_s", "decode_s", "save_s"):
                pipe.stats.pop(key, None)

        first_call, e2e, saved = timed_runs(pipe, timer, cfg, reset_stats)
    steps = list(timer.times)
    videos_per_run = len(pipe.prompts) * cfg.num_sample
    frames = pipe.num_frames + (cfg.loop - 1) * (pipe.num_frames - pipe.trim_frames())
    report.update({
        "host": host_info(),
        "resolution": list(pipe.image_size), "num_frames": frames, "latent_size": list(pipe.latent_size),
        "scheduler": dict(cfg.scheduler or {}), "num_sampling_steps": getattr(pipe.scheduler, "num_sampling_steps", None),
        "dtype": cfg.dtype, "mode": cfg.mode, "warmup_count": cfg.warmup_count, "eval_count": cfg.eval_count,
        "videos_per_run": videos_per_run,
        "attention_path": pipe.model.attention_path,
        "compile_s": (first_call - statistics.median(steps)) if first_call and steps else None,
        "step_latency": summarize(steps) if steps else None,
        "end_to_end_per_video_s": summarize(e2e),
        "sampling_per_video_s": _mean(pipe.stats.get("sample_s", [])),
        "vae_decode_per_video_s": _mean(pipe.stats.get("decode_s", [])),
        "save_per_video_s": _mean(pipe.stats.get("save_s", [])),
        "frames_per_second": frames / statistics.median(e2e),
        "peak_rss_gb": mem.peak_gb,
        "outputs": saved,
    })
    if cfg.three_stage:
        report["three_stage"] = three_stage_memory(cfg, argv)
    write_report(report, cfg.benchmark_save_path)
    return report


def _stage_commands(cfg, argv, out):
    """The three stages as run_scripts/run_sample_3stages.sh runs them (one process each)."""
    from opensora.inference.components import text_encoder_cfg, vae_cfg

    t5 = text_encoder_cfg(cfg.text_encoder, cfg.random_weights_dir)
    vae = vae_cfg(cfg.vae, cfg.random_weights_dir)
    py = sys.executable
    prompts = os.path.join(out, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as f:
        f.write("\n".join(cfg.prompt) + "\n" if cfg.prompt else open(cfg.prompt_path, encoding="utf-8").read())
    common = ["--config", cfg.config, "--prompt_path", prompts, "--seed", str(cfg.seed)]
    return [
        ("prompts", [py, "scripts/inference.py", *common, "--write_prompts", os.path.join(out, "scored.txt")]),
        ("t5", [py, "scripts/infer_t5.py", "--t5_model_dir", str(t5["from_pretrained"]), "--model_max_length",
                str(t5.get("model_max_length", 120)), "--prompt_path", os.path.join(out, "scored.txt"),
                "--output_dir", os.path.join(out, "text_embed")]),
        ("sample", [py, "scripts/inference.py", *common, "--save_dir", out, "--text_embed_folder",
                    os.path.join(out, "text_embed"), "--no_vae_decode", "true", "--verbose", "0"]),
        ("vae_decode", [py, "scripts/infer_vae_decode.py", "--latent_path", os.path.join(out, "latents"),
                        "--output_dir", out, "--vae", json.dumps(vae)]),
    ]


def three_stage_memory(cfg, argv) -> dict:
    """Run each stage in its own process; its peak RSS (VmHWM polled every 20 ms) and wall time."""
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name, cmd in _stage_commands(cfg, argv, out):
            start = time.perf_counter()
            log = os.path.join(out, f"{name}.log")  # a file, not a pipe: a full pipe would block the stage
            with open(log, "w", encoding="utf-8") as errf:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env={**os.environ, "GLOG_v": "3"})
                peak = 0
                while proc.poll() is None:
                    peak = max(peak, status_bytes("VmHWM", proc.pid))
                    time.sleep(0.02)
            with open(log, "r", encoding="utf-8", errors="replace") as f:
                err = f.read()
            results[name] = {"seconds": time.perf_counter() - start, "peak_rss_gb": peak / 2 ** 30,
                             "exit_code": proc.returncode}
            if proc.returncode != 0:
                results[name]["error"] = err.strip().splitlines()[-1:] if err else []
                break
    return results
