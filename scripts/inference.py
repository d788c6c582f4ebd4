"""Open-Sora sampling (1.0 / 1.1 / 1.2): text-to-video/image, image/video conditioning, loops.

    python scripts/inference.py --config configs/opensora-v1-2/inference/sample_t2v.yaml \
        --prompt "a beautiful waterfall" --num-frames 4s --resolution 240p --aspect-ratio 9:16
    python scripts/inference.py --config configs/opensora/inference/stdit_256x256x16.yaml \
        --ckpt_path models/OpenSora-v1-16x256x256.ckpt --prompt_path prompts.txt
    python scripts/inference.py --config configs/tiny/inference/sample_t2v.yaml   # random tiny models, CPU

See opensora/inference/options.py for every option (dash and underscore spellings both work). Existing
output files are an error unless --overwrite true (replace) or --skip-existing true (keep, make the
missing ones; the default with --prompt-as-path). Exit status: 0 done, 1 failed, 2 bad input, 130/143
interrupted (README, "What happens when").
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.inference.options import inference_schema  # noqa: E402


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = inference_schema().parse(argv)
    from opensora.inference.pipeline import InferencePipeline
    from opensora.runtime import init_runtime_from

    pipeline = InferencePipeline(cfg)  # every check that needs no model, output folder included
    if cfg.write_prompts:
        count = pipeline.write_prompts(cfg.write_prompts)
        print(f"wrote {count} prompt(s) to {cfg.write_prompts}")
        return 0
    skipped = len(pipeline.request.plan) - len(pipeline.request.todo)
    if not pipeline.request.todo:
        print(f"Inference finished: all {skipped} sample(s) already exist in {cfg.save_dir}; nothing to do")
        return 0
    init_runtime_from(cfg, seed=cfg.seed)
    saved = pipeline.load().run()
    print(f"Inference finished: {len(saved)} file(s) written to {cfg.save_dir}"
          + (f", {skipped} finished sample(s) kept" if skipped else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
