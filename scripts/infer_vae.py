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
Finished files are kept unless ``--overwrite`` (reruns resume); an existing file of another VAE or size
is an error naming it. A csv path that leaves ``--output_dir`` or two rows that would write one file are
errors before the VAE is loaded. A video that cannot be read or is too short is reported with its path
and reason and skipped; the run goes on, and exits with status 1 at the end naming every such video.
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.config import ConfigError, Option, Schema, numeric, optional, parse_config, str2bool  # noqa: E402
from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.errors import RunError  # noqa: E402
from opensora.runtime import SEED_RANGE, runtime_options  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.utils.outputs import OutputError, prepare_output_dir  # noqa: E402
from opensora.datasets.embedding_cache import (CacheError, is_cached, plan_cache_files,  # noqa: E402
                                               read_video_latent, remove_stale_cache_temporaries,
                                               write_video_latent)

logger = logging.getLogger("infer_vae")


@numeric
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
    Option("image_size", int, None, "H W (one value: square)", nargs="+", min=8, max=8192),
    Option("resolution", optional(str), None, "resolution preset (144p ... 1080p), with --aspect_ratio"),
    Option("aspect_ratio", optional(str), None, "H:W, e.g. 9:16 (with --resolution)"),
    Option("num_frames", _num_frames, None, "frames per video (count, or 2s/4s...; default: all)", min=1),
    Option("frame_stride", int, 1, "take every n-th frame", aliases=("frame_interval",), min=1),
    Option("transform", str, "center", "center (scale short edge, center crop) or resize_crop (cover, crop)",
           choices=("center", "resize_crop", "resize-crop", "center_crop")),
    Option("vae_micro_batch_size", optional(int), 4, "frames per image-VAE call (bounds memory)", min=1),
    Option("vae_micro_frame_size", int, 17, "frames per temporal-VAE chunk (opensora-1.2)", min=1),
    Option("dtype", str, "float32", "VAE compute dtype", choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "recompute files that already exist"),
    *runtime_options(),
    Option("seed", int, 42, "random seed", **SEED_RANGE),
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


def read_video_list(csv_path: str, video_folder: str | None, output_dir: str) -> list[tuple[str, str, str]]:
    """-> [(cache file, path as in the csv, video file)], one per distinct csv path."""
    from opensora.datasets.dataset import read_csv_table

    table = read_csv_table(csv_path, need_text=False)
    root = video_folder or os.path.dirname(os.path.abspath(csv_path))
    rows = [(rel, rel if os.path.isabs(rel) else os.path.join(root, rel)) for rel in table["path"].astype(str)]
    return plan_cache_files(output_dir, rows, csv_path)


def check_existing(items, overwrite: bool, vae_name: str, size) -> list:
    """-> the items to encode. A cached file made by another VAE or at another size is an error (training
    would mix sizes), unless ``overwrite``; an unreadable one is encoded again."""
    if overwrite:
        return list(items)
    todo, other = [], []
    latent_hw = (size[0] // 8, size[1] // 8)
    for item in items:
        if not is_cached(item[0]):
            todo.append(item)
            continue
        try:
            cached = read_video_latent(item[0])
        except CacheError:
            todo.append(item)
            continue
        made = (cached["vae_type"], tuple(cached["latent_mean"].shape[2:]))
        if made != (vae_name, latent_hw):
            other.append(f"  {item[0]}: {made[0] or '?'} latents of {made[1][0]}x{made[1][1]} (now {vae_name}, "
                         f"{latent_hw[0]}x{latent_hw[1]})")
    if other:
        raise OutputError(f"{len(other)} cached file(s) were made with another VAE or size:\n" + "\n".join(other[:5])
                          + "\ngive --overwrite true to encode them again, or another --output_dir")
    return todo


def encode_video(vae, path: str, cfg, size, transform):
    """-> (mean (C, T, h, w), std, fps of the encoded frames, (H, W) of the source)."""
    import mindspore as ms

    from opensora.datasets.video_io import VideoReadError, read_video

    frames, info = read_video(path, cfg.num_frames, cfg.frame_stride)
    if len(frames) == 0:
        raise VideoReadError(path, "no frames decoded")
    try:
        video = transform(frames, size)[None]  # (1, 3, T, h, w) in [-1, 1]
    except ValueError as err:  # the transform's size checks: this video cannot give the size asked for
        raise VideoReadError(path, str(err)) from None
    mean, std = vae.encode_posterior(ms.Tensor(video).astype(vae.dtype))
    fps = float(info.get("fps") or 0.0) / max(cfg.frame_stride, 1)
    return (mean[0].astype(ms.float32).asnumpy(), std[0].astype(ms.float32).asnumpy(), fps,
            (int(frames.shape[1]), int(frames.shape[2])))


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = parse_config(SCHEMA, argv)
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    if not cfg.csv_path:
        raise ConfigError("--csv_path is required")
    size = target_size(cfg)

    from opensora.models.vae.presets import vae_class_name

    vae_name = vae_class_name(cfg.vae_type)
    items = read_video_list(cfg.csv_path, cfg.video_folder, cfg.output_dir)
    absent = [video for _, _, video in items if not os.path.isfile(video)]
    if len(absent) == len(items):
        raise ConfigError(f"none of the {len(items)} video(s) of {cfg.csv_path} exists (e.g. {absent[0]}); check "
                          "--video_folder (the root of the csv's relative paths)")
    prepare_output_dir(cfg.output_dir, "--output_dir")
    remove_stale_cache_temporaries([out for out, _, _ in items])
    todo = check_existing(items, cfg.overwrite, vae_name, size)
    skipped = len(items) - len(todo)
    logger.info("%d videos, %d already cached, %d to encode at %dx%d", len(items), skipped, len(todo), *size)
    failures = []
    if todo:
        from tqdm import tqdm

        from opensora.datasets.transforms import get_transform
        from opensora.datasets.video_io import VideoReadError
        from opensora.models.vae.presets import build_video_vae
        from opensora.runtime import init_runtime_from
        from opensora.utils.finite import nonfinite_rows

        init_runtime_from(cfg, seed=cfg.seed)
        vae = build_video_vae(cfg.vae_type, cfg.vae_checkpoint, cfg.vae_micro_batch_size, cfg.vae_micro_frame_size,
                              cfg.vae_config, cfg.dtype)
        transform = get_transform(cfg.transform)
        for out, rel, path in tqdm(todo, desc="vae", unit="video"):
            try:
                mean, std, fps, ori_size = encode_video(vae, path, cfg, size, transform)
            except VideoReadError as err:
                failures.append((path, err.reason))
                tqdm.write(f"skipped {path}: {err.reason}")
                continue
            if nonfinite_rows(mean[None]) or nonfinite_rows(std[None]):
                failures.append((path, "the VAE produced NaN/inf (its weights, or float16 overflow)"))
                continue
            write_video_latent(out, mean, std, fps, ori_size, vae_type=vae_name)
    done = len(todo) - len(failures)
    print(f"summary: {done} encoded, {skipped} already cached, {len(failures)} failed (of {len(items)})")
    if failures:
        listed = "\n".join(f"  {path}: {reason}" for path, reason in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise RunError(f"{len(failures)} of {len(items)} video(s) could not be encoded (the others are cached; a "
                       f"rerun encodes only what is missing):\n{listed}{more}")
    return 0


if __name__ == "__main__":
    run_main(main)
