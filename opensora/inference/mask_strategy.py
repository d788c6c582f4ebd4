"""The mask-strategy grammar and where references land in the latent, exactly as upstream.

``"loop_id,ref_id,ref_start,target_start,length,edit_ratio"`` groups separated by ``;``; missing
fields default to ``0,0,0,0,1,0``; negative starts count from the end; the length is clipped to
what fits; a group applies only in its loop. Positions count frames of the latent z: pixel
frames in 1.0/1.1 (the SD VAE keeps every frame), latent frames in 1.2 where ``align=5`` snaps
both starts to a multiple of 5 (never past the last full chunk), so "-1" of 15 latent frames is 10.
``edit_ratio``: 0 keeps the reference frame, 1 regenerates it, r in between re-noises it at t = r*T.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError

MASK_DEFAULT = ("0", "0", "0", "0", "1", "0")
FIELDS = ("loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio")


class MaskStrategyError(ConfigError):
    """A malformed mask strategy, or one that refers to a reference that does not exist."""


@dataclass(frozen=True)
class MaskGroup:
    loop_id: int
    ref_id: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float


def parse_mask_strategy(text) -> list[MaskGroup]:
    """``"0;0,1,0,-1,1"`` -> [MaskGroup(0,0,0,0,1,0.0), MaskGroup(0,1,0,-1,1,0.0)]; "" or None -> []."""
    if text is None or str(text).strip() == "":
        return []
    groups = []
    for raw in str(text).split(";"):
        fields = [f.strip() for f in raw.split(",")]
        if not 1 <= len(fields) <= 6 or any(f == "" for f in fields):
            raise MaskStrategyError(
                f"mask strategy group {raw!r}: expected 1 to 6 comma-separated numbers "
                f"({','.join(FIELDS)}), e.g. '0' or '0,0,0,-8,8' or '0,0,0,0,32,0.4'")
        fields = fields + list(MASK_DEFAULT[len(fields):])
        try:
            ints = [int(f) for f in fields[:5]]
            ratio = float(fields[5])
        except ValueError:
            raise MaskStrategyError(f"mask strategy group {raw!r}: the first five fields must be integers and "
                                    f"the sixth a number in [0, 1] ({','.join(FIELDS)})") from None
        group = MaskGroup(*ints, ratio)
        if group.loop_id < 0 or group.ref_id < 0:
            raise MaskStrategyError(f"mask strategy group {raw!r}: loop_id and ref_id must be >= 0")
        if group.length < 1:
            raise MaskStrategyError(f"mask strategy group {raw!r}: length must be >= 1")
        if not 0.0 <= ratio <= 1.0:
            raise MaskStrategyError(f"mask strategy group {raw!r}: edit_ratio must be in [0, 1]")
        groups.append(group)
    return groups


def find_nearest_point(value: int, point: int, max_value: int) -> int:
    """Snap to a multiple of ``point``: round half up, but never to the chunk starting at or past the end."""
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def place_group(group: MaskGroup, ref_frames: int, z_frames: int, align: int | None = None):
    """-> (ref_start, target_start, length) in frames of z for one group (upstream's arithmetic)."""
    ref_start, target_start = group.ref_start, group.target_start
    if ref_start < 0:
        ref_start = ref_frames + ref_start
    if target_start < 0:
        target_start = z_frames + target_start
    if align is not None:
        ref_start = find_nearest_point(ref_start, align, ref_frames)
        target_start = find_nearest_point(target_start, align, z_frames)
    if not (0 <= ref_start < ref_frames and 0 <= target_start < z_frames):
        raise MaskStrategyError(
            f"mask strategy {group}: start {group.ref_start} in a reference of {ref_frames} frames or "
            f"{group.target_start} in {z_frames} frames of z is out of range")
    length = min(group.length, z_frames - target_start, ref_frames - ref_start)
    return ref_start, target_start, length


def apply_mask_strategy(z: np.ndarray, refs, strategies, loop_i: int, align: int | None = None):
    """Write reference latents into ``z`` (B, C, T, H, W) in place; -> mask (B, T) float32, or None
    when no group applies in this loop (plain generation).

    ``refs[i]``: the latents (C, T, H, W) of prompt i's references; ``strategies[i]``: its text.
    """
    b, t = z.shape[0], z.shape[2]
    masks = np.ones((b, t), dtype=np.float32)
    used = False
    for i, text in enumerate(strategies):
        for group in parse_mask_strategy(text):
            if group.loop_id != loop_i:
                continue
            available = refs[i] if i < len(refs) else []
            if group.ref_id >= len(available):
                raise MaskStrategyError(
                    f"prompt {i}: mask strategy refers to reference {group.ref_id}, but it has {len(available)} "
                    "reference(s); give them with --reference-path 'a.png;b.mp4' or the JSON suffix")
            ref = np.asarray(available[group.ref_id])
            r0, t0, n = place_group(group, ref.shape[1], t, align)
            z[i, :, t0:t0 + n] = ref[:, r0:r0 + n]
            masks[i, t0:t0 + n] = group.edit_ratio
            used = True
    return masks if used else None


def loop_condition(loop_i: int, ref_index: int, length: int, edit: float) -> str:
    """The group that conditions loop ``loop_i`` on the last ``length`` frames of the previous clip."""
    return f"{loop_i},{ref_index},-{length},0,{length},{edit}"
