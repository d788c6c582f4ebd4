"""The two npz caches: T5 text embeddings and VAE video latents.

One layout per cache, written by one function and read by one function; training, inference,
the caching scripts and the three-stage sampler all go through these.

Text cache (one file per caption): ``text_emb`` (L, D) float, ``mask`` (L,) uint8,
``tokens`` (L,) int32, ``text`` (0-d str); Open-Sora 2.0 adds ``pooled_emb`` (V,) float, the CLIP
pooled embedding (its ``text_emb`` is T5's, and ``mask`` is all ones: 2.0 attends to every token).
Latent cache (one file per video): ``latent_mean`` and ``latent_std`` (C, T, H, W) float,
``fps`` float, ``ori_size`` (2,) int (height, width of the source), ``vae_type`` (0-d str).
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..utils.files import atomic_write

TEXT_KEYS = ("text_emb", "mask", "tokens", "text")
LATENT_KEYS = ("latent_mean", "latent_std", "fps", "ori_size")


class CacheError(InputError):
    """A cache file is missing, unreadable or not of the expected layout."""


def atomic_savez(path: str, **arrays) -> None:
    """``np.savez`` to a temporary name, then rename: a killed run never leaves half a file."""
    with atomic_write(path) as tmp:
        np.savez(tmp, **arrays)


def _load(path: str, keys) -> dict:
    if not os.path.isfile(path):
        raise CacheError(f"cache file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise CacheError(f"{path}: missing {missing}; expected keys {list(keys)}")
            return {k: data[k] for k in data.files}
    except CacheError:
        raise
    except Exception as err:  # zip/pickle/format errors: say which file
        raise CacheError(f"{path}: unreadable npz ({err})") from None


def write_text_embedding(path: str, text_emb, mask, tokens, text: str, pooled_emb=None) -> None:
    text_emb, mask, tokens = np.asarray(text_emb), np.asarray(mask), np.asarray(tokens)
    if text_emb.ndim != 2 or mask.shape != (text_emb.shape[0],) or tokens.shape != mask.shape:
        raise CacheError(f"text embedding shapes do not fit: text_emb {text_emb.shape}, mask {mask.shape}, "
                         f"tokens {tokens.shape}; expected (L, D), (L,), (L,)")
    extra = {}
    if pooled_emb is not None:
        extra["pooled_emb"] = np.asarray(pooled_emb)
        if extra["pooled_emb"].ndim != 1:
            raise CacheError(f"pooled_emb must be (V,), got {extra['pooled_emb'].shape}")
    atomic_savez(path, text_emb=text_emb, mask=mask.astype(np.uint8), tokens=tokens.astype(np.int32),
                 text=np.array(text), **extra)


def read_text_embedding(path: str) -> dict:
    """-> ``{"text_emb": (L, D) float32, "mask": (L,) uint8, "tokens": (L,) int32, "text": str}``, and
    ``"pooled_emb"`` (V,) float32 when the file has it (Open-Sora 2.0)."""
    data = _load(path, TEXT_KEYS)
    out = {"text_emb": data["text_emb"].astype(np.float32), "mask": data["mask"].astype(np.uint8),
           "tokens": data["tokens"].astype(np.int32), "text": str(data["text"])}
    if "pooled_emb" in data:
        out["pooled_emb"] = data["pooled_emb"].astype(np.float32)
    return out


def write_video_latent(path: str, latent_mean, latent_std, fps: float, ori_size, vae_type: str = "") -> None:
    latent_mean, latent_std = np.asarray(latent_mean), np.asarray(latent_std)
    if latent_mean.shape != latent_std.shape or latent_mean.ndim != 4:
        raise CacheError(f"latent_mean {latent_mean.shape} and latent_std {latent_std.shape} must both be (C, T, H, W)")
    atomic_savez(path, latent_mean=latent_mean, latent_std=latent_std, fps=np.float32(fps),
                 ori_size=np.asarray(ori_size, dtype=np.int32), vae_type=np.array(vae_type))


def read_video_latent(path: str) -> dict:
    """-> ``{"latent_mean", "latent_std": (C, T, H, W) float32, "fps": float, "ori_size": (h, w), "vae_type": str}``."""
    data = _load(path, LATENT_KEYS)
    return {"latent_mean": data["latent_mean"].astype(np.float32), "latent_std": data["latent_std"].astype(np.float32),
            "fps": float(data["fps"]), "ori_size": tuple(int(v) for v in data["ori_size"]),
            "vae_type": str(data["vae_type"]) if "vae_type" in data else ""}


def sample_latent(latent: dict, rng: np.random.Generator) -> np.ndarray:
    """A draw from the cached posterior: mean + std * noise (training samples a new one each epoch)."""
    noise = rng.standard_normal(latent["latent_mean"].shape).astype(np.float32)
    return latent["latent_mean"] + latent["latent_std"] * noise


def cache_file_for(folder: str, relative_path: str) -> str:
    """The cache file of a video or caption: its path relative to the data root, with ``.npz`` (an absolute
    path is taken relative to /); one that would leave ``folder`` (``../``) is an error."""
    from ..utils.outputs import inside

    stem, _ = os.path.splitext(str(relative_path).lstrip("/\\"))
    return inside(folder, stem + ".npz", "the csv path")


def plan_cache_files(folder: str, rows, source: str) -> list[tuple[str, str, object]]:
    """``rows``: (csv path, payload) per csv row -> [(cache file, csv path, payload)] without repeats.

    A csv path listed twice with the same payload is one file (logged); twice with different payloads
    (two captions of one video), or two csv paths that name one cache file (``v1.mp4`` and ``v1.avi``),
    are an error listing them: one file cannot hold both, and training would read the wrong one."""
    import logging

    from ..utils.outputs import OutputError, check_distinct

    first: dict[str, object] = {}
    conflicts, repeats, planned = [], 0, []
    for rel, payload in rows:
        rel = str(rel)
        if rel in first:
            if first[rel] != payload:
                conflicts.append(f"  {rel}: {first[rel]!r} and {payload!r}")
            else:
                repeats += 1
            continue
        first[rel] = payload
        planned.append((cache_file_for(folder, rel), rel, payload))
    if conflicts:
        raise OutputError(f"{source}: {len(conflicts)} path(s) listed more than once with different values; a "
                          "cache holds one file per path:\n" + "\n".join(conflicts[:5])
                          + (f"\n  ... and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""))
    check_distinct([(rel, path) for path, rel, _ in planned], f"row of {source}")
    if repeats:
        logging.getLogger(__name__).info("%s: %d repeated row(s) share one cache file", source, repeats)
    return planned


def remove_stale_cache_temporaries(paths) -> int:
    """Temporaries a killed run left next to these cache files (see ``opensora.utils.files``)."""
    from ..utils.files import remove_stale_temporaries

    return sum(remove_stale_temporaries(d) for d in sorted({os.path.dirname(os.path.abspath(p)) for p in paths}))


def is_cached(path: str) -> bool:
    """A finished cache file exists (writes are atomic, so an existing file is complete)."""
    return os.path.isfile(path)
