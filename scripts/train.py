"""Train STDiT / STDiT2 / STDiT3 (Open-Sora 1.0 / 1.1 / 1.2).

    python scripts/train.py --config configs/opensora/train/stdit_256x256x16.yaml \\
        --csv_path video_caption.csv --video_folder videos --text_embed_folder t5_cache
    msrun --worker_num=8 --local_worker_num=8 scripts/train.py --config ... --use_parallel True

``--video_embed_folder`` replaces ``--video_folder`` to train on cached VAE latents; ``--resume``
continues from the latest checkpoint in ``--outputs`` (or a given one). An ``--outputs`` folder that holds
another run (checkpoints or a train log) is refused without ``--resume``. See ``--help`` for all keys.

Parallel training (``--use_parallel True`` under msrun): data parallel, every rank reading its own
shard of the data and gradients averaged with AllReduce; ``zero_stage: 1`` also shards the AdamW
state (each rank updates its slice of every parameter, an AllGather rebuilds them). Both are built on
AllReduce/AllGather, which every backend has (CPU included); ``zero_impl: builtin`` asks MindSpore's
built-in ``enable_parallel_optimizer`` instead (Ascend/GPU only; untested on hardware).
Outputs: ``<outputs>/train_log.csv`` (loss, lr, step time, samples/s, loss scale, grad norm per
step) and ``<outputs>/checkpoints/step_XXXXXXXX/`` (model.ckpt and ema.ckpt load into the model /
scripts/inference.py as they are).
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.runtime import default_env, init_runtime_from  # noqa: E402
from opensora.training.options import train_schema  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402


def _bare_resume(argv):
    """``--resume`` without a value means the latest checkpoint in the output folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(argv):
        if token == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv[i + 1:i + 1] = ["latest"]
    return argv


@script_main
def main(argv=None) -> int:
    default_env()
    cfg = train_schema().parse(_bare_resume(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from opensora.training.setup import build_trainer, check_config, check_outputs

    check_config(cfg)  # before any compile or data reading
    check_outputs(cfg)  # a writable folder that holds no other run (unless --resume continues it)
    runtime = init_runtime_from(cfg, seed=cfg.seed, max_device_memory=cfg.max_device_memory,
                                distributed=cfg.use_parallel, sp_size=cfg.sp_size,
                                builtin_optimizer_parallel=cfg.zero_stage == 1 and cfg.zero_impl == "builtin")
    trainer = build_trainer(cfg, runtime)
    if cfg.resume:
        trainer.resume(cfg.resume)
    trainer.fit()
    return 0


if __name__ == "__main__":
    run_main(main)
