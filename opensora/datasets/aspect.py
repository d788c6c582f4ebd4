"""Resolution x aspect-ratio presets and frame-count presets, exactly as Open-Sora 1.2 defines them.

The tables (``aspect_tables.json``) are data taken verbatim from upstream
``opensora/datasets/aspect.py`` (v1.2); sizes are (height, width) and ratios are H:W, so
"9:16" at 240p is 240x426, a landscape frame.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache

from ..config import ConfigError

# Durations are multiples of 17 frames (one temporal-VAE chunk): "4s" is 102 frames.
NUM_FRAMES_MAP = {
    "1x": 51, "2x": 102, "4x": 204, "8x": 408, "16x": 816,
    "2s": 51, "4s": 102, "8s": 204, "16s": 408, "32s": 816,
}


@lru_cache(maxsize=1)
def _tables() -> dict:
    with open(os.path.join(os.path.dirname(__file__), "aspect_tables.json"), "r", encoding="utf-8") as f:
        data = json.load(f)
    data["resolutions"] = {
        name: {"num_pixels": t["num_pixels"], "sizes": {k: tuple(v) for k, v in t["sizes"].items()}}
        for name, t in data["resolutions"].items()
    }
    return data


def aspect_ratio_map() -> dict[str, str]:
    """"H:W" -> table key ("9:16" -> "0.56")."""
    return dict(_tables()["ratio_keys"])


def resolutions() -> list[str]:
    return list(_tables()["resolutions"])


def ratio_table(resolution: str) -> dict[str, tuple[int, int]]:
    """Table key ("0.56") -> (height, width) for one resolution preset."""
    tables = _tables()["resolutions"]
    if resolution not in tables:
        raise ConfigError(f"unknown resolution {resolution!r}; valid resolutions: {', '.join(tables)}")
    return tables[resolution]["sizes"]


def num_pixels(resolution: str) -> int:
    ratio_table(resolution)
    return _tables()["resolutions"][resolution]["num_pixels"]


def get_image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) for a resolution preset and an "H:W" ratio (a table key such as "0.56" also works)."""
    table = ratio_table(resolution)
    ratio_map = aspect_ratio_map()
    key = ratio_map.get(str(aspect_ratio), str(aspect_ratio))
    if key not in table:
        valid = [r for r, k in ratio_map.items() if k in table] or list(table)
        raise ConfigError(
            f"aspect ratio {aspect_ratio!r} is not defined for resolution {resolution!r}; "
            f"valid ratios (height:width) for it: {', '.join(valid)}"
        )
    return table[key]


def get_num_frames(num_frames) -> int:
    """"4s" -> 102, "2x" -> 102, 17 -> 17, "17" -> 17."""
    if isinstance(num_frames, bool):
        raise ConfigError(f"num_frames must be a count or one of {list(NUM_FRAMES_MAP)}, got {num_frames!r}")
    key = str(num_frames).strip()
    if key in NUM_FRAMES_MAP:
        return NUM_FRAMES_MAP[key]
    try:
        value = int(key)
    except ValueError:
        raise ConfigError(
            f"num_frames must be a positive integer or one of {list(NUM_FRAMES_MAP)}, got {num_frames!r}"
        ) from None
    if value < 1:
        raise ConfigError(f"num_frames must be at least 1, got {value}")
    return value


def get_closest_ratio(height: float, width: float, ratios: dict) -> str:
    """The table key nearest to height/width (used to place a clip in a bucket)."""
    aspect = height / width
    return min(ratios.keys(), key=lambda r: abs(float(r) - aspect))
