"""Batch samplers: which samples each rank reads at each step, reproducible and resumable.

Both samplers yield, per step, the list of ``(index, num_frames, height, width)`` of this rank's batch.
The order is a pure function of (seed, epoch), so a resumed run skips the ``start`` batches it already
consumed and continues with exactly the batches it would have seen.

* :class:`FixedSizeBatchSampler`: one frame count and size for every sample (Open-Sora 1.0 configs):
  shuffle, pad to a multiple of world * batch_size (repeating from the start, as torch's
  DistributedSampler does), rank r takes batches r, r + world, ...
* :class:`BucketBatchSampler`: upstream 1.1/1.2 ``VariableVideoBatchSampler``: samples are grouped by
  bucket, each bucket is shuffled and padded to its batch size, the bucket access order is shuffled
  and padded to a multiple of world; at step i rank r takes access i * world + r, so the ranks of one
  step may train on different buckets (as upstream).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..config import ConfigError
from .bucket import Bucket


class FixedSizeBatchSampler:
    def __init__(self, num_samples: int, batch_size: int, num_frames: int, height: int, width: int,
                 world: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if num_samples < 1:
            raise ConfigError("the dataset is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.thw = (num_frames, height, width)
        self.world, self.rank, self.seed, self.shuffle, self.drop_last = world, rank, seed, shuffle, drop_last

    def _order(self, epoch: int) -> np.ndarray:
        order = np.arange(self.num_samples)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        group = self.world * self.batch_size
        if self.drop_last:
            return order[: len(order) // group * group]
        pad = (-len(order)) % group
        return np.concatenate([order, np.resize(order, pad)]) if pad else order

    def num_batches(self, epoch: int = 0) -> int:
        return len(self._order(epoch)) // (self.world * self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[list]:
        order = self._order(epoch)
        per_step = self.world * self.batch_size
        for i in range(start, len(order) // per_step):
            chunk = order[i * per_step:(i + 1) * per_step]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(int(idx), *self.thw) for idx in mine]


class BucketBatchSampler:
    """``infos``: (num_frames, height, width) per sample, from the csv (images have num_frames 1)."""

    def __init__(self, infos, bucket_config: dict, frame_interval: int = 1, world: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        self.bucket = Bucket(bucket_config)
        self.world, self.rank, self.seed, self.shuffle, self.drop_last = world, rank, seed, shuffle, drop_last
        self.groups: OrderedDict = OrderedDict()
        self.dropped = 0
        for idx, (t, h, w) in enumerate(infos):
            bucket_id = self.bucket.get_bucket_id(int(t), int(h), int(w), frame_interval,
                                                  seed + idx * self.bucket.num_bucket)
            if bucket_id is None or self.bucket.get_batch_size(bucket_id) is None:
                self.dropped += 1
                continue
            self.groups.setdefault(bucket_id, []).append(idx)
        if not self.groups:
            raise ConfigError("no sample fits any bucket of bucket_config (check num_frames/height/width "
                              "columns of the csv against the bucket resolutions and frame counts)")

    def _plan(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        lists, access = {}, []
        for bucket_id, items in self.groups.items():
            bs = self.bucket.get_batch_size(bucket_id)
            items = list(items)
            rem = len(items) % bs
            if rem:
                items = items[:-rem] if self.drop_last else items + (items * bs)[: bs - rem]
            if self.shuffle:
                items = [items[i] for i in rng.permutation(len(items))]
            lists[bucket_id] = items
            access += [bucket_id] * (len(items) // bs)
        if self.shuffle and access:
            access = [access[i] for i in rng.permutation(len(access))]
        rem = len(access) % self.world
        if rem:
            access = access[: len(access) - rem] if self.drop_last else access + (access * self.world)[: self.world - rem]
        return lists, access

    def num_batches(self, epoch: int = 0) -> int:
        return len(self._plan(epoch)[1]) // self.world

    def batches(self, epoch: int, start: int = 0) -> Iterator[list]:
        lists, access = self._plan(epoch)
        consumed: dict = {}
        for i in range(len(access) // self.world):
            step_access = access[i * self.world:(i + 1) * self.world]
            bounds = []
            for bucket_id in step_access:
                bs = self.bucket.get_batch_size(bucket_id)
                lo = consumed.get(bucket_id, 0)
                consumed[bucket_id] = lo + bs
                bounds.append((lo, lo + bs))
            if i < start:
                continue
            bucket_id = step_access[self.rank]
            lo, hi = bounds[self.rank]
            t, h, w = self.bucket.get_thw(bucket_id)
            yield [(int(idx), t, h, w) for idx in lists[bucket_id][lo:hi]]
