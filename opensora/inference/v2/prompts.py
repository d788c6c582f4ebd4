"""Open-Sora 2.0's prompt suffixes: frame rate and motion score, on the positive prompts only.

Upstream (``opensora/utils/inference.py``): each prompt is stripped and ends with a period, then gets
``" {fps} FPS."`` unless it already ends with one, then ``" {motion_score} motion score."``; the
negative prompts stay as they are (``""`` by default). An empty prompt becomes ``". 24 FPS. 4 motion
score."``. The motion score is the text the config gives (``"4"``); upstream's ``"dynamic"`` asks an
online service (OpenAI) to rate each prompt: nothing is called out here, it is refused.
"""
from __future__ import annotations

import math
import re

from ...config import ConfigError

_FPS_SUFFIX = re.compile(r"\d+ FPS\.$")


def motion_score_text(value) -> str | None:
    """The motion score as it goes into the prompt (the config's own spelling), or None for no suffix."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() == "dynamic":
        raise ConfigError("--motion-score dynamic asks an online service (OpenAI) to rate each prompt; nothing is "
                          "called out here: give a number, e.g. --motion-score 4 (upstream's default)")
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"motion_score must be a number (e.g. 4), got {value!r}")
    return text


def ensure_period(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def add_fps(text: str, fps: int) -> str:
    text = ensure_period(text)
    return text if _FPS_SUFFIX.search(text) else f"{text} {int(fps)} FPS."


def add_suffixes(text: str, fps: int, motion_score: str | None) -> str:
    """``"raining, sea"`` -> ``"raining, sea. 24 FPS. 4 motion score."`` (score None: no score suffix)."""
    text = add_fps(text, fps)
    return text if motion_score is None else f"{text} {motion_score} motion score."
