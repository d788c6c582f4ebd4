"""Prompts: files, the JSON suffix, per-loop segments (``|0|a|2|b``), score suffixes, safe file names.

Grammar as upstream 1.2 (``opensora/utils/inference_utils.py``), with clear errors where upstream
asserts or loops forever.
"""
from __future__ import annotations

import json
import os
import re

from ..config import ConfigError
from ..utils.files import read_text

JSON_KEYS = ("reference_path", "mask_strategy")


class PromptError(ConfigError):
    """A prompt, prompt file or JSON suffix cannot be read; the message says how to fix it."""


def load_prompts(path: str, start_index: int = 0, end_index: int | None = None) -> list[str]:
    """One prompt per line of a UTF-8 .txt file, or the ``text`` column of a .csv; sliced [start:end].

    Every line counts (as upstream and infer_t5.py: the line number is the output index), so a blank line
    inside the slice is an error naming it; blank lines at the very end of the file are dropped."""
    return [row["text"] for row in load_prompt_rows(path, start_index, end_index)]


def load_prompt_rows(path: str, start_index: int = 0, end_index: int | None = None, columns=()) -> list[dict]:
    """Rows ``{"text": ..., column: value or ""}`` of a .txt (one prompt per line; no other columns) or a
    .csv (a ``text`` column and, when present, the optional ``columns``, read as text), sliced [start:end],
    with the checks of :func:`load_prompts`."""
    if not os.path.isfile(path):
        raise PromptError(f"prompt file not found: {path}")
    if path.lower().endswith(".csv"):
        from ..datasets.dataset import read_csv_table

        table = read_csv_table(path, need_path=False, as_text=True)
        keep = ["text"] + [c for c in columns if c in table.columns]
        rows = [{c: str(row[c]).strip() for c in keep} for row in table[keep].to_dict("records")]
        where = "row"
    else:
        rows = [{"text": line.strip()} for line in read_text(path, "prompt file").splitlines()]
        where = "line"
    while rows and not rows[-1]["text"]:
        rows.pop()
    if not rows:
        raise PromptError(f"{path}: no prompt in the file (it is empty or blank)")
    selected = rows[start_index:end_index]
    blank = [start_index + i + 1 for i, row in enumerate(selected) if not row["text"]]
    if blank:
        shown = ", ".join(str(n) for n in blank[:10]) + (" ..." if len(blank) > 10 else "")
        raise PromptError(f"{path}: {len(blank)} empty prompt(s) ({where} {shown}); every {where} is one prompt "
                          "(its index names the output): remove the empty ones or write a prompt there")
    for row in selected:
        for column in columns:
            row.setdefault(column, "")
    return selected


def check_prompt_texts(texts: list[str], start_index: int = 0) -> None:
    """Each prompt has some text once the JSON suffix is split off (no prompt is an error, as the README says)."""
    empty = [start_index + i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise PromptError(f"prompt(s) {empty[:10]} have no text; give every prompt a description")


def extract_json_from_prompts(prompts, references, mask_strategies):
    """Split ``text{"reference_path": ..., "mask_strategy": ...}``; the JSON overrides the CLI lists."""
    texts, references, mask_strategies = list(prompts), list(references), list(mask_strategies)
    for i, prompt in enumerate(prompts):
        parts = re.split(r"(?=[{])", prompt, maxsplit=1)
        texts[i] = parts[0]
        if len(parts) == 1:
            continue
        try:
            info = json.loads(parts[1])
        except json.JSONDecodeError as err:
            raise PromptError(f"prompt {i}: the text after '{{' must be a JSON object ({err.msg} at column "
                              f"{err.colno}): {parts[1]!r}") from None
        if not isinstance(info, dict):
            raise PromptError(f"prompt {i}: the JSON suffix must be an object, got {parts[1]!r}")
        for key, value in info.items():
            if key not in JSON_KEYS:
                raise PromptError(f"prompt {i}: unknown JSON key {key!r}; allowed: {', '.join(JSON_KEYS)}")
            if not isinstance(value, str):
                raise PromptError(f"prompt {i}: {key} must be a string, got {value!r}")
            if key == "reference_path":
                references[i] = value
            else:
                mask_strategies[i] = value
    return texts, references, mask_strategies


def split_prompt(text: str):
    """``"|0|a|2|b"`` -> (["a", "b"], [0, 2]); a plain prompt -> ([text], None)."""
    if not text.startswith("|0|"):
        return [text], None
    parts = text.split("|")[1:]
    if len(parts) % 2:
        raise PromptError(f"loop prompt {text!r}: expected |loop|text pairs such as |0|a cat|2|a dog")
    texts, loops = [], []
    for i in range(0, len(parts), 2):
        try:
            loop = int(parts[i])
        except ValueError:
            raise PromptError(f"loop prompt {text!r}: {parts[i]!r} is not a loop index") from None
        if loops and loop <= loops[-1]:
            raise PromptError(f"loop prompt {text!r}: loop indices must increase")
        texts.append(parts[i + 1].strip())
        loops.append(loop)
    return texts, loops


def merge_prompt(texts, loops=None) -> str:
    if loops is None:
        return texts[0]
    return "".join(f"|{loop}|{text}" for text, loop in zip(texts, loops))


def prompt_for_loop(prompt: str, loop_i: int) -> str:
    """The segment of a ``|0|...`` prompt in force at loop ``loop_i`` (the last one that started)."""
    texts, loops = split_prompt(prompt)
    if loops is None:
        return prompt
    current = texts[0]
    for text, start in zip(texts, loops):
        if start <= loop_i:
            current = text
    return current


def append_scores(prompt: str, aes=None, flow=None, camera_motion=None) -> str:
    """Upstream's score suffixes, skipped when the prompt already states them."""
    if aes is not None and "aesthetic score:" not in prompt:
        prompt = f"{prompt} aesthetic score: {float(aes):.1f}."
    if flow is not None and "motion score:" not in prompt:
        prompt = f"{prompt} motion score: {float(flow):.1f}."
    if camera_motion is not None and "camera motion:" not in prompt:
        prompt = f"{prompt} camera motion: {camera_motion}."
    return prompt


def process_prompt(prompt: str, clean=None, aes=None, flow=None, camera_motion=None) -> str:
    """Split loop segments, append scores and clean each segment (as T5 sees it), merge back."""
    texts, loops = split_prompt(prompt)
    texts = [append_scores(t, aes, flow, camera_motion) for t in texts]
    if clean is not None:
        texts = [clean(t) for t in texts]
    return merge_prompt(texts, loops)


_UNSAFE = re.compile(r"[^\w\-. ,']+")


def safe_file_name(prompt: str, max_length: int = 100) -> str:
    """A prompt as a file name: path separators and shell-hostile characters replaced, length capped."""
    name = _UNSAFE.sub("_", prompt.strip()).strip(" .")
    return (name[:max_length].rstrip(" .") or "prompt")
