"""Sizes that cannot work are refused before any model is loaded, with an estimate of what they would need.

Two checks, both before loading: the latent must have at least one position per axis (an image smaller
than the VAE's spatial factor has none), and the memory that sampling's activations need, estimated from
the frames, the resolution, the batch and the model's width and depth, must fit in the memory available
(``/proc/meminfo`` and the cgroup limit; checked on the CPU backend only, where host memory is what runs
out). ``--skip-size-check true`` runs anyway.

The estimate, for an STDiT with hidden size D, H heads and depth L (spatial + temporal block pairs), N
tokens per sample (latent frames x patches per frame) and the guided batch 2B:

* attention scores: the larger of the spatial (2B T' H S^2) and temporal (2B S H T'^2) score tensors,
  in float32, 1.5 times (scores and softmax overlap);
* activations: 2B N D float32 "units": about 70 per block pair kept alive in a whole-model compiled graph
  on the CPU (MindSpore's CPU graph mode keeps a block's intermediates; the README's 2.8 GB per
  full-size block pair), about 24 otherwise (PyNative, ``--blockwise``), where one pair is live at a time;
* the decoded video: B x frames x 3 x H x W float32, three copies (decoder output, joined loops, uint8).

Weights are not counted (they are loaded lazily or shared). Measured on the tiny config (CPU graph mode),
the estimate is 1.2-1.5x the peak resident memory growth (4080 frames: 3.6 GB estimated, 2.4 GB measured;
2040 frames: 0.8 GB, 0.9 GB); PyNative at 1024x1024: 6.4 GB estimated, 5.5 GB measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ConfigError

GB = 1024 ** 3
STDIT_DEFAULTS = {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": (1, 2, 2)}


class SizeError(ConfigError):
    """A size that cannot fit (the model's limits or the memory available)."""


@dataclass(frozen=True)
class MemoryEstimate:
    attention: int
    activations: int
    video: int

    @property
    def total(self) -> int:
        return self.attention + self.activations + self.video

    def describe(self) -> str:
        return (f"about {self.total / GB:.1f} GB (attention scores {self.attention / GB:.1f} GB, activations "
                f"{self.activations / GB:.1f} GB, decoded video {self.video / GB:.1f} GB; weights not counted)")


def check_latent_size(latent_thw, image_size, spatial_factor: int) -> None:
    if min(latent_thw[1:]) < 1:
        raise SizeError(f"image_size {image_size[0]}x{image_size[1]} is smaller than one latent pixel: the VAE "
                        f"compresses {spatial_factor}x per side, so height and width must be at least {spatial_factor}")


def estimate_sampling_memory(model_cfg: dict, latent_thw, batch_size: int, video_frames: int, image_size,
                             whole_graph_on_cpu: bool, write_video: bool = True) -> MemoryEstimate | None:
    """An estimate for the STDiT family (None for models it does not know)."""
    if not str(model_cfg.get("type", "")).startswith("STDiT"):
        return None
    cfg = {**STDIT_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}
    pt, ph, pw = (int(v) for v in cfg["patch_size"])
    frames = math.ceil(latent_thw[0] / pt)
    spatial = math.ceil(latent_thw[1] / ph) * math.ceil(latent_thw[2] / pw)
    b2, heads, depth, hidden = 2 * batch_size, int(cfg["num_heads"]), int(cfg["depth"]), int(cfg["hidden_size"])
    scores = 4 * b2 * heads * max(frames * spatial ** 2, spatial * frames ** 2)
    unit = 4 * b2 * frames * spatial * hidden
    if whole_graph_on_cpu:
        attention, activations = int(1.5 * scores) * depth, 70 * unit * depth
    else:
        attention, activations = int(1.5 * 1.5 * scores), int(1.5 * 24 * unit)
    video = 3 * 4 * batch_size * video_frames * 3 * image_size[0] * image_size[1] if write_video else 0
    return MemoryEstimate(attention, activations, video)


def available_memory() -> int | None:
    """Bytes of memory this process may still use: MemAvailable, capped by a cgroup limit; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, "r", encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, "r", encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            headroom = int(limit) - usage
            available = headroom if available is None else min(available, headroom)
        break
    return available


def check_memory(estimate: MemoryEstimate | None, what: str, skip: bool) -> None:
    """Refuse ``estimate`` when it exceeds the memory available (unless ``skip``)."""
    if estimate is None or skip:
        return
    available = available_memory()
    if available is not None and estimate.total > available:
        raise SizeError(f"{what} needs {estimate.describe()}, but only {available / GB:.1f} GB of memory is "
                        "available; lower --num-frames, --image-size/--resolution or --batch-size, use --blockwise "
                        "true (STDiT3 on a CPU), or give --skip-size-check true to try anyway")
