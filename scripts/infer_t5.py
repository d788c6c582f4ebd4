"""Cache T5 text embeddings: one npz per prompt or per video caption (the text-embedding cache).

    python scripts/infer_t5.py --t5_model_dir models/t5-v1_1-xxl --prompt_path prompts.txt --output_dir cache/t5
    python scripts/infer_t5.py --t5_model_dir models/t5-v1_1-xxl --csv_path data.csv --output_dir cache/t5
    python scripts/infer_t5.py --t5_model_dir DIR --prompt "a cat" "a dog" --output_dir out --mode pynative

Inputs (exactly one):
- ``--prompt_path`` txt, one prompt per line (every line counts, as upstream's ``load_prompts``), or
  ``--prompt`` one or more: files ``{index:04d}.npz`` in ``--output_dir``, nothing else is written
  there (the three-stage sampler reads them in this order);
- ``--csv_path`` with a ``text`` (or ``caption``) column and a ``path`` (or ``video``) column: one
  file per row at ``embedding_cache.cache_file_for(output_dir, path)``.
Each file is written by ``embedding_cache.write_text_embedding`` (text_emb (L, D), mask (L,),
tokens (L,), text) atomically; existing files are skipped unless ``--overwrite``, and temporary
files left by a killed run are removed, so a rerun finishes the job.
Captions are cleaned with upstream's ``text_preprocessing`` for prompts (as upstream's inference
does) and kept as they are for csv captions (as upstream's training encodes them);
``--clean_caption true|false`` overrides.

Open-Sora 2.0: ``--t5 '<the config's t5 section>' --clip '<its clip section>'`` (run_sample_3stages.sh
passes them): ``text_emb`` is T5's output (512 tokens, no attention mask, so ``mask`` is all ones),
``pooled_emb`` CLIP's pooled output; captions are not cleaned (upstream 2.0 does not clean them).
"""
from __future__ import annotations

import glob
import logging
import os
import sys

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.config import ConfigError, Option, Schema, optional, str2bool  # noqa: E402
from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.runtime import runtime_options  # noqa: E402
from opensora.utils.cli import report_user_errors, run_main  # noqa: E402
from opensora.datasets.embedding_cache import cache_file_for, is_cached, write_text_embedding  # noqa: E402

logger = logging.getLogger("infer_t5")

SCHEMA = Schema([
    Option("prompt_path", optional(str), None, "txt file, one prompt per line"),
    Option("csv_path", optional(str), None, "csv with a text/caption column and a path/video column"),
    Option("prompt", str, None, "one or more prompts", nargs="+"),
    Option("output_dir", optional(str), None, "folder of the npz files", aliases=("output_path",)),
    Option("t5_model_dir", optional(str), None, "DeepFloyd/t5-v1_1-xxl directory (converted model.ckpt or "
                                                ".safetensors) or a converted .ckpt next to config + tokenizer"),
    Option("model_max_length", int, 300, "tokens per caption: 120 (v1.0), 200 (v1.1), 300 (v1.2)"),
    Option("batch_size", int, 8, "captions per T5 call"),
    Option("dtype", str, "float32", "T5 compute dtype (bfloat16 on Ascend only)",
           choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "recompute files that already exist"),
    Option("clean_caption", str, "auto", "upstream caption cleaning: auto = prompts yes, csv captions no "
                                         "(2.0: no)", choices=("auto", "true", "false")),
    Option("t5", is_dict=True, default=None, help="Open-Sora 2.0: the config's t5 section (with --clip)"),
    Option("clip", is_dict=True, default=None, help="Open-Sora 2.0: the config's clip section (with --t5)"),
    Option("random_weights_dir", str, "models/random-init", "2.0 sections with a null from_pretrained: where "
                                                            "their random weights are (as the inference script)"),
    *runtime_options(),
], description="Cache T5 text embeddings as npz files")


def read_prompt_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise ConfigError(f"prompt file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f.readlines()]


def read_csv_items(path: str, output_dir: str) -> list[tuple[str, str]]:
    import pandas as pd

    if not os.path.isfile(path):
        raise ConfigError(f"csv file not found: {path}")
    frame = pd.read_csv(path)
    text_col = next((c for c in ("text", "caption") if c in frame.columns), None)
    path_col = next((c for c in ("path", "video") if c in frame.columns), None)
    if text_col is None or path_col is None:
        raise ConfigError(f"{path}: needs a 'text' (or 'caption') column and a 'path' (or 'video') column; "
                          f"found {list(frame.columns)}")
    texts = frame[text_col].fillna("").astype(str).tolist()
    return [(cache_file_for(output_dir, str(p)), t) for p, t in zip(frame[path_col].tolist(), texts)]


def collect_items(cfg) -> tuple[list[tuple[str, str]], bool]:
    """-> [(npz path, caption)], and whether the captions are prompts (cleaned by default)."""
    given = [name for name in ("prompt_path", "csv_path", "prompt") if cfg[name]]
    if len(given) != 1:
        raise ConfigError("give exactly one input: --prompt_path FILE.txt, --csv_path FILE.csv or --prompt TEXT ..."
                          + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    if cfg.csv_path:
        return read_csv_items(cfg.csv_path, cfg.output_dir), False
    prompts = read_prompt_file(cfg.prompt_path) if cfg.prompt_path else list(cfg.prompt)
    return [(os.path.join(cfg.output_dir, f"{i:04d}.npz"), p) for i, p in enumerate(prompts)], True


def remove_stale_temporaries(paths: list[str]) -> int:
    """Temporary files a killed run left next to its targets (``.NAME.tmpPID.npz``, see atomic_savez)."""
    removed = 0
    for path in paths:
        directory, name = os.path.split(os.path.abspath(path))
        for leftover in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.tmp*")):
            os.remove(leftover)
            removed += 1
    return removed


def check_config(cfg) -> None:
    if cfg.batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")
    if cfg.model_max_length <= 0:
        raise ConfigError(f"model_max_length must be positive, got {cfg.model_max_length}")
    if bool(cfg.t5) != bool(cfg.clip):
        raise ConfigError("Open-Sora 2.0 embeddings need both --t5 and --clip (the config's sections)")
    if not cfg.t5_model_dir and not cfg.t5:
        raise ConfigError("--t5_model_dir is required: the DeepFloyd/t5-v1_1-xxl directory (see tools/convert_t5.py)")


def run(cfg) -> int:
    """Encode every caption whose file is missing; returns how many files were written."""
    check_config(cfg)
    items, are_prompts = collect_items(cfg)
    removed = remove_stale_temporaries([p for p, _ in items])
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    todo = [(p, t) for p, t in items if cfg.overwrite or not is_cached(p)]
    logger.info("%d caption(s), %d to encode, %d already cached", len(items), len(todo), len(items) - len(todo))
    if not todo:
        return 0

    import mindspore as ms
    from tqdm import tqdm

    from opensora.models.text_encoder import T5Encoder, text_preprocessing
    from opensora.runtime import init_runtime_from

    init_runtime_from(cfg)
    if cfg.t5:
        return encode_v2(cfg, todo)
    encoder = T5Encoder(from_pretrained=cfg.t5_model_dir, model_max_length=cfg.model_max_length, dtype=cfg.dtype)
    clean = are_prompts if cfg.clean_caption == "auto" else cfg.clean_caption == "true"
    written = 0
    with tqdm(total=len(todo), desc="T5", unit="caption") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            texts = [text_preprocessing(t) if clean else t for _, t in batch]
            # pad the last batch so that graph mode compiles one shape only
            ids, mask = encoder.t5.tokenize(texts + [""] * (cfg.batch_size - len(texts)))
            emb = encoder.t5.encode_tokens(ids, mask)
            emb = (emb.astype(ms.float32) if emb.dtype == ms.bfloat16 else emb).asnumpy()  # numpy has no bf16
            for i, ((path, _), text) in enumerate(zip(batch, texts)):
                write_text_embedding(path, emb[i], mask[i], ids[i], text)
                written += 1
            bar.update(len(batch))
    logger.info("wrote %d file(s) to %s", written, cfg.output_dir)
    return written


def encode_v2(cfg, todo: list[tuple[str, str]]) -> int:
    """Open-Sora 2.0: T5 (no mask) and CLIP pooled embeddings of the captions as they are."""
    import mindspore as ms
    from tqdm import tqdm

    from opensora.dtypes import canonical
    from opensora.inference.v2.components import registry_of, resolved_section

    dtype = canonical(cfg.dtype)
    t5, clip = (registry_of(k).build(resolved_section(k, cfg[k], cfg.random_weights_dir, dtype))
                for k in ("t5", "clip"))
    written = 0
    with tqdm(total=len(todo), desc="T5+CLIP", unit="caption") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            texts = [t for _, t in batch] + [""] * (cfg.batch_size - len(batch))  # one shape for graph mode
            txt = t5(texts).astype(ms.float32).asnumpy()
            vec = clip(texts).astype(ms.float32).asnumpy()
            ids, _ = t5.embedder.tokenize(texts)  # the tokens T5 saw (no mask: all of them)
            for i, (path, text) in enumerate(batch):
                write_text_embedding(path, txt[i], np.ones(txt.shape[1], np.uint8), np.asarray(ids[i])[:txt.shape[1]],
                                     text, pooled_emb=vec[i])
                written += 1
            bar.update(len(batch))
    logger.info("wrote %d file(s) to %s", written, cfg.output_dir)
    return written


@report_user_errors
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(SCHEMA.parse(argv))
    return 0


if __name__ == "__main__":
    run_main(main)
