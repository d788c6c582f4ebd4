"""Sampling with sequence parallel (``--use_parallel True --sp_size N`` under msrun), the same for the 1.x and the
2.0 pipelines: every rank holds the whole model and samples the same videos (the same prompts, seeds and noise),
each video's tokens split across the ranks inside the model (``opensora/parallel/sequence.py``); rank 0 alone
writes the outputs. Sampling has no data parallel: the ranks of one run form one sequence-parallel group.

A wrong combination of the flags and the msrun launch is one line (``ConfigError``) before any model is built.
"""
from __future__ import annotations

from ..config import ConfigError, Option, str2bool

# the flags, one definition for both pipelines' options
SEQUENCE_PARALLEL_OPTIONS = [
    Option("use_parallel", str2bool, False, "under msrun: one process per device (needed by sp_size > 1)"),
    Option("sp_size", int, 1, "sequence parallel (STDiT3, the 2.0 MMDiT): split each video's tokens across this "
           "many msrun ranks (all of them); rank 0 writes the outputs", min=1, max=4096),
]


def sp_size_of(cfg) -> int:
    return int(cfg.get("sp_size") or 1)


def check_sequence_parallel_flags(cfg) -> None:
    """What the flags alone can tell (before the runtime): sp_size > 1 needs msrun's processes."""
    sp = sp_size_of(cfg)
    if sp > 1 and not cfg.get("use_parallel"):
        raise ConfigError(f"--sp_size {sp} splits each video across {sp} processes: start the script under msrun "
                          f"with {sp} workers and add --use_parallel True")


def init_sampling_runtime(cfg, seed: int | None):
    """The runtime of a sampling script (device, mode, msrun's group, sequence-parallel groups) from its options;
    every bad combination of ``use_parallel``, ``sp_size`` and the msrun launch is a ``ConfigError``."""
    from ..parallel.sequence import SequenceParallelError
    from ..runtime import init_runtime_from

    check_sequence_parallel_flags(cfg)
    sp = sp_size_of(cfg)
    try:
        rt = init_runtime_from(cfg, seed=seed, distributed=bool(cfg.get("use_parallel")), sp_size=sp)
    except SequenceParallelError as err:  # sp_size does not divide the number of msrun workers
        raise ConfigError(f"--sp_size: {err}") from None
    sampling_rank_writes(sp)
    return rt


def sampling_rank_writes(sp_size: int) -> bool:
    """Whether this rank writes the outputs (rank 0); refuses a runtime whose ranks are not all one
    sequence-parallel group of ``sp_size``."""
    from ..runtime import current_runtime

    rt = current_runtime()
    if rt.device_num != sp_size or rt.sp_size != sp_size:
        raise ConfigError(f"sampling splits every video across all msrun ranks: --sp_size must equal the number of "
                          f"workers (this run has {rt.device_num} rank(s) and --sp_size {sp_size})")
    return rt.is_main_process
