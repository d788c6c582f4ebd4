"""The training dataset: a csv of videos/images and captions, raw frames or cached latents, cached T5.

csv columns: ``path`` (or ``video``, as in the MindSpore README), ``text`` (or ``caption``), and
optionally ``num_frames``, ``height``, ``width`` (needed for buckets), ``fps``, ``aes``, ``flow``.
Paths are relative to ``video_folder`` (absolute paths also work). Caches are found with
:func:`~opensora.datasets.embedding_cache.cache_file_for` from the same relative path the caching
scripts used, and read with the same reader functions.

A sample that cannot be read (missing/corrupt video, bad cache file, too few frames) is logged with
its path and reason, counted in :attr:`VideoTextDataset.failures`, and replaced by another sample of
the same batch shape; training never stops for it (after 10 failed replacements in a row it does).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import numpy as np

from ..config import ConfigError
from ..errors import InputError, RunError
from .embedding_cache import cache_file_for, read_text_embedding, read_video_latent, sample_latent
from .video_io import is_image

logger = logging.getLogger(__name__)

IMG_FPS = 120  # upstream's fps condition for images
PATH_COLUMNS = ("path", "video")
TEXT_COLUMNS = ("text", "caption")
MAX_REPLACEMENTS = 10


class SampleError(RuntimeError):
    """One sample cannot be used; the dataset replaces it."""


def read_csv_table(csv_path: str, need_size_columns: bool = False, need_path: bool = True, need_text: bool = True,
                   as_text: bool = False):
    """Read the csv and normalise the column names (``path``, ``text``); a csv without what is needed is an
    error now, naming the file. ``as_text``: every cell as a string, an empty cell as "" (prompt files: a
    name column of "001" stays "001")."""
    import pandas as pd

    if not csv_path or not os.path.isfile(csv_path):
        raise ConfigError(f"csv file not found: {csv_path!r}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False) if as_text else pd.read_csv(csv_path)
    except Exception as err:  # the boundary: pandas raises parser, decoding and I/O errors of many types
        raise ConfigError(f"{csv_path}: cannot read the csv ({type(err).__name__}: {err})") from None
    path_col = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if path_col is None and need_path:
        raise ConfigError(f"{csv_path}: needs a column 'path' (or 'video') with the video paths; "
                          f"found columns {list(table.columns)}")
    text_col = next((c for c in TEXT_COLUMNS if c in table.columns), None)
    if text_col is None and need_text:
        raise ConfigError(f"{csv_path}: needs a column 'text' (or 'caption') with the captions; "
                          f"found columns {list(table.columns)}")
    table = table.rename(columns={c: n for c, n in ((path_col, "path"), (text_col, "text")) if c is not None})
    if need_size_columns:
        missing = [c for c in ("num_frames", "height", "width") if c not in table.columns]
        if missing:
            raise ConfigError(f"{csv_path}: bucket training needs the columns num_frames, height, width "
                              f"(missing {missing}); add them (upstream's `python -m tools.datasets.datautil "
                              f"--info` computes them) or train without bucket_config")
    if len(table) == 0:
        raise ConfigError(f"{csv_path}: the csv has no rows")
    return table


def temporal_random_crop(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices as upstream: a window of num_frames*interval frames at a random start, linspace inside."""
    size = num_frames * frame_interval
    begin = int(rng.integers(0, max(0, total - size - 1) + 1))
    end = min(begin + size, total)
    if end - begin < num_frames:
        raise SampleError(f"not enough frames: {total} frames, need {num_frames} x interval {frame_interval}")
    return np.linspace(begin, end - 1, num_frames, dtype=int)


class VideoTextDataset:
    """``load(index, num_frames, height, width, rng)`` -> one sample dict (numpy arrays)."""

    def __init__(self, csv_path: str, video_folder: str | None = None, text_embed_folder: str | None = None,
                 video_embed_folder: str | None = None, frame_interval: int = 1, transform_name: str = "center",
                 need_size_columns: bool = False, repeat_images: bool = True):
        self.table = read_csv_table(csv_path, need_size_columns)
        self.paths = [str(p) for p in self.table["path"]]
        self.texts = [str(t) for t in self.table["text"]]
        self.video_folder = video_folder or ""
        self.text_embed_folder = text_embed_folder
        self.video_embed_folder = video_embed_folder
        self.frame_interval = int(frame_interval)
        self.transform_name = transform_name
        self.repeat_images = repeat_images
        self.failures: Counter = Counter()
        self._lock = threading.Lock()  # samples are read in several threads
        if not text_embed_folder:
            raise ConfigError("text_embed_folder is required: cache the T5 embeddings first with "
                              "`python scripts/infer_t5.py --csv_path ... --output_dir <text_embed_folder>`")
        if not video_embed_folder and not video_folder:
            raise ConfigError("give --video_folder (raw videos, encoded by the VAE during training) or "
                              "--video_embed_folder (latents cached by scripts/infer_vae.py)")

    def __len__(self) -> int:
        return len(self.paths)

    def size_infos(self):
        """(num_frames, height, width) per sample, for buckets."""
        t = self.table
        return list(zip(t["num_frames"].astype(int), t["height"].astype(int), t["width"].astype(int)))

    # -- reading ---------------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.video_folder, rel)

    def _frames(self, index: int, num_frames: int, height: int, width: int, rng):
        from .frames import read_clip, transform_clip

        path = self._abs(self.paths[index])
        if is_image(path):
            frames, _ = read_clip(path, None)
            fps = IMG_FPS
            if self.repeat_images and num_frames > 1:  # fixed-size training: an image is a still video
                frames = np.repeat(frames[:1], num_frames, axis=0)
        else:
            frames, fps = read_clip(path, lambda total: temporal_random_crop(total, num_frames, self.frame_interval, rng))
            fps = fps / self.frame_interval
        try:
            return transform_clip(frames, self.transform_name, (height, width)), fps
        except ValueError as err:  # the transform's size checks: this clip cannot give the size asked for
            raise SampleError(f"{path}: {err}") from None

    def _latent(self, index: int, latent_frames: int | None, rng):
        path = cache_file_for(self.video_embed_folder, self.paths[index])
        cached = read_video_latent(path)
        z = sample_latent(cached, rng)  # a new draw from the posterior every time the clip is read
        if latent_frames is not None and z.shape[1] > latent_frames:
            start = int(rng.integers(0, z.shape[1] - latent_frames + 1))
            z = z[:, start:start + latent_frames]
        elif latent_frames is not None and z.shape[1] < latent_frames:
            raise SampleError(f"{path}: cached latent has {z.shape[1]} frames, need {latent_frames}")
        # the cache holds the frames infer_vae encoded (its --frame_stride already applied, and its fps is
        # the rate of those frames): a window of consecutive latent frames, frame_interval not applied again
        return z, cached["fps"]

    def load(self, index: int, num_frames: int, height: int, width: int, rng: np.random.Generator,
             latent_frames: int | None = None) -> dict:
        text = read_text_embedding(cache_file_for(self.text_embed_folder, self.paths[index]))
        out = {"text_emb": text["text_emb"], "text_mask": text["mask"].astype(np.int32)}
        if self.video_embed_folder:
            out["x"], fps = self._latent(index, latent_frames, rng)
        else:
            out["x"], fps = self._frames(index, num_frames, height, width, rng)
        out.update(fps=np.float32(fps), height=np.float32(height), width=np.float32(width),
                   num_frames=np.float32(num_frames), ar=np.float32(height / width))
        return out

    def load_or_replace(self, index: int, thw, rng: np.random.Generator, latent_frames=None) -> dict:
        """:meth:`load`, replacing an unreadable sample by a random other one (logged and counted)."""
        for _ in range(MAX_REPLACEMENTS):
            try:
                return self.load(index, *thw, rng, latent_frames=latent_frames)
            except (InputError, SampleError, OSError) as err:  # the readers' errors (a bug keeps its traceback)
                reason = f"{type(err).__name__}: {err}"
                with self._lock:
                    self.failures[self.paths[index]] += 1
                logger.warning("skipping sample %d (%s): %s; using another sample", index, self.paths[index], reason)
                index = int(rng.integers(0, len(self)))
        raise RunError(f"{MAX_REPLACEMENTS} unreadable samples in a row (last: {self.paths[index]}: {reason}); "
                       "check video_folder / the caches")


def collate(samples: list[dict]) -> dict:
    """Stack a list of sample dicts into batch arrays (all samples of a batch share one shape)."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
