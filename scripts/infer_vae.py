"""Cache VAE latents: one npz per video (the latent cache read by training).

    python scripts/infer_vae.py --csv_path data.csv --video_folder videos --output_dir cache/vae \
        --vae_type sd --vae_checkpoint models/sd-vae-ft-ema --image_size 256 256 --num_frames 16 --frame_stride 3
    python scripts/infer_vae.py --csv_path data.csv --video_folder videos --output_dir cache/vae12 \
        --vae_type opensora-1.2 --vae_checkpoint models/OpenSora-VAE-v1.2 --resolution 240p --aspect_ratio 9:16 \
        --num_frames 2s --transform resize_crop

The csv needs a ``path`` (or ``video``) column, relative to ``--video_folder`` (or absolute). Each
video's file is ``embedding_cache.cache_file_for(output_dir, path)``, written atomically by
``embedding_cache.write_video_latent``: ``latent_mean``/``latent_std`` (C, T, H, W), ``fps`` (the
video's fps divided by ``--frame_stride``: the rate of the encoded frames), ``ori_size`` (source H, W)
and ``vae_type``. Posterior (mean, std):
- ``sd``: the SD VAE posterior of each frame, times 0.18215 (a draw is upstream's ``encode``).
- ``opensora-1.2``: spatial posterior *mean*, then the temporal posterior of each 17-frame chunk,
  normalised like upstream's encode: ``mean = (mu - shift) / scale``, ``std = sigma / scale``
  (``VideoAutoencoderPipeline.encode_posterior``).
Finished files are skipped unless ``--overwrite`` (reruns resume). A video that cannot be read or is
too short is reported with its path and reason, counted, and skipped; the run goes on.
"""
from __future__ import annotations

import glob
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.config import ConfigError, Option, Schema, optional, parse_config, str2bool  # noqa: E402
from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.runtime import runtime_options  # noqa: E402
from opensora.utils.cli import run_main  # noqa: E402
from opensora.datasets.embedding_cache import cache_file_for, is_cached, write_video_latent  # noqa: E402

logger = logging.getLogger("infer_vae")


def _num_frames(value):
    if value is None or str(value).lower() in ("none", "all"):
        return None
    from opensora.datasets.aspect import get_num_frames

    return get_num_frames(value)


SCHEMA = Schema([
    Option("csv_path", optional(str), None, "csv with a path (or video) column"),
    Option("video_folder", optional(str), None, "root of the csv's relative paths (default: the csv's folder)"),
    Option("output_dir", optional(str), None, "folder of the npz files", aliases=("output_path",)),
    Option("vae_type", str, "sd", "sd (SD VAE, Open-Sora 1.0/1.1) or opensora-1.2 (the 1.2 3D VAE)"),
    Option("vae_checkpoint", optional(str), None, "HF-style directory, .safetensors or converted .ckpt"),
    Option("vae_config", optional(str), None, "diffusers config.json of the (2D) image VAE, if not next to the weights"),
    Option("image_size", int, None, "H W (one value: square)", nargs="+"),
    Option("resolution", optional(str), None, "resolution preset (144p ... 1080p), with --aspect_ratio"),
    Option("aspect_ratio", optional(str), None, "H:W, e.g. 9:16 (with --resolution)"),
    Option("num_frames", _num_frames, None, "frames per video (count, or 2s/4s...; default: all)"),
    Option("frame_stride", int, 1, "take every n-th frame", aliases=("frame_interval",)),
    Option("transform", str, "center", "center (scale short edge, center crop) or resize_crop (cover, crop)",
           choices=("center", "resize_crop", "resize-crop", "center_crop")),
    Option("vae_micro_batch_size", optional(int), 4, "frames per image-VAE call (bounds memory)"),
    Option("vae_micro_frame_size", int, 17, "frames per temporal-VAE chunk (opensora-1.2)"),
    Option("dtype", str, "float32", "VAE compute dtype", choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "recompute files that already exist"),
    *runtime_options(),
    Option("seed", int, 42, "random seed"),
], description="Cache VAE latents of videos as npz files")


def target_size(cfg) -> tuple[int, int]:
    if cfg.image_size:
        if cfg.resolution:
            raise ConfigError("give --image_size or --resolution/--aspect_ratio, not both")
        size = list(cfg.image_size)
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"--image_size takes H W (or one value), got {cfg.image_size}")
        return int(size[0]), int(size[1])
    if cfg.resolution:
        from opensora.datasets.aspect import get_image_size

        return tuple(get_image_size(cfg.resolution, cfg.aspect_ratio or "1:1"))
    raise ConfigError("give --image_size H W, or --resolution (e.g. 240p) with --aspect_ratio (e.g. 9:16)")


def read_video_list(csv_path: str, video_folder: str | None) -> list[tuple[str, str]]:
    """-> [(relative path as in the csv, file path)]."""
    import pandas as pd

    if not csv_path or not os.path.isfile(csv_path):
        raise ConfigError(f"--csv_path: csv file not found: {csv_path}")
    frame = pd.read_csv(csv_path)
    column = next((c for c in ("path", "video") if c in frame.columns), None)
    if column is None:
        raise ConfigError(f"{csv_path}: needs a 'path' (or 'video') column; found {list(frame.columns)}")
    root = video_folder or os.path.dirname(os.path.abspath(csv_path))
    items = []
    for rel in frame[column].astype(str).tolist():
        items.append((rel, rel if os.path.isabs(rel) else os.path.join(root, rel)))
    return items


def remove_stale_temporaries(output_dir: str) -> None:
    """Temporary files of a killed run (``.name.tmpPID.npz``): never trusted, removed."""
    for path in glob.glob(os.path.join(output_dir, "**", ".*.tmp*.npz"), recursive=True):
        os.remove(path)


def encode_video(vae, path: str, cfg, size, transform):
    """-> (mean (C, T, h, w), std, fps of the encoded frames, (H, W) of the source)."""
    import mindspore as ms

    from opensora.datasets.video_io import read_video

    frames, info = read_video(path, cfg.num_frames, cfg.frame_stride)
    if len(frames) == 0:
        raise ValueError("no frames decoded")
    video = transform(frames, size)[None]  # (1, 3, T, h, w) in [-1, 1]
    mean, std = vae.encode_posterior(ms.Tensor(video).astype(vae.dtype))
    fps = float(info.get("fps") or 0.0) / max(cfg.frame_stride, 1)
    return (mean[0].astype(ms.float32).asnumpy(), std[0].astype(ms.float32).asnumpy(), fps,
            (int(frames.shape[1]), int(frames.shape[2])))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = parse_config(SCHEMA, argv)
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    size = target_size(cfg)
    items = read_video_list(cfg.csv_path, cfg.video_folder)

    from tqdm import tqdm

    from opensora.datasets.transforms import get_transform
    from opensora.datasets.video_io import VideoReadError
    from opensora.models.vae.presets import build_video_vae, vae_class_name
    from opensora.runtime import init_runtime_from

    vae_name = vae_class_name(cfg.vae_type)
    os.makedirs(cfg.output_dir, exist_ok=True)
    remove_stale_temporaries(cfg.output_dir)
    todo = [(rel, path, cache_file_for(cfg.output_dir, rel)) for rel, path in items]
    skipped = sum(1 for _, _, out in todo if is_cached(out) and not cfg.overwrite)
    todo = [t for t in todo if cfg.overwrite or not is_cached(t[2])]
    logger.info("%d videos, %d already cached, %d to encode at %dx%d", len(items), skipped, len(todo), *size)
    failures = []
    if todo:
        init_runtime_from(cfg, seed=cfg.seed)
        vae = build_video_vae(cfg.vae_type, cfg.vae_checkpoint, cfg.vae_micro_batch_size, cfg.vae_micro_frame_size,
                              cfg.vae_config, cfg.dtype)
        transform = get_transform(cfg.transform)
        for rel, path, out in tqdm(todo, desc="vae", unit="video"):
            try:
                mean, std, fps, ori_size = encode_video(vae, path, cfg, size, transform)
            except (VideoReadError, ValueError) as err:
                reason = err.reason if isinstance(err, VideoReadError) else str(err)
                failures.append((path, reason))
                tqdm.write(f"skipped {path}: {reason}")
                continue
            write_video_latent(out, mean, std, fps, ori_size, vae_type=vae_name)
    done = len(todo) - len(failures)
    print(f"summary: {done} encoded, {skipped} already cached, {len(failures)} failed (of {len(items)})")
    for path, reason in failures:
        print(f"  failed: {path}: {reason}")
    return 1 if failures and not done and not skipped else 0


if __name__ == "__main__":
    run_main(main, errors=(ConfigError,), exit_code=2)
