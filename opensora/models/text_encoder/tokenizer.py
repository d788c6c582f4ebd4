"""Tokenizers from local files (T5, CLIP), with upstream's padding and truncation.

``AutoTokenizer.from_pretrained(dir)`` reads ``spiece.model`` (or ``tokenizer.json``) and gives the
same ids as sentencepiece plus ``</s>``. Do NOT use ``T5Tokenizer(vocab_file=...)``: with
``transformers`` 5 it silently returns all-``<unk>`` ids.

Upstream (``T5Embedder.get_text_embeddings``): ``max_length=model_max_length, padding="max_length",
truncation=True, add_special_tokens=True`` -> ids (B, L) and attention mask (B, L), 1 = real token.
A truncated prompt keeps ``</s>`` as its last token; an empty prompt is just ``</s>``.

CLIP (``openai/clip-vit-large-patch14``: ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``): the same call
with max length 77 gives ``<|startoftext|>``, the BPE tokens, ``<|endoftext|>``, then ``<|endoftext|>`` as
padding (its pad token), as upstream's ``CLIPTokenizer.from_pretrained(path, max_length=77)`` does.
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import InputError

TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


class TokenizerError(InputError):
    """The tokenizer files are missing or unreadable."""


def load_tokenizer(path: str, name: str, files: tuple, repo: str):
    """A ``transformers`` tokenizer (``AutoTokenizer``) from a local directory holding one of ``files``; no download."""
    if not os.path.isdir(path):
        raise TokenizerError(f"{name} tokenizer directory not found: {path}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in files):
        raise TokenizerError(
            f"no {name} tokenizer in {path}: expected {' or '.join(files)} (with tokenizer_config.json and "
            f"special_tokens_map.json); copy them from the Hugging Face repository {repo}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many types; say which directory and why
        raise TokenizerError(f"cannot load the {name} tokenizer from {path}: {err}") from err


def load_t5_tokenizer(path: str):
    """The T5 tokenizer of a ``DeepFloyd/t5-v1_1-xxl``-like directory."""
    return load_tokenizer(path, "T5", TOKENIZER_FILES, "DeepFloyd/t5-v1_1-xxl")


def tokenize(tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ``input_ids`` (B, max_length) int32 and ``mask`` (B, max_length) uint8 (1 = real token)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    out = tokenizer(texts, max_length=max_length, padding="max_length", truncation=True,
                    return_attention_mask=True, add_special_tokens=True, return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.uint8)
