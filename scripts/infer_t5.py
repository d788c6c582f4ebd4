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
tokens (L,), text) atomically; temporary files left by a killed run are removed, so a rerun finishes the
job. An existing file holding the same (processed) caption is kept; one holding another caption is an
error naming it, unless ``--overwrite`` (then everything is encoded again). Empty prompts or captions,
a csv path that leaves ``--output_dir``, and two rows that would write one file are errors before T5 is
loaded.
Captions are cleaned with upstream's ``text_preprocessing`` for prompts (as upstream's inference
does) and kept as they are for csv captions (as upstream's training encodes them);
``--clean_caption true|false`` overrides.

Open-Sora 2.0: ``--t5 '<the config's t5 section>' --clip '<its clip section>'`` (run_sample_3stages.sh
passes them): ``text_emb`` is T5's output (512 tokens, no attention mask, so ``mask`` is all ones),
``pooled_emb`` CLIP's pooled output; captions are not cleaned (upstream 2.0 does not clean them).
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.config import ConfigError, Option, Schema, optional, str2bool  # noqa: E402
from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.runtime import runtime_options  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.datasets.embedding_cache import (CacheError, is_cached, plan_cache_files,  # noqa: E402
                                               read_text_embedding, write_text_embedding)
from opensora.errors import NonFiniteError, RunError  # noqa: E402
from opensora.utils.finite import nonfinite_rows  # noqa: E402
from opensora.utils.outputs import OutputError, prepare_output_dir  # noqa: E402

logger = logging.getLogger("infer_t5")

SCHEMA = Schema([
    Option("prompt_path", optional(str), None, "txt file, one prompt per line"),
    Option("csv_path", optional(str), None, "csv with a text/caption column and a path/video column"),
    Option("prompt", str, None, "one or more prompts", nargs="+"),
    Option("empty_prompts", str2bool, False, "every line of --prompt_path is one prompt, blank ones too: Open-Sora "
                                             "2.0's negative prompts ('' by default), the .neg.txt of --write_prompts"),
    Option("output_dir", optional(str), None, "folder of the npz files", aliases=("output_path",)),
    Option("t5_model_dir", optional(str), None, "DeepFloyd/t5-v1_1-xxl directory (converted model.ckpt or "
                                                ".safetensors) or a converted .ckpt next to config + tokenizer"),
    Option("model_max_length", int, 300, "tokens per caption: 120 (v1.0), 200 (v1.1), 300 (v1.2)", min=1,
           max=4096),
    Option("batch_size", int, 8, "captions per T5 call", min=1),
    Option("dtype", str, "float32", "T5 compute dtype (bfloat16 on Ascend only)",
           choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "encode again files that already exist (default: keep those holding the "
                                         "same caption, refuse those holding another)"),
    Option("clean_caption", str, "auto", "upstream caption cleaning: auto = prompts yes, csv captions no "
                                         "(2.0: no)", choices=("auto", "true", "false")),
    Option("t5", is_dict=True, default=None, help="Open-Sora 2.0: the config's t5 section (with --clip)"),
    Option("clip", is_dict=True, default=None, help="Open-Sora 2.0: the config's clip section (with --t5)"),
    Option("random_weights_dir", str, "models/random-init", "2.0 sections with a null from_pretrained: where "
                                                            "their random weights are (as the inference script)"),
    *runtime_options(),
], description="Cache T5 text embeddings as npz files")


def read_csv_items(path: str, output_dir: str) -> list[tuple[str, str]]:
    from opensora.datasets.dataset import read_csv_table

    table = read_csv_table(path)
    texts = ["" if t != t else str(t) for t in table["text"].tolist()]  # NaN: an empty cell
    empty = [i + 2 for i, t in enumerate(texts) if not t.strip()]  # +2: the header is line 1
    if empty:
        raise ConfigError(f"{path}: {len(empty)} row(s) with an empty caption (csv lines {empty[:10]}); give every "
                          "video a caption or remove its row")
    return [(out, text) for out, _, text in plan_cache_files(output_dir, zip(table["path"].tolist(), texts), path)]


def collect_items(cfg) -> tuple[list[tuple[str, str]], bool]:
    """-> [(npz path, caption)], and whether the captions are prompts (cleaned by default)."""
    from opensora.inference.prompts import load_prompts

    given = [name for name in ("prompt_path", "csv_path", "prompt") if cfg[name]]
    if len(given) != 1:
        raise ConfigError("give exactly one input: --prompt_path FILE.txt, --csv_path FILE.csv or --prompt TEXT ..."
                          + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    if cfg.csv_path:
        return read_csv_items(cfg.csv_path, cfg.output_dir), False
    if cfg.prompt_path and cfg.empty_prompts:
        from opensora.utils.files import read_text

        prompts = [line.strip() for line in read_text(cfg.prompt_path, "prompt file").splitlines()]
    else:
        prompts = load_prompts(cfg.prompt_path) if cfg.prompt_path else [str(p).strip() for p in cfg.prompt]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty and not cfg.empty_prompts:
        raise ConfigError(f"--prompt: prompt(s) {empty} are empty")
    return [(os.path.join(cfg.output_dir, f"{i:04d}.npz"), p) for i, p in enumerate(prompts)], True


def check_config(cfg) -> None:
    if bool(cfg.t5) != bool(cfg.clip):
        raise ConfigError("Open-Sora 2.0 embeddings need both --t5 and --clip (the config's sections)")
    if cfg.t5:
        return
    if not cfg.t5_model_dir:
        raise ConfigError("--t5_model_dir is required: the DeepFloyd/t5-v1_1-xxl directory (see tools/convert_t5.py)")
    if not os.path.exists(cfg.t5_model_dir):
        raise ConfigError(f"--t5_model_dir {cfg.t5_model_dir}: not found")


def stale_files(items: list[tuple[str, str]], overwrite: bool) -> list[tuple[str, str]]:
    """-> the items still to encode. A cached file is kept when it holds this caption; another caption in it is
    an error (a rerun with changed captions must not keep the old embedding), unless ``overwrite``."""
    if overwrite:
        return list(items)
    todo, other = [], []
    for path, text in items:
        if not is_cached(path):
            todo.append((path, text))
            continue
        try:
            cached = read_text_embedding(path)["text"]
        except CacheError:
            todo.append((path, text))  # unreadable: written again
            continue
        if cached != text:
            other.append(f"  {path}: {cached!r} (now {text!r})")
    if other:
        raise OutputError(f"{len(other)} cached file(s) hold the embedding of another caption:\n" + "\n".join(other[:5])
                          + "\ngive --overwrite true to encode them again, or another --output_dir")
    return todo


def run(cfg) -> int:
    """Encode every caption whose file is missing; returns how many files were written."""
    check_config(cfg)
    items, are_prompts = collect_items(cfg)
    prepare_output_dir(cfg.output_dir, "--output_dir")
    from opensora.datasets.embedding_cache import remove_stale_cache_temporaries
    from opensora.models.text_encoder import text_preprocessing

    remove_stale_cache_temporaries([p for p, _ in items])
    auto_clean = are_prompts and not cfg.t5  # upstream 2.0 does not clean its captions
    clean = auto_clean if cfg.clean_caption == "auto" else cfg.clean_caption == "true"
    items = [(p, text_preprocessing(t) if clean else t) for p, t in items]  # the text each file will hold
    todo = stale_files(items, cfg.overwrite)
    logger.info("%d caption(s), %d to encode, %d already cached", len(items), len(todo), len(items) - len(todo))
    if not todo:
        return 0

    import mindspore as ms
    from tqdm import tqdm

    from opensora.models.text_encoder import T5Encoder
    from opensora.runtime import init_runtime_from

    init_runtime_from(cfg)
    written = (encode_v2 if cfg.t5 else encode_t5)(cfg, todo)
    logger.info("wrote %d file(s) to %s", written, cfg.output_dir)
    missing = [p for p, _ in todo if not is_cached(p)]
    if missing:
        raise RunError(f"{len(missing)} embedding file(s) were not written: {missing[:5]}")
    return written


def refuse_nonfinite(emb: np.ndarray, texts: list[str], encoder: str) -> None:
    bad = [texts[r] for r in nonfinite_rows(emb[:len(texts)])]
    if bad:
        raise NonFiniteError(f"{encoder} produced NaN/inf for {bad[:3]}; likely cause: float16 overflow (T5 "
                             "overflows in float16: use --dtype float32, or bfloat16 on Ascend)")


def encode_t5(cfg, todo: list[tuple[str, str]]) -> int:
    """Open-Sora 1.x: T5 embeddings with their attention mask and tokens."""
    import mindspore as ms
    from tqdm import tqdm

    from opensora.models.text_encoder import T5Encoder

    encoder = T5Encoder(from_pretrained=cfg.t5_model_dir, model_max_length=cfg.model_max_length, dtype=cfg.dtype)
    written = 0
    with tqdm(total=len(todo), desc="T5", unit="caption") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            texts = [t for _, t in batch]
            # pad the last batch so that graph mode compiles one shape only
            ids, mask = encoder.t5.tokenize(texts + [""] * (cfg.batch_size - len(texts)))
            emb = encoder.t5.encode_tokens(ids, mask)
            emb = (emb.astype(ms.float32) if emb.dtype == ms.bfloat16 else emb).asnumpy()  # numpy has no bf16
            refuse_nonfinite(emb, texts, "T5")
            for i, ((path, _), text) in enumerate(zip(batch, texts)):
                write_text_embedding(path, emb[i], mask[i], ids[i], text)
                written += 1
            bar.update(len(batch))
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
            refuse_nonfinite(txt, texts[:len(batch)], "T5")
            refuse_nonfinite(vec, texts[:len(batch)], "CLIP")
            ids, _ = t5.embedder.tokenize(texts)  # the tokens T5 saw (no mask: all of them)
            for i, (path, text) in enumerate(batch):
                write_text_embedding(path, txt[i], np.ones(txt.shape[1], np.uint8), np.asarray(ids[i])[:txt.shape[1]],
                                     text, pooled_emb=vec[i])
                written += 1
            bar.update(len(batch))
    return written


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(SCHEMA.parse(argv))
    return 0


if __name__ == "__main__":
    run_main(main)
