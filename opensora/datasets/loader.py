"""A plain Python batch iterator over a dataset and a batch sampler, with a position that can be resumed.

Batches of the next steps are read in background threads (decord/imageio release the GIL), so reading
overlaps the compiled step. Each sample gets its own NumPy Generator seeded by (seed, epoch, step,
rank, slot): which frames are cut and which latent is drawn do not depend on thread timing, and a
resumed run reads exactly what the uninterrupted run would have read.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from .dataset import VideoTextDataset, collate


class BatchLoader:
    def __init__(self, dataset: VideoTextDataset, sampler, seed: int = 0, rank: int = 0, num_workers: int = 2,
                 prefetch: int = 2, latent_frames: Callable[[int], int | None] | None = None):
        self.dataset, self.sampler = dataset, sampler
        self.seed, self.rank = int(seed), int(rank)
        self.num_workers = max(1, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self.latent_frames = latent_frames or (lambda num_frames: None)

    def num_batches(self, epoch: int = 0) -> int:
        return self.sampler.num_batches(epoch)

    def _load(self, epoch: int, step: int, specs: list) -> dict:
        samples = []
        for slot, (index, t, h, w) in enumerate(specs):
            rng = np.random.default_rng([self.seed, epoch, step, self.rank, slot])
            samples.append(self.dataset.load_or_replace(index, (t, h, w), rng, latent_frames=self.latent_frames(t)))
        return collate(samples)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(batch index in the epoch, batch) from batch ``start`` on."""
        specs = enumerate(self.sampler.batches(epoch, start), start=start)
        with ThreadPoolExecutor(self.num_workers) as pool:
            pending = collections.deque()
            for _ in range(self.prefetch):
                item = next(specs, None)
                if item is None:
                    break
                pending.append((item[0], pool.submit(self._load, epoch, item[0], item[1])))
            while pending:
                index, future = pending.popleft()
                item = next(specs, None)
                if item is not None:
                    pending.append((item[0], pool.submit(self._load, epoch, item[0], item[1])))
                yield index, future.result()
