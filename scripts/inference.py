"""Open-Sora sampling (1.0 / 1.1 / 1.2 / 2.0): text-to-video/image, image/video conditioning, loops.

    python scripts/inference.py --config configs/opensora-v1-2/inference/sample_t2v.yaml \
        --prompt "a beautiful waterfall" --num-frames 4s --resolution 240p --aspect-ratio 9:16
    python scripts/inference.py --config configs/opensora/inference/stdit_256x256x16.yaml \
        --ckpt_path models/OpenSora-v1-16x256x256.ckpt --prompt_path prompts.txt
    python scripts/inference.py --config configs/tiny/inference/sample_t2v.yaml   # random tiny models, CPU
    msrun --worker_num=2 --local_worker_num=2 --join=True scripts/inference.py --config ... \
        --use_parallel True --sp_size 2        # sequence parallel (1.2 and 2.0): each video's tokens split over
                                               # 2 devices, rank 0 writes the outputs
    # Open-Sora 2.0 (a config with a sampling_option section), upstream's flags
    python scripts/inference.py --config configs/opensora-v2/inference/t2i2v_256px.yaml --save-dir samples \
        --prompt "A rainy scene by the sea"
    python scripts/inference.py --config configs/opensora-v2/inference/256px.yaml --cond_type i2v_head \
        --prompt "A plump pig wallows in a muddy pond" --ref assets/texts/i2v.png

See opensora/inference/options.py (1.x) and opensora/inference/v2/options.py (2.0) for every option
(dash and underscore spellings both work). Existing output files are an error unless --overwrite true
(replace) or --skip-existing true (keep, make the missing ones; the default with --prompt-as-path). Exit
status: 0 done, 1 failed, 2 bad input, 130/143 interrupted (README, "What happens when").
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.inference.options import inference_schema  # noqa: E402
from opensora.inference.v2.options import is_v2_config  # noqa: E402


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = config_first(sys.argv[1:] if argv is None else list(argv))
    if is_v2_config(argv):
        return main_v2(argv)
    cfg = inference_schema().parse(argv)
    from opensora.inference.pipeline import InferencePipeline
    from opensora.inference.sequence_parallel import check_sequence_parallel_flags, init_sampling_runtime

    check_sequence_parallel_flags(cfg)
    pipeline = InferencePipeline(cfg)  # every check that needs no model, output folder included
    if cfg.write_prompts:
        count = pipeline.write_prompts(cfg.write_prompts)
        print(f"wrote {count} prompt(s) to {cfg.write_prompts}")
        return 0
    skipped = len(pipeline.request.plan) - len(pipeline.request.todo)
    if not pipeline.request.todo:
        print(f"Inference finished: all {skipped} sample(s) already exist in {cfg.save_dir}; nothing to do")
        return 0
    rt = init_sampling_runtime(cfg, seed=cfg.seed)
    saved = pipeline.load().run()
    if rt.is_main_process:  # (sequence parallel: the other ranks write nothing)
        print(f"Inference finished: {len(saved)} file(s) written to {cfg.save_dir}"
              + (f", {skipped} finished sample(s) kept" if skipped else ""))
    return 0


def config_first(argv: list[str]) -> list[str]:
    """Upstream's form ``inference.py CONFIG --flag ...``: a leading path is the ``--config``."""
    if argv and not argv[0].startswith("-"):
        path = argv[0]
        if path.endswith(".py"):
            from opensora.config import ConfigError

            raise ConfigError(f"{path}: upstream's Python configs are not read here; use the YAML twin, e.g. "
                              "configs/opensora-v2/inference/256px.yaml")
        return ["--config", path, *argv[1:]]
    return argv


def main_v2(argv) -> int:
    """Open-Sora 2.0: every input is checked (sizes, frames, prompts, references, weights, output files) before a
    model loads; the same output rules, flags and exit statuses as 1.x."""
    from opensora.inference.sequence_parallel import check_sequence_parallel_flags, init_sampling_runtime
    from opensora.inference.v2.options import parse_v2
    from opensora.inference.v2.pipeline import PipelineV2

    cfg = parse_v2(argv)
    check_sequence_parallel_flags(cfg)
    pipeline = PipelineV2(cfg)  # every check that needs no model, the output files included
    if cfg.write_prompts:
        count = pipeline.write_prompts(cfg.write_prompts)
        print(f"wrote {count} prompt(s) to {cfg.write_prompts}")
        return 0
    skipped = len(pipeline.plan) - len(pipeline.todo)
    if not pipeline.todo:
        print(f"Inference finished: all {skipped} sample(s) already exist in {cfg.save_dir}; nothing to do")
        return 0
    rt = init_sampling_runtime(cfg, seed=cfg.seed)
    saved = pipeline.run()
    if rt.is_main_process:  # (sequence parallel: the other ranks write nothing)
        print(f"Inference finished: {len(saved)} sample(s) written to {cfg.save_dir}"
              + (f", {skipped} finished sample(s) kept" if skipped else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
