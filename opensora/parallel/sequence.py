"""Sequence parallel: the groups and the four differentiable exchanges, on MindSpore's collectives under msrun.

Layout (upstream 1.2's scheme, ``opensora/acceleration`` on the ``opensora/v1.2`` branch): the ``world`` ranks
form ``world / sp_size`` data-parallel groups of ``sp_size`` consecutive ranks; the ranks of a group hold the same
samples and each keeps ``1/sp_size`` of every sample's token sequence. Between blocks a rank works on its shard;
attention over the whole sequence redistributes by heads (Ulysses): every rank gets the whole sequence for
``heads / sp_size`` heads, attends, and sends the results back to the shards.

The four exchanges, cells built from a differentiable all-gather (or ``AlltoAll``) and slicing, so that MindSpore's
automatic differentiation gives their backward:

* :class:`SplitSequence`  whole -> own part (a slice).
* :class:`GatherSequence` parts -> whole (all-gather).
* :class:`SequenceToHeads` (part, all heads) -> (whole sequence, own heads).
* :class:`HeadsToSequence` the inverse.

Gradients: every rank computes the same loss from the gathered output, and the all-gather's backward sums each
part's gradients over the ranks, so each rank holds ``sp_size`` times its part's share of a parameter's gradient
and the whole gradient of what is computed on the whole sequence (the scales upstream writes by hand,
``grad_scale="up"`` at the gather and ``"down"`` at the split). The data-parallel mean over all ``world`` ranks
(``training.parallel.GradAverager``) is then the gradient of the mean loss, as without sequence parallel.

How the exchanges communicate is chosen once, when the groups are set up, from what the backend has
(``models.layers.forms``) and logged: ``AlltoAll`` on the group where it exists; otherwise (MindSpore's CPU backend:
no AlltoAll, no ReduceScatter, and collectives on the world group only) an all-gather of the whole tensor (an
``AllReduce`` of each rank's slot on the CPU), of which each rank keeps its group's members (world group) and of
those its part. Same numbers, ``sp_size`` (or ``world``) times the traffic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr

from ..models.layers import forms

logger = logging.getLogger(__name__)


class SequenceParallelError(ValueError):
    """A setting or a shape sequence parallel cannot use (one clear line)."""


@dataclass(frozen=True)
class SequenceGroups:
    """Where this rank sits: ``sp_size`` ranks per sequence-parallel group, ``dp_size`` groups.

    ``comm_group``: the communication group the exchanges use (the world's, or this group's); ``members``:
    the slice of that group's gather that is this sequence-parallel group (all of it unless the world group
    stands in for a subgroup); ``exchange``: "all_to_all" or "all_gather"."""

    sp_size: int
    sp_rank: int
    dp_size: int
    dp_rank: int
    comm_group: str = ""
    comm_size: int = 1
    comm_rank: int = 0
    members: tuple = (0, 1)
    exchange: str = "all_gather"

    @property
    def enabled(self) -> bool:
        return self.sp_size > 1


_NONE = SequenceGroups(1, 0, 1, 0)
_CURRENT = _NONE


def current_groups() -> SequenceGroups:
    """The groups set by :func:`init_sequence_parallel` (the runtime does it), or none (``sp_size`` 1)."""
    return _CURRENT


def reset_sequence_parallel() -> None:
    global _CURRENT
    _CURRENT = _NONE


def plan_groups(rank: int, world: int, sp_size: int) -> tuple[int, int, int, int, list[int]]:
    """(sp_rank, dp_size, dp_rank, first rank of the group, the group's ranks) for ``rank`` of ``world``."""
    if sp_size < 1 or world % sp_size:
        raise SequenceParallelError(f"sp_size ({sp_size}) must divide the number of ranks ({world})")
    dp_rank, sp_rank = divmod(rank, sp_size)
    first = dp_rank * sp_size
    return sp_rank, world // sp_size, dp_rank, first, list(range(first, first + sp_size))


def init_sequence_parallel(sp_size: int, rank: int, world: int) -> SequenceGroups:
    """Set up the groups (after ``mindspore.communication.init()``); every model built afterwards with
    ``enable_sequence_parallelism`` splits its sequences across them."""
    global _CURRENT
    sp_rank, dp_size, dp_rank, first, ranks = plan_groups(rank, world, sp_size)
    if sp_size == 1:
        _CURRENT = SequenceGroups(1, 0, dp_size, dp_rank)
        return _CURRENT
    from mindspore.communication import GlobalComm, create_group

    if sp_size == world:
        comm_group, comm_size, comm_rank, members = GlobalComm.WORLD_COMM_GROUP, world, rank, (0, sp_size)
    elif forms.subgroup_collectives_available():
        comm_group, comm_size, comm_rank, members = f"sequence_parallel_{dp_rank}", sp_size, sp_rank, (0, sp_size)
        create_group(comm_group, ranks)
    else:
        comm_group, comm_size, comm_rank, members = GlobalComm.WORLD_COMM_GROUP, world, rank, (first, first + sp_size)
    exchange = "all_to_all" if forms.all_to_all_available() and comm_size == sp_size else "all_gather"
    _CURRENT = SequenceGroups(sp_size, sp_rank, dp_size, dp_rank, comm_group, comm_size, comm_rank, members,
                              exchange)
    logger.info("sequence parallel: %d groups of %d ranks (rank %d: group %d, part %d); heads exchanged by %s, "
                "gathers by %s, on %s", dp_size, sp_size, rank, dp_rank, sp_rank, exchange,
                "all_gather" if forms.reduce_scatter_available() else "all_reduce", comm_group)
    return _CURRENT


# ------------------------------------------------------------------------------------------------------------
# the exchanges: compositions of a differentiable all-gather (or AlltoAll) and slicing, so that MindSpore's own
# automatic differentiation gives their backward (custom ``bprop`` cells fail to compile functional ops on the
# CPU backend's graph mode)
# ------------------------------------------------------------------------------------------------------------
def _part(x, axis: int, parts: int, index: int):
    """Part ``index`` of ``parts`` equal parts of ``x`` along ``axis``."""
    return ops.split(x, x.shape[axis] // parts, axis)[index]


def _concat_members(g, axis: int):
    """(members, ...) -> the members concatenated along ``axis`` of each."""
    return ops.concat(ops.unstack(g, 0), axis)


class _Exchange(nn.Cell):
    """The constants and the collective every exchange holds, and the group's all-gather.

    The all-gather must be differentiable: its adjoint sums each slot's gradients over the ranks (a
    ReduceScatter, MindSpore's backward of ``AllGather``). The CPU backend has no ReduceScatter, so there
    the gather is an ``AllReduce`` (sum) of this rank's tensor placed in its slot of zeros, whose backward
    is an AllReduce too: the same numbers, the whole gathered tensor in traffic."""

    def __init__(self, groups: SequenceGroups):
        super().__init__()
        if not groups.enabled:
            raise SequenceParallelError("sequence parallel exchanges need sp_size > 1 (init_sequence_parallel)")
        self.sp, self.rank = groups.sp_size, groups.sp_rank
        self.comm_size = groups.comm_size
        first, last = groups.members
        self.pick = None
        if (first, last) != (0, self.comm_size):  # the world group stands in for this group: keep its members
            self.pick = (tuple(n for n in (first, last - first, self.comm_size - last) if n > 0), 1 if first else 0)
        self.by_all_reduce = not forms.reduce_scatter_available()
        if self.by_all_reduce:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group=groups.comm_group)
            onehot = np.zeros((self.comm_size,), np.float32)
            onehot[groups.comm_rank] = 1.0
            self.slot = Tensor(onehot)
        else:
            self.all_gather = ops.AllGather(group=groups.comm_group)
        self.by_all_to_all = groups.exchange == "all_to_all"

    def _members(self, x):
        """The group members' tensors, each shaped like ``x``, stacked on a new axis 0."""
        if self.by_all_reduce:
            slot = self.slot.astype(x.dtype).reshape((self.comm_size,) + (1,) * len(x.shape))
            g = self.all_reduce(ops.expand_dims(x, 0) * slot)
        else:
            g = self.all_gather(x).reshape((self.comm_size,) + x.shape)
        if self.pick is not None:
            g = ops.split(g, self.pick[0], 0)[self.pick[1]]
        return g


class SplitSequence(_Exchange):
    """Whole sequence (the same on every rank of the group) -> this rank's part along ``axis``. No
    communication: its backward leaves the other parts' gradients to their ranks, and the data-parallel mean
    over the ranks adds them up (each rank's gradient of what comes after the split is ``sp_size`` times its
    share, see the module docstring)."""

    def __init__(self, groups: SequenceGroups, axis: int):
        super().__init__(groups)
        self.axis = axis

    def construct(self, x):
        return _part(x, self.axis, self.sp, self.rank)


class GatherSequence(_Exchange):
    """The group's parts along ``axis`` -> the whole sequence on every rank of the group."""

    def __init__(self, groups: SequenceGroups, axis: int):
        super().__init__(groups)
        self.axis = axis

    def construct(self, x):
        return _concat_members(self._members(x), self.axis)


class _HeadExchange(_Exchange):
    """Between (part of the sequence, all heads) and (whole sequence, 1/sp of the heads) of a tensor with the
    sequence on ``seq_axis`` and the heads on ``head_axis`` (both non-negative)."""

    def __init__(self, groups: SequenceGroups, seq_axis: int, head_axis: int):
        super().__init__(groups)
        self.seq_axis, self.head_axis = seq_axis, head_axis
        if self.by_all_to_all:
            self.to_heads = ops.AlltoAll(self.sp, head_axis, seq_axis, group=groups.comm_group)
            self.to_sequence = ops.AlltoAll(self.sp, seq_axis, head_axis, group=groups.comm_group)


class SequenceToHeads(_HeadExchange):
    def construct(self, x):
        if self.by_all_to_all:
            return self.to_heads(x)
        return _concat_members(_part(self._members(x), self.head_axis + 1, self.sp, self.rank), self.seq_axis)


class HeadsToSequence(_HeadExchange):
    def construct(self, x):
        if self.by_all_to_all:
            return self.to_sequence(x)
        return _concat_members(_part(self._members(x), self.seq_axis + 1, self.sp, self.rank), self.head_axis)


@constexpr
def check_divisible(length, heads, sp_size, what):
    """Refuse (one line) a sequence ``length`` or a head count (``heads`` > 0) that ``sp_size`` does not divide;
    also inside a compiled graph (shapes are constants there: the check runs while the graph compiles)."""
    if length % sp_size:
        raise SequenceParallelError(
            f"sequence parallel splits the {what} ({length}) across sp_size={sp_size} ranks: it must be "
            f"divisible (choose another resolution or sp_size)")
    if heads > 0 and heads % sp_size:
        raise SequenceParallelError(f"sequence parallel gives each of sp_size={sp_size} ranks an equal "
                                    f"share of the {heads} attention heads: num_heads must be divisible")
