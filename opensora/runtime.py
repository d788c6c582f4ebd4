"""The one place that configures MindSpore: device, execution mode, jit level, seeds, memory, msrun.

Every script calls :func:`init_runtime` once, before building a model, and nothing else in the
project calls ``mindspore.set_context`` or ``mindspore.communication.init``.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np

import mindspore as ms

from .config import ConfigError, Option
from .models.layers import forms
from .utils.cli import reclaim_signal_handlers

logger = logging.getLogger(__name__)

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
MODES = ("graph", "pynative")
JIT_LEVELS = ("O0", "O1", "O2")
SEED_RANGE = {"min": 0, "max": 2**32 - 1}  # NumPy's legacy seed (np.random.seed) takes 32 bits


@dataclass(frozen=True)
class Runtime:
    """What :func:`init_runtime` set up; passed around instead of re-reading the context."""

    device_target: str
    mode: str
    jit_level: str
    rank_id: int = 0
    device_num: int = 1
    builtin_optimizer_parallel: bool = False  # MindSpore shards the optimizer state (Ascend/GPU), not ZeRO-1 here
    sp_size: int = 1  # ranks per sequence-parallel group (they hold the same samples)
    dp_rank: int = 0  # which data-parallel group (of sp_size ranks) this rank is in
    dp_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.device_num > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank_id == 0


_CURRENT: Runtime | None = None


def set_seed(seed: int) -> None:
    """Seed MindSpore, NumPy and Python's random (each rank adds nothing: callers offset if needed)."""
    ms.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def init_runtime(
    device_target: str = "CPU",
    mode: str = "graph",
    jit_level: str = "O0",
    seed: int | None = 42,
    max_device_memory: str | None = None,
    distributed: bool = False,
    parallel_mode: str = "data",
    debug: bool = False,
    builtin_optimizer_parallel: bool = False,
    sp_size: int = 1,
) -> Runtime:
    """Set device, mode, jit level, seed and (under msrun) the communication group.

    ``mode`` is "graph" (default: sampling and training steps are compiled) or "pynative"
    (eager, for debugging). ``distributed=True`` must run under ``msrun``: it initialises the
    collective backend (HCCL on Ascend, NCCL on GPU, MCCL on CPU) and sets data parallel with
    gradient averaging. Optimizer sharding (ZeRO-1) is done by ``opensora.training.parallel`` on top of plain
    collectives, which every backend has; ``builtin_optimizer_parallel=True`` asks MindSpore's own
    (``enable_parallel_optimizer``, Ascend/GPU only) instead: untested here, there is no such device.
    ``sp_size`` > 1 (distributed only): sequence parallel groups of that many ranks
    (:func:`opensora.parallel.sequence.init_sequence_parallel`); data parallel runs across the groups.
    """
    global _CURRENT
    if device_target not in DEVICE_TARGETS:
        raise ConfigError(f"device_target must be one of {DEVICE_TARGETS}, got {device_target!r}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if jit_level not in JIT_LEVELS:
        raise ConfigError(f"jit_level must be one of {JIT_LEVELS}, got {jit_level!r}")
    if seed is not None and not SEED_RANGE["min"] <= seed <= SEED_RANGE["max"]:
        raise ConfigError(f"seed must be in [0, 2**32 - 1], got {seed}")

    ms_mode = ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE
    try:
        ms.set_context(mode=ms_mode, device_target=device_target)
    except RuntimeError as err:  # MindSpore's message is followed by its C++ stack: keep the first line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"device_target {device_target}: not usable here ({reason})") from None
    forms.set_backend(device_target)  # the layers' formulations follow the device (models built from now on)
    ms.set_context(jit_config={"jit_level": jit_level})
    if debug:
        ms.set_context(pynative_synchronize=True)
    if max_device_memory and device_target != "CPU":
        ms.set_context(max_device_memory=max_device_memory)

    rank_id, device_num = 0, 1
    if distributed:
        from mindspore.communication import get_group_size, get_rank, init

        try:
            init()
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"use_parallel: cannot join the process group ({reason}); start the script with "
                              "msrun (run_scripts/msrun_train.sh), or drop --use_parallel") from None
        rank_id, device_num = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        if parallel_mode != "data":
            raise ConfigError(f"parallel_mode {parallel_mode!r} is not supported; use 'data'")
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=device_num
        )
        if builtin_optimizer_parallel:
            if not forms.builtin_optimizer_parallel_available():
                raise ValueError(f"MindSpore's built-in optimizer parallel runs on Ascend/GPU, not {device_target}: "
                                 "use the collective ZeRO-1 (zero_impl: collective)")
            ms.set_auto_parallel_context(enable_parallel_optimizer=True)
    from .parallel.sequence import init_sequence_parallel, reset_sequence_parallel

    reset_sequence_parallel()
    if sp_size > 1 and not distributed:
        raise ValueError(f"sp_size {sp_size} splits sequences across ranks: run under msrun with --use_parallel True")
    groups = init_sequence_parallel(sp_size, rank_id, device_num)
    if seed is not None:
        set_seed(seed)
    # MindSpore installs its SIGINT handler when it first runs an operator: run one now, then restore the
    # scripts' handlers (Ctrl-C -> KeyboardInterrupt, exit 130; see utils/cli.py)
    (ms.Tensor(np.zeros(1, np.float32)) + 1).asnumpy()
    reclaim_signal_handlers()

    _CURRENT = Runtime(device_target, mode, jit_level, rank_id, device_num,
                       builtin_optimizer_parallel and distributed, groups.sp_size, groups.dp_rank, groups.dp_size)
    logger.info(
        "runtime: device=%s mode=%s jit=%s rank=%d/%d sp_size=%d", device_target, mode, jit_level, rank_id,
        device_num, groups.sp_size)
    return _CURRENT


def runtime_options() -> list[Option]:
    """The runtime keys every script accepts (one definition, so they are spelled and checked alike)."""
    return [
        Option("device_target", str, "CPU", "device: CPU, GPU or Ascend", choices=DEVICE_TARGETS),
        Option("mode", str, "graph", "graph (compiled, default) or pynative (eager, for debugging)", choices=MODES),
        Option("jit_level", str, "O0", "graph-mode jit level", choices=JIT_LEVELS),
    ]


def init_runtime_from(cfg, seed: int | None = None, **kwargs) -> Runtime:
    """:func:`init_runtime` with the keys of :func:`runtime_options` read from a parsed config."""
    return init_runtime(cfg.device_target, mode=cfg.mode, jit_level=cfg.jit_level, seed=seed, **kwargs)


def current_runtime() -> Runtime:
    """The runtime set by :func:`init_runtime`, or a description of MindSpore's defaults."""
    if _CURRENT is not None:
        return _CURRENT
    device = ms.get_context("device_target")
    mode = "graph" if ms.get_context("mode") == ms.GRAPH_MODE else "pynative"
    return Runtime(device, mode, "O0")


def default_env() -> None:
    """Quieten MindSpore's C++ logging unless the user asked for it."""
    os.environ.setdefault("GLOG_v", "3")
