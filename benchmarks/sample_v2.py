"""Open-Sora 2.0 sampling benchmark: ``python scripts/benchmark.py sample --config <a 2.0 config>`` comes here.

    python scripts/benchmark.py sample --config configs/tiny/inference/sample_v2.yaml \
        --warmup-count 1 --eval-count 2 --benchmark-save-path outputs/bench_sample_v2.json

Report, as the 1.x sampling benchmark's: model load time per component, compile time (first model call minus
the median call), per-step latency (median/min/max of timed, synchronised model calls: one call per step, on
the 3B rows of the text + image guidance batch), end-to-end time per video, time per stage and per video
(text encoders, [t2i first frame], references, sampling, VAE decode and save), peak RSS, frames per second,
the attention path, the config and the host. Warm-up runs use the same settings and write to a temporary folder.
"""
from __future__ import annotations

import statistics

from .common import PeakMemory, host_info, summarize, write_report
from .sample import StepTimer, timed_runs


def _options():
    from opensora.config import Option
    from opensora.inference.v2.options import OPTIONS

    return OPTIONS + [
        Option("warmup_count", int, 1, "untimed runs first (compilation)"),
        Option("eval_count", int, 1, "timed runs over all prompts"),
        Option("benchmark_save_path", str, None, "JSON report path"),
    ]


def run(argv=None) -> dict:
    from opensora.config import Schema
    from opensora.inference.v2.options import sampling_options
    from opensora.inference.v2.pipeline import PipelineV2
    from opensora.runtime import init_runtime_from

    cfg = Schema(_options(), description="Open-Sora 2.0 sampling benchmark").parse(argv)
    cfg.sampling = sampling_options(cfg)
    if cfg.prompt is None and cfg.csv is None and not (cfg.dataset or {}).get("data_path"):
        cfg.prompt = ["a cat walks along the river."]
    cfg.verbose = 0
    report = {"benchmark": "sample_v2", "config": {k: v for k, v in cfg.items()}, "host": None}
    with PeakMemory() as mem:
        init_runtime_from(cfg, seed=cfg.seed)
        pipe = PipelineV2(cfg)
        timer = pipe.models.wrap("model", StepTimer)
        first_call, e2e, saved = timed_runs(pipe, timer, cfg,
                                            lambda: pipe.stats.update(stages_s={}, sample_s=[], decode_s=[]))
    steps = list(timer.times)
    videos = max(1, len(pipe.rows) * cfg.num_sample * cfg.eval_count)
    report.update({
        "host": host_info(),
        "resolution": [pipe.height, pipe.width], "num_frames": pipe.num_frames,
        "latent_size": [pipe.latent_frames, *pipe.latent_hw], "cond_type": pipe.cond.name,
        "t2i2v": bool(cfg.use_t2i2v), "num_steps": cfg.sampling["num_steps"], "dtype": cfg.dtype, "mode": cfg.mode,
        "warmup_count": cfg.warmup_count, "eval_count": cfg.eval_count,
        "attention_path": getattr(timer.model, "attention_path", None),
        "model_load_s": dict(pipe.models.load_s),
        "compile_s": (first_call - statistics.median(steps)) if first_call and steps else None,
        "step_latency": summarize(steps) if steps else None,
        "end_to_end_per_video_s": summarize(e2e),
        "stage_per_video_s": {k: v / videos for k, v in pipe.stats["stages_s"].items()},
        "sampling_per_video_s": sum(pipe.stats["sample_s"]) / videos,
        "vae_decode_per_video_s": sum(pipe.stats["decode_s"]) / videos,
        "frames_per_second": pipe.num_frames / statistics.median(e2e),
        "peak_rss_gb": mem.peak_gb,
        "outputs": saved,
    })
    write_report(report, cfg.benchmark_save_path)
    return report
