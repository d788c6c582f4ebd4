"""Sequence parallel: the groups and the four differentiable exchanges, on MindSpore's collectives under msrun.

Layout (upstream 1.2's scheme, ``opensora/acceleration`` on the ``opensora/v1.2`` branch): the ``world`` ranks
form ``world / sp_size`` data-parallel groups of ``sp_size`` consecutive ranks; the ranks of a group hold the same
samples and each keeps ``1/sp_size`` of every sample's token sequence. Between blocks a rank works on its shard;
attention over the whole sequence redistributes by heads (Ulysses): every rank gets the whole sequence for
``heads / sp_size`` heads, attends, and sends the results back to the shards.

The four exchanges (cells with their own backward, so training differentiates through them):

* :class:`SplitSequence`  whole -> own shard. Backward: gather the shards' gradients, divided by ``sp_size``.
* :class:`GatherSequence` shards -> whole. Backward: own slice of the gradient, times ``sp_size``.
* :class:`SequenceToHeads` (shard, all heads) -> (whole sequence, own heads). Backward: :class:`HeadsToSequence`.
* :class:`HeadsToSequence` the inverse. Backward: :class:`SequenceToHeads`.

The gradient scales are upstream's (``grad_scale="down"`` at the split, ``"up"`` at the gather): every rank then
holds ``sp_size`` times its shard's share of a parameter's gradient and the whole gradient of what is computed on
the whole sequence, so the data-parallel mean over all ``world`` ranks (``training.parallel.GradAverager``) is the
gradient of the mean loss, as without sequence parallel.

How the exchanges communicate is chosen once, when the groups are set up, from what the backend has
(``models.layers.forms``) and logged: ``AlltoAll`` on the group where it exists; otherwise (MindSpore's CPU backend:
no AlltoAll, and AllGather on the world group only) an ``AllGather`` of the whole tensor, of which each rank keeps
its group's members (world group) and of those its own part. Same numbers, ``sp_size`` (or ``world``) times the
traffic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mindspore import nn, ops
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
        comm_group, comm_size, members = GlobalComm.WORLD_COMM_GROUP, world, (0, sp_size)
    elif forms.subgroup_collectives_available():
        comm_group, comm_size, members = f"sequence_parallel_{dp_rank}", sp_size, (0, sp_size)
        create_group(comm_group, ranks)
    else:
        comm_group, comm_size, members = GlobalComm.WORLD_COMM_GROUP, world, (first, first + sp_size)
    exchange = "all_to_all" if forms.all_to_all_available() and comm_size == sp_size else "all_gather"
    _CURRENT = SequenceGroups(sp_size, sp_rank, dp_size, dp_rank, comm_group, comm_size, members, exchange)
    logger.info("sequence parallel: %d groups of %d ranks (rank %d: group %d, part %d); head exchange by %s on %s",
                dp_size, sp_size, rank, dp_rank, sp_rank, exchange, comm_group)
    return _CURRENT


# ------------------------------------------------------------------------------------------------------------
# the arithmetic of the exchanges (functions of the cells' constants, so that construct and bprop share them)
# ------------------------------------------------------------------------------------------------------------
def _members(x, all_gather, comm_size: int, pick):
    """The group members' tensors, each shaped like ``x``, stacked on a new axis 0; ``pick``: None when the
    communication group is the sequence-parallel group, else (sizes, index) of the world gather's split."""
    g = all_gather(x).reshape((comm_size,) + x.shape)
    if pick is not None:
        g = ops.split(g, pick[0], 0)[pick[1]]
    return g


def _part(x, axis: int, parts: int, index: int):
    """Part ``index`` of ``parts`` equal parts of ``x`` along ``axis``."""
    return ops.split(x, x.shape[axis] // parts, axis)[index]  # (ops.narrow fails inside a bprop graph)


def _concat_members(g, axis: int):
    """(members, ...) -> the members concatenated along ``axis`` of each."""
    return ops.concat(ops.unstack(g, 0), axis)


class _Exchange(nn.Cell):
    """The constants and the collective every exchange holds."""

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
        self.all_gather = ops.AllGather(group=groups.comm_group)
        self.by_all_to_all = groups.exchange == "all_to_all"
        self.group = groups.comm_group

    def _gather(self, x, axis: int):
        return _concat_members(_members(x, self.all_gather, self.comm_size, self.pick), axis)

    def _split(self, x, axis: int):
        return _part(x, axis, self.sp, self.rank)


class SplitSequence(_Exchange):
    """Whole sequence (same on every rank of the group) -> this rank's shard along ``axis``."""

    def __init__(self, groups: SequenceGroups, axis: int):
        super().__init__(groups)
        self.axis = axis

    def construct(self, x):
        return self._split(x, self.axis)

    def bprop(self, x, out, dout):
        return (self._gather(dout, self.axis) / self.sp,)


class GatherSequence(_Exchange):
    """The group's shards along ``axis`` -> the whole sequence on every rank of the group."""

    def __init__(self, groups: SequenceGroups, axis: int):
        super().__init__(groups)
        self.axis = axis

    def construct(self, x):
        return self._gather(x, self.axis)

    def bprop(self, x, out, dout):
        return (self._split(dout, self.axis) * self.sp,)


class _HeadExchange(_Exchange):
    """Between (shard of the sequence, all heads) and (whole sequence, 1/sp of the heads) of a tensor with the
    sequence on ``seq_axis`` and the heads on ``head_axis`` (both non-negative)."""

    def __init__(self, groups: SequenceGroups, seq_axis: int, head_axis: int):
        super().__init__(groups)
        self.seq_axis, self.head_axis = seq_axis, head_axis
        if self.by_all_to_all:
            self.to_heads = ops.AlltoAll(self.sp, head_axis, seq_axis, group=groups.comm_group)
            self.to_sequence = ops.AlltoAll(self.sp, seq_axis, head_axis, group=groups.comm_group)

    def _sequence_to_heads(self, x):
        if self.by_all_to_all:
            return self.to_heads(x)
        g = _members(x, self.all_gather, self.comm_size, self.pick)
        return _concat_members(_part(g, self.head_axis + 1, self.sp, self.rank), self.seq_axis)

    def _heads_to_sequence(self, x):
        if self.by_all_to_all:
            return self.to_sequence(x)
        g = _members(x, self.all_gather, self.comm_size, self.pick)
        return _concat_members(_part(g, self.seq_axis + 1, self.sp, self.rank), self.head_axis)


class SequenceToHeads(_HeadExchange):
    def construct(self, x):
        return self._sequence_to_heads(x)

    def bprop(self, x, out, dout):
        return (self._heads_to_sequence(dout),)


class HeadsToSequence(_HeadExchange):
    def construct(self, x):
        return self._heads_to_sequence(x)

    def bprop(self, x, out, dout):
        return (self._sequence_to_heads(dout),)


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
