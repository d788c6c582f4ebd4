"""The T5 tokenizer from local files, with upstream's padding and truncation.

``AutoTokenizer.from_pretrained(dir)`` reads ``spiece.model`` (or ``tokenizer.json``) and gives the
same ids as sentencepiece plus ``</s>``. Do NOT use ``T5Tokenizer(vocab_file=...)``: with
``transformers`` 5 it silently returns all-``<unk>`` ids.

Upstream (``T5Embedder.get_text_embeddings``): ``max_length=model_max_length, padding="max_length",
truncation=True, add_special_tokens=True`` -> ids (B, L) and attention mask (B, L), 1 = real token.
A truncated prompt keeps ``</s>`` as its last token; an empty prompt is just ``</s>``.
"""
from __future__ import annotations

import os

import numpy as np

TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


class TokenizerError(ValueError):
    """The tokenizer files are missing or unreadable."""


def load_t5_tokenizer(path: str):
    """A ``transformers`` T5 tokenizer from a local directory (no download)."""
    if not os.path.isdir(path):
        raise TokenizerError(f"T5 tokenizer directory not found: {path}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise TokenizerError(
            f"no T5 tokenizer in {path}: expected {' or '.join(TOKENIZER_FILES)} (with tokenizer_config.json and "
            "special_tokens_map.json); copy them from the Hugging Face repository DeepFloyd/t5-v1_1-xxl")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many types; say which directory and why
        raise TokenizerError(f"cannot load the T5 tokenizer from {path}: {err}") from err


def tokenize(tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ``input_ids`` (B, max_length) int32 and ``mask`` (B, max_length) uint8 (1 = real token)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    out = tokenizer(texts, max_length=max_length, padding="max_length", truncation=True,
                    return_attention_mask=True, add_special_tokens=True, return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.uint8)
