"""Upstream's tiled encoding and decoding (``spatial_tiled_encode/decode``, ``temporal_tiled_encode/decode``
and ``blend_v/h/t`` of ``autoencoder_kl_causal_3d.py``) as functions over any per-tile computation.

Upstream's arithmetic, kept exactly, since tiling changes the numbers (a tiled result differs from the
untiled one by O(1)):
- tiles start every ``step`` along the axis (``range(0, size, step)``), so edge tiles are smaller;
- each tile is blended with its upper neighbour (H), then its left one (W), or with the previous tile (T):
  its first ``extent`` slices fade linearly from the neighbour's last ones; upstream blends **in place**,
  so the neighbour used is the already-blended one (a tile's corner sees its neighbours' blended values);
- every tile is cropped to ``limit`` slices (the first temporal tile to ``limit + 1``: its first latent
  is the causal first frame), and a temporal tile other than the first is one frame longer and drops
  its first output frame.
Here the blend is functional and tiles are processed row by row, so only the previous row of tiles stays
alive next to the output; the result is the same.

The output size equals ``size x factor`` only when ``step`` latents cover ``limit`` pixels (upstream's
sizes: a 256-pixel tile, 32 latents, step 24, limit 192). Other tile sizes give other output sizes, in
upstream as here: e.g. a 16-pixel tile (2 latents, step 1, limit 12) decodes a 4x4 latent to 44x44.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops


def blend(a, b, extent: int, axis: int):
    """``b`` with its first ``extent`` slices along ``axis`` replaced by a linear fade from ``a``'s last ones
    (weight y/extent on ``b`` at slice y), computed in float32."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = extent
    weight = np.arange(extent, dtype=np.float64).reshape(shape) / extent  # upstream's y / blend_extent
    tail = ops.narrow(a, axis, a.shape[axis] - extent, extent).astype(ms.float32)
    head = ops.narrow(b, axis, 0, extent).astype(ms.float32)
    mixed = tail * Tensor((1 - weight).astype(np.float32)) + head * Tensor(weight.astype(np.float32))
    mixed = mixed.astype(b.dtype)
    if extent == b.shape[axis]:
        return mixed
    return ops.cat((mixed, ops.narrow(b, axis, extent, b.shape[axis] - extent)), axis)


def tiled_2d(x, run, size: int, step: int, extent: int, limit: int):
    """``run`` over (size x size) tiles of ``x`` (B, C, T, H, W) starting every ``step`` in H and W, blended
    over ``extent`` and cropped to ``limit`` (upstream's ``spatial_tiled_encode/decode``)."""
    height, width = x.shape[3], x.shape[4]
    above, rows = None, []
    for i in range(0, height, step):
        row = []
        for index, j in enumerate(range(0, width, step)):
            tile = run(x[:, :, :, i:i + size, j:j + size])
            if above is not None:
                tile = blend(above[index], tile, extent, 3)
            if row:
                tile = blend(row[-1], tile, extent, 4)
            row.append(tile)
        rows.append(ops.cat([tile[:, :, :, :limit, :limit] for tile in row], axis=4))
        above = row
    return rows[0] if len(rows) == 1 else ops.cat(rows, axis=3)


def tiled_t(x, run, length: int, step: int, extent: int, limit: int):
    """``run`` over (length + 1)-frame tiles of ``x`` starting every ``step`` frames; every tile but the first
    drops its first output frame, is blended with the previous one over ``extent`` and cropped to ``limit``
    (the first to ``limit + 1``): upstream's ``temporal_tiled_encode/decode``."""
    previous, pieces = None, []
    for i in range(0, x.shape[2], step):
        tile = run(x[:, :, i:i + length + 1])
        if previous is None:
            pieces.append(tile[:, :, :limit + 1])
        elif tile.shape[2] > 1:  # a single output frame is dropped whole: nothing to add
            tile = blend(previous, tile[:, :, 1:], extent, 2)
            pieces.append(tile[:, :, :limit])
        else:
            break
        previous = tile
    return pieces[0] if len(pieces) == 1 else ops.cat(pieces, axis=2)
