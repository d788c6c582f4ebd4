"""Embedders shared by the diffusion transformers: patches, timesteps, sizes/fps, captions, positions, RoPE.

Parameter names follow upstream Open-Sora (``x_embedder.proj.weight``, ``t_embedder.mlp.0.weight``,
``y_embedder.y_embedding``, ``rope.freqs``...), so converted checkpoints keep the official keys.
Sinusoidal tables are computed in float32 (as upstream) and cast to the compute dtype afterwards.
"""
from __future__ import annotations

import math

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from .blocks import Mlp
from .forms import rotate_half_matrix
from .nn import Conv3d, Linear, SiLU, gelu_tanh


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------
class PatchEmbed3D(nn.Cell):
    """Video (B, C, T, H, W) -> tokens (B, N, embed_dim), N = T'·H'·W' in (T, H, W) order.

    Keeps upstream's ``proj`` Conv3d parameters (``proj.weight`` (E, C, pt, ph, pw)), but since the
    kernel equals the stride the convolution is computed as one matmul over flattened patches,
    which is exact and far faster than Conv3d on the CPU. Inputs not divisible by the patch are
    zero-padded at the end, as upstream.
    """

    def __init__(self, patch_size=(2, 4, 4), in_chans: int = 3, embed_dim: int = 96, norm_layer=None,
                 flatten: bool = True):
        super().__init__()
        if norm_layer is not None or not flatten:
            raise NotImplementedError("PatchEmbed3D here supports norm_layer=None and flatten=True (all STDiTs)")
        self.patch_size = tuple(patch_size)
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def construct(self, x):
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        pad_t, pad_h, pad_w = (-t) % pt, (-h) % ph, (-w) % pw
        if pad_t or pad_h or pad_w:
            x = ops.pad(x, (0, pad_w, 0, pad_h, 0, pad_t))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).transpose(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)
        weight = self.proj.weight.reshape(self.embed_dim, -1).astype(x.dtype)
        return ops.dense(x, weight, self.proj.bias.astype(x.dtype))


# ----------------------------------------------------------------------------------------------
# Timesteps and scalar sizes
# ----------------------------------------------------------------------------------------------
def timestep_frequencies(dim: int, max_period: float = 10000.0) -> np.ndarray:
    """exp(-ln(max_period)·k/half): the argument in float32 as upstream, the exp correctly rounded (float64),
    which matches torch's float32 exp far better than numpy's float32 exp (1 ulp here is 6e-5 at t=1000)."""
    half = dim // 2
    arg = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    return np.exp(arg.astype(np.float64)).astype(np.float32)


def sinusoidal_features(t, freqs):
    """(N,) values, (half,) frequencies (:func:`timestep_frequencies`) -> (N, 2·half) float32 [cos(t·f), sin(t·f)]."""
    args = t.astype(ms.float32).reshape(-1, 1) * freqs.reshape(1, -1)
    return ops.cat((ops.cos(args), ops.sin(args)), axis=-1)


class TimestepEmbedder(nn.Cell):
    """Scalar timesteps -> vectors: sinusoidal features (float32, as upstream) then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.SequentialCell([
            Linear(frequency_embedding_size, hidden_size),
            SiLU(),
            Linear(hidden_size, hidden_size),
        ])
        self.frequency_embedding_size = frequency_embedding_size
        self._freqs = Tensor(timestep_frequencies(frequency_embedding_size))
        self._odd = frequency_embedding_size % 2 == 1

    def timestep_embedding(self, t):
        """(N,) -> (N, frequency_embedding_size) float32: [cos(t·f), sin(t·f)] (GLIDE/DiT order)."""
        emb = sinusoidal_features(t, self._freqs)
        if self._odd:
            emb = ops.cat((emb, ops.zeros_like(emb[:, :1])), axis=-1)
        return emb

    def construct(self, t, dtype=ms.float32):
        return self.mlp(self.timestep_embedding(t).astype(dtype))


class SizeEmbedder(TimestepEmbedder):
    """Sizes / aspect ratios / frame counts / fps (B, dims) -> (B, dims·hidden_size), as upstream."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, dtype=ms.float32):
        super().__init__(hidden_size, frequency_embedding_size)
        self.outdim = hidden_size
        self.dtype = dtype  # the compute dtype (upstream: the parameters' dtype)

    def construct(self, s, bs):
        if s.ndim == 1:
            s = s.reshape(-1, 1)
        if s.shape[0] != bs:
            s = ops.tile(s, (bs // s.shape[0], 1))
        b, dims = s.shape[0], s.shape[1]
        emb = self.mlp(self.timestep_embedding(s.reshape(-1)).astype(self.dtype))
        return emb.reshape(b, dims * self.outdim)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------
class CaptionEmbedder(nn.Cell):
    """T5 features (B, 1, L, caption_channels) -> (B, 1, L, hidden_size), with the learned null caption.

    ``y_embedding`` (L, caption_channels) is the unconditional ("null") caption used for classifier-free
    guidance and for caption dropout in training (each sample replaced with probability ``uncond_prob``,
    or where ``force_drop_ids == 1``). Upstream keeps it as a buffer; here it is a Parameter with
    ``requires_grad=False`` so that it is saved and loaded under the same key.
    """

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, act_layer=gelu_tanh,
                 token_num: int = 120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size, out_features=hidden_size,
                          act_layer=act_layer)
        self.y_embedding = Parameter(initializer(Normal(in_channels ** -0.5), (token_num, in_channels), ms.float32),
                                     name="y_embedding", requires_grad=False)
        self.uncond_prob = uncond_prob
        self.token_num, self.in_channels = token_num, in_channels

    def token_drop(self, caption, force_drop_ids=None):
        if force_drop_ids is None:
            drop_ids = ops.rand((caption.shape[0],)) < self.uncond_prob
        else:
            drop_ids = force_drop_ids == 1
        null = self.y_embedding.astype(caption.dtype).reshape(1, 1, self.token_num, self.in_channels)
        return ops.where(drop_ids.reshape(-1, 1, 1, 1), null, caption)

    def null(self, n: int):
        """The learned null caption for ``n`` samples, (n, 1, L, caption_channels) float32: the unconditional
        branch of classifier-free guidance (upstream's ``T5Encoder.null``)."""
        return ops.tile(self.y_embedding.astype(ms.float32).reshape(1, 1, self.token_num, self.in_channels),
                        (n, 1, 1, 1))

    def construct(self, caption, train=False, force_drop_ids=None):
        if train and tuple(caption.shape[2:]) != (self.token_num, self.in_channels):
            raise ValueError(f"caption features must be (B, 1, {self.token_num}, {self.in_channels}) in training, "
                             f"got {caption.shape}: pad the T5 output to model_max_length")
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption)


# ----------------------------------------------------------------------------------------------
# Sin-cos position embeddings
# ----------------------------------------------------------------------------------------------
def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim): [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(-2k/embed_dim), in float64."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", np.asarray(pos, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_1d_sincos_pos_embed(embed_dim: int, length: int, scale: float = 1.0) -> np.ndarray:
    return get_1d_sincos_pos_embed_from_grid(embed_dim, np.arange(0, length)[..., None] / scale)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, scale: float = 1.0, base_size=None) -> np.ndarray:
    """(h·w, embed_dim) table, row-major over (h, w); the first half encodes the column (w) coordinate
    and the second half the row (h) coordinate, exactly as upstream (MAE's "w goes first")."""
    h, w = (grid_size, grid_size) if not isinstance(grid_size, (tuple, list)) else grid_size
    grid_h = np.arange(h, dtype=np.float32) / scale
    grid_w = np.arange(w, dtype=np.float32) / scale
    if base_size is not None:
        grid_h *= base_size / h
        grid_w *= base_size / w
    cols, rows = np.meshgrid(grid_w, grid_h)  # (h, w) each
    return np.concatenate([get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols),
                           get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows)], axis=1)


class PositionEmbedding2D(nn.Cell):
    """Upstream's ``PositionEmbedding2D`` (STDiT2/STDiT3), computed in the graph in float32.

    ``scale`` may be a tensor (it comes from the ``height``/``width`` inputs); ``h``, ``w`` and
    ``base_size`` are Python ints from the latent's static shape. Returns (1, h·w, dim).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 4:
            raise ValueError("dim must be divisible by 4")
        half = dim // 2
        self.dim = dim
        exponent = (np.arange(0, half, 2, dtype=np.float32) / np.float32(half)).astype(np.float64)
        self._inv_freq = Tensor((1.0 / 10000 ** exponent).astype(np.float32), ms.float32)

    @staticmethod
    def _sin_cos(pos, inv_freq):
        out = pos.reshape(-1, 1) * inv_freq.reshape(1, -1)
        return ops.cat((ops.sin(out), ops.cos(out)), axis=-1)

    def construct(self, h: int, w: int, scale=1.0, base_size=None, dtype=ms.float32):
        """The table (1, h·w, dim) in ``dtype``. Upstream's inverse frequencies are a buffer converted with the
        model, so in half precision they are rounded to it before the (float32) angles: reproduced."""
        inv_freq = self._inv_freq.astype(dtype).astype(ms.float32)
        grid_h = Tensor(np.arange(h, dtype=np.float32)) / scale
        grid_w = Tensor(np.arange(w, dtype=np.float32)) / scale
        if base_size is not None:
            grid_h = grid_h * (base_size / h)
            grid_w = grid_w * (base_size / w)
        emb_w = ops.broadcast_to(self._sin_cos(grid_w, inv_freq).reshape(1, w, -1), (h, w, self.dim // 2))
        emb_h = ops.broadcast_to(self._sin_cos(grid_h, inv_freq).reshape(h, 1, -1), (h, w, self.dim // 2))
        return ops.cat((emb_w, emb_h), axis=-1).reshape(1, h * w, self.dim).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (rotary_embedding_torch's RotaryEmbedding, "lang" frequencies)
# ----------------------------------------------------------------------------------------------
class RotaryEmbedding(nn.Cell):
    """``freqs`` (dim/2,) = theta^(-2k/dim), a non-trainable Parameter (key ``rope.freqs``, as upstream).

    Pairs are interleaved: features (2k, 2k+1) rotate by angle pos·freqs[k]. The model computes the
    tables once per forward with :meth:`tables` and hands them to the attention cells, so that one
    RotaryEmbedding serves every block without being registered under each of them.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        exponent = (np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)).astype(np.float64)
        freqs = 1.0 / theta ** exponent
        self.freqs = Parameter(Tensor(freqs.astype(np.float32)), name="freqs", requires_grad=False)
        self._rotate_half = Tensor(rotate_half_matrix(dim))  # for the CPU backend's pair rotation (forms.py)

    def tables(self, seq_len: int, dtype=ms.float32):
        """(cos, sin, rotate_half): cos and sin (seq_len, dim) and the (dim, dim) pair-rotation matrix. As
        rotary_embedding_torch in a model converted to ``dtype``: positions and frequencies rounded to it, the
        angles and their cos/sin computed in it."""
        pos = Tensor(np.arange(seq_len, dtype=np.float32)).reshape(-1, 1).astype(dtype)
        angles = pos * self.freqs.astype(dtype).reshape(1, -1)  # (n, dim/2)
        angles = ops.broadcast_to(angles.reshape(seq_len, -1, 1), (seq_len, self.dim // 2, 2)).reshape(seq_len, -1)
        return ops.cos(angles), ops.sin(angles), self._rotate_half


# ----------------------------------------------------------------------------------------------
# Rotary position embedding over several axes of integer positions (Flux's EmbedND)
# ----------------------------------------------------------------------------------------------
class AxialRotaryEmbedding(nn.Cell):
    """Rotary tables for integer position ids (B, L, n_axes) (e.g. the (t, h, w) of each token).

    Axis i owns ``axes_dim[i]`` features of a head, rotated in ``axes_dim[i]/2`` pairs by the angles
    pos·theta^(-2k/axes_dim[i]); the axes' angles are concatenated (D/2 angles for a head of D = sum).
    ``halves``: the pairs are (j, j + D/2) and the tables [a, a] (Llama's ``rotate_half``,
    :data:`forms.ROTATE_HALVES`); otherwise the pairs are interleaved (2j, 2j+1) and the tables
    [a0, a0, a1, a1, ...] (:data:`forms.ROTATE_PAIRS`). ``float32_angles``: the frequencies and pos·freq are
    rounded to float32 before cos/sin (as a float32 torch computation of them); otherwise float64.

    cos/sin are tabulated on the host for the positions 0..``max_position``-1 (float64 cos/sin, rounded once
    to float32, so no device sin/cos enters) and gathered by the ids in the graph: ids must be whole numbers
    in that range (the callers' ids are integer grids; :meth:`check_ids` checks them on the host).
    """

    def __init__(self, axes_dim, theta: float = 10000.0, halves: bool = False, float32_angles: bool = False,
                 max_position: int = 4096):
        super().__init__()
        self.axes_dim = tuple(int(d) for d in axes_dim)
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"every axis needs an even number of features, got {list(self.axes_dim)}")
        self.dim, self.halves, self.max_position = sum(self.axes_dim), halves, int(max_position)
        positions = np.arange(self.max_position)
        tables = []
        for d in self.axes_dim:
            if float32_angles:
                omega = np.float32(1.0) / np.float32(theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))
                angles = (positions.astype(np.float32)[:, None] * omega[None]).astype(np.float64)
            else:
                omega = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
                angles = positions.astype(np.float64)[:, None] * omega[None]
            # (P, d): the axis' cos values then its sin values, gathered together
            tables.append(Tensor(np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)))
        self.tables = tuple(tables)
        self.rotate_half = Tensor(rotate_half_matrix(self.dim, halves))  # for the CPU backend's form (forms.py)

    def check_ids(self, ids) -> None:
        """Host-side check of ids (array or Tensor): whole numbers within the tables. Raises ValueError."""
        values = np.asarray(ids.asnumpy() if isinstance(ids, Tensor) else ids, dtype=np.float64)
        if values.shape[-1] != len(self.axes_dim):
            raise ValueError(f"position ids need {len(self.axes_dim)} axes in the last dimension, got {values.shape}")
        if values.size and (np.any(values != np.round(values)) or values.min() < 0
                            or values.max() >= self.max_position):
            raise ValueError(f"position ids must be whole numbers in [0, {self.max_position}), "
                             f"got values in [{values.min()}, {values.max()}]")

    def construct(self, ids, first_row_only: bool = False):
        """ids (B, L, n_axes) -> (cos, sin, rotate_half): cos/sin (B, L, D) float32, or (1, L, D) from the
        first batch row only with ``first_row_only``; the (D, D) rotation matrix of the CPU backend's form."""
        if first_row_only:
            ids = ids[:1]
        index = ids.astype(ms.int32)
        cos, sin = [], []
        for i, d in enumerate(self.axes_dim):
            c, s = ops.split(ops.gather(self.tables[i], index[..., i], 0), d // 2, axis=-1)
            cos.append(c)
            sin.append(s)
        cos, sin = ops.cat(cos, axis=-1), ops.cat(sin, axis=-1)  # (B, L, D/2)
        return self._spread(cos), self._spread(sin), self.rotate_half

    def _spread(self, angles):
        """(B, L, D/2) -> (B, L, D): [a, a] for halves, [a0, a0, a1, a1, ...] for interleaved pairs."""
        if self.halves:
            return ops.cat((angles, angles), axis=-1)
        b, n, h = angles.shape
        return ops.stack((angles, angles), axis=-1).reshape(b, n, 2 * h)
