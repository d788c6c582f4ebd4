"""Open-Sora 2.0's resolution x aspect-ratio sizes ("256px", "768px"), computed as upstream computes them.

Upstream 2.0 (``opensora/datasets/aspect.py`` on ``main``) derives its tables from a formula rather than
listing them: for a resolution "Npx" (N*N pixels; "Np" is N*N*16/9) and each ratio "W:H" of
:data:`ASPECT_RATIOS`, ``width = floor(sqrt(pixels * W/H) / 16) * 16`` and
``height = floor(pixels / width / 16) * 16``. Ratios are **width:height** here (unlike 1.2's H:W keys):
"16:9" at 256px is 192 x 336 (height x width). Portrait ratios are the landscape ones reversed.

Two modes, both used by upstream's inference:

* ``training=False`` (the video size of ``sanitize_sampling_option``): the formula alone;
* ``training=True`` (the default of upstream's ``get_image_size``; the Flux first frame of
  text-to-image-to-video uses it): the size is then nudged by one 16-pixel step in H or W when that
  brings H*W closer to the pixel budget, and a ratio whose size another ratio already took is dropped
  (its portrait twin too).

The video size is then rounded up to a multiple of 16 (:func:`round_up_16`, upstream's sanitising; the
tables already are). The spatial unit 16 is upstream's ``AE_SPATIAL_COMPRESSION`` default (VAE 8 x patch 2).
"""
from __future__ import annotations

import math
from functools import lru_cache

from ..config import ConfigError

# upstream's ASPECT_RATIO_LD_LIST, width:height, in its order (the order decides which duplicate is dropped)
ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1")
SPATIAL_UNIT = 16
MAX_NUM_FRAMES = 129


def num_pixels(resolution: str) -> int:
    """"256px" -> 256*256; "720p" -> 720*720*16/9 (upstream ``get_num_pexels_from_name``)."""
    name = str(resolution).split("_")[0]
    try:
        if name.endswith("px"):
            return int(name[:-2]) ** 2
        if name.endswith("p"):
            size = int(name[:-1])
            return int(size * size / 9 * 16)
    except ValueError:
        pass
    raise ConfigError(f"unknown resolution {resolution!r}: use e.g. 256px or 768px (or 720p)")


@lru_cache(maxsize=None)
def aspect_ratio_sizes(resolution: str, training: bool = False) -> dict[str, tuple[int, int]]:
    """"W:H" -> (height, width) for every ratio upstream defines at ``resolution`` (see the module doc)."""
    total = num_pixels(resolution)
    d = SPATIAL_UNIT
    sizes: dict[str, tuple[int, int]] = {}
    portrait: dict[str, tuple[int, int]] = {}
    for ratio in ASPECT_RATIOS:
        w_ratio, h_ratio = map(float, ratio.split(":"))
        width = int(math.sqrt(total * (w_ratio / h_ratio)) // d) * d
        height = int((total / width) // d) * d
        if training:
            diff = abs(height * width - total)
            for h, w in ((height - d, width), (height + d, width), (height, width - d), (height, width + d)):
                if abs(h * w - total) < diff:
                    height, width = h, w
                    diff = abs(h * w - total)
        if (height, width) not in sizes.values() or not training:
            sizes[ratio] = (height, width)
            portrait[":".join(ratio.split(":")[::-1])] = (width, height)
    sizes.update(portrait)
    return sizes


def get_image_size(resolution: str, aspect_ratio: str, training: bool = False) -> tuple[int, int]:
    """(height, width) of ``resolution`` at the "W:H" ``aspect_ratio``; a clear error for unknown ratios."""
    table = aspect_ratio_sizes(str(resolution), bool(training))
    key = str(aspect_ratio).strip()
    if key not in table:
        mode = " in the training-mode table (used for the text-to-image first frame)" if training else ""
        raise ConfigError(f"aspect ratio {aspect_ratio!r} is not defined for {resolution}{mode}; "
                          f"valid ratios (width:height): {', '.join(table)}")
    return table[key]


def round_up_16(value: int) -> int:
    """Upstream's sanitising of H and W: up to a multiple of 16 (the latent is packed in 2x2 patches)."""
    value = int(value)
    return (value // SPATIAL_UNIT + (1 if value % SPATIAL_UNIT else 0)) * SPATIAL_UNIT


def check_num_frames(num_frames) -> int:
    """4k+1 frames up to 129 (the causal VAE's grid and upstream's longest clip); 1 frame is an image."""
    try:
        n = int(num_frames)
        if isinstance(num_frames, bool) or n != float(num_frames):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"num_frames must be a whole number 4k+1 (1, 5, 9, ..., {MAX_NUM_FRAMES}), "
                          f"got {num_frames!r}") from None
    if n < 1 or n > MAX_NUM_FRAMES or (n - 1) % 4:
        hint = ""
        if 1 < n <= MAX_NUM_FRAMES:
            low = n - (n - 1) % 4
            hint = f" (nearest: {low}" + (f" or {low + 4})" if low + 4 <= MAX_NUM_FRAMES else ")")
        raise ConfigError(f"num_frames must be 4k+1 between 1 and {MAX_NUM_FRAMES} (1 = an image), got {n}{hint}")
    return n
