"""Multi-resolution buckets (Open-Sora 1.1/1.2): ``bucket_config`` = {resolution: {frames: (keep_prob, batch_size)}}.

A clip goes to the largest resolution whose pixel count it reaches within 0.8x, then to the longest
frame bucket it exceeds (frames > bucket * frame_interval), then to the nearest aspect ratio of that
resolution's table. ``keep_prob`` may be a pair (p_resolution, p_frames); ``(0.0, None)`` disables a
bucket. The coin flips use ``np.random.default_rng(seed + bucket index)`` exactly as upstream, so the
assignment is reproducible for a seed and identical on every rank.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..config import ConfigError
from .aspect import get_closest_ratio, num_pixels, ratio_table


def _prob_pair(value, where: str):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"bucket_config {where}: keep_prob must be a number or a pair, got {value!r}")
        return tuple(None if v is None else float(v) for v in value)
    return float(value)


class Bucket:
    def __init__(self, bucket_config: dict):
        if not isinstance(bucket_config, dict) or not bucket_config:
            raise ConfigError("bucket_config must map resolutions to {num_frames: [keep_prob, batch_size]}")
        self.hw_criteria, self.ar_criteria = {}, {}
        self.bucket_probs, self.bucket_bs, self.bucket_id = OrderedDict(), OrderedDict(), OrderedDict()
        for res in bucket_config:
            ratio_table(res)  # raises a clear error for an unknown resolution
        counter = 0
        for res in sorted(bucket_config, key=num_pixels, reverse=True):
            frames_cfg = bucket_config[res]
            if not isinstance(frames_cfg, dict):
                raise ConfigError(f"bucket_config[{res!r}] must map num_frames to [keep_prob, batch_size]")
            self.hw_criteria[res] = num_pixels(res)
            self.ar_criteria[res] = dict(ratio_table(res))
            self.bucket_probs[res], self.bucket_bs[res], self.bucket_id[res] = OrderedDict(), OrderedDict(), {}
            for t in sorted((int(k) for k in frames_cfg), reverse=True):
                value = frames_cfg[t] if t in frames_cfg else frames_cfg[str(t)]
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise ConfigError(f"bucket_config[{res!r}][{t}] must be [keep_prob, batch_size], got {value!r}")
                self.bucket_probs[res][t] = _prob_pair(value[0], f"[{res!r}][{t}]")
                self.bucket_bs[res][t] = None if value[1] is None else int(value[1])
                self.bucket_id[res][t] = counter
                counter += 1
        self.num_bucket = sum(len(self.bucket_probs[r]) * len(self.ar_criteria[r]) for r in self.bucket_probs)

    def get_bucket_id(self, T: int, H: int, W: int, frame_interval: int = 1, seed: int = 0):
        """(resolution, frames, ratio key) for a clip of T frames of HxW, or None when it is dropped."""
        resolution = H * W
        for hw_id, t_criteria in self.bucket_probs.items():
            if resolution < self.hw_criteria[hw_id] * 0.8:
                continue
            if T == 1:
                if 1 in t_criteria:
                    rng = np.random.default_rng(seed + self.bucket_id[hw_id][1])
                    prob = t_criteria[1]
                    prob = prob[0] if isinstance(prob, tuple) else prob
                    if rng.random() < prob:
                        return hw_id, 1, get_closest_ratio(H, W, self.ar_criteria[hw_id])
                continue
            found, t_id, prob, rng = False, None, None, None
            for t_id, prob in t_criteria.items():
                rng = np.random.default_rng(seed + self.bucket_id[hw_id][t_id])
                if isinstance(prob, tuple):
                    if prob[1] is None or rng.random() > prob[1]:
                        continue
                if T > t_id * frame_interval and t_id != 1:
                    found = True
                    break
            if not found:
                continue
            keep = prob[0] if isinstance(prob, tuple) else prob
            if keep >= 1 or rng.random() < keep:
                return hw_id, t_id, get_closest_ratio(H, W, self.ar_criteria[hw_id])
        return None

    def get_thw(self, bucket_id) -> tuple[int, int, int]:
        res, t, ar = bucket_id
        h, w = self.ar_criteria[res][ar]
        return t, h, w

    def get_batch_size(self, bucket_id) -> int:
        return self.bucket_bs[bucket_id[0]][bucket_id[1]]

    def __len__(self) -> int:
        return self.num_bucket
