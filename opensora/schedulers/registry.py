"""``SCHEDULERS``: upstream's scheduler type names -> classes ("rflow", "iddpm", "dpm-solver").

Configs name a scheduler as upstream's do: ``scheduler: {type: rflow, num_sampling_steps: 30,
cfg_scale: 7.0, use_timestep_transform: true}``; ``SCHEDULERS.build(cfg)`` rejects keys the class
does not take, naming the closest valid one.
"""
from __future__ import annotations

from ..models.registry import Registry

SCHEDULERS = Registry(
    "scheduler",
    ("opensora.schedulers.iddpm", "opensora.schedulers.dpm_solver", "opensora.schedulers.rectified_flow"),
)
