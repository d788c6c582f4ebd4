"""Learning rate per step, computed on the host and fed to the compiled step (resume-safe: a pure
function of the step). Upstream v1.x uses a constant lr with optional linear warm-up
(``warmup_steps``, ColossalAI's LinearWarmupLR: lr * (step + 1) / (warmup_steps + 1)); cosine and
linear decay after the warm-up are offered too."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate(step: int, lr: float, warmup_steps: int = 0, schedule: str = "constant",
                  total_steps: int | None = None, end_lr: float = 0.0) -> float:
    """lr for optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant" or not total_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return end_lr + 0.5 * (lr - end_lr) * (1.0 + math.cos(math.pi * progress))
    return lr + (end_lr - lr) * progress
