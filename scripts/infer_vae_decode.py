"""Decode latents to videos: the third stage of the three-stage sampler.

    python scripts/infer_vae_decode.py --latent_path samples/latents --output_dir samples/videos \
        --vae_type opensora-1.2 --vae_checkpoint models/OpenSora-VAE-v1.2 --num_frames 51 --fps 24

Inputs: a file or a folder of ``.npy`` / ``.npz`` files. An ``.npz`` holds the latent under the key
``latent`` (as ``scripts/inference.py --save_latent`` writes it), shaped (C, T, H, W) or (B, C, T, H, W);
optional keys ``num_frames`` and ``fps`` are used when the flags are not given. A latent-cache file
(``latent_mean``) decodes its mean. An ``.npy`` is the latent array itself.
Latents are in the VAE's normalised space (what the diffusion model samples): ``sd`` latents are
x0.18215, ``opensora-1.2`` latents are shifted/scaled per channel; the VAE undoes that.
``--num_frames`` (opensora-1.2 only): pixel frames to decode (default: the file's ``num_frames``, else
17 per 5 latent frames when T is a multiple of 5). Output: ``<output_dir>/<name>.mp4`` (``<name>-<b>``
for batches; ``.png`` for a single frame), H.264 via imageio, written atomically; existing files are
skipped unless ``--overwrite``.
"""
from __future__ import annotations

import glob
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.config import ConfigError, Option, Schema, optional, parse_config, str2bool  # noqa: E402
from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.runtime import runtime_options  # noqa: E402
from opensora.utils.cli import run_main  # noqa: E402

logger = logging.getLogger("infer_vae_decode")
LATENT_KEY = "latent"

SCHEMA = Schema([
    Option("latent_path", optional(str), None, "a .npy/.npz file or a folder of them"),
    Option("output_dir", optional(str), None, "folder of the videos", aliases=("save_dir",)),
    Option("vae", is_dict=True, default=None,
           help="a VAE section as in the inference configs ({type: OpenSoraVAE_V1_2, from_pretrained: ..., ...}); "
                "when given it replaces --vae_type/--vae_checkpoint/--vae_config (run_sample_3stages.sh passes it)"),
    Option("vae_type", str, "opensora-1.2", "sd (SD VAE, Open-Sora 1.0/1.1) or opensora-1.2"),
    Option("vae_checkpoint", optional(str), None, "HF-style directory, .safetensors or converted .ckpt"),
    Option("vae_config", optional(str), None, "diffusers config.json of the (2D) image VAE, if not next to the weights"),
    Option("num_frames", optional(str), None, "pixel frames to decode (opensora-1.2), e.g. 51 or 2s"),
    Option("fps", optional(float), None, "frames per second of the mp4 (default: the file's, else 24)"),
    Option("vae_micro_batch_size", optional(int), 4, "frames per image-VAE call (bounds memory)"),
    Option("vae_micro_frame_size", int, 17, "frames per temporal-VAE chunk (opensora-1.2)"),
    Option("dtype", str, "float32", "VAE compute dtype", choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "rewrite videos that already exist"),
    *runtime_options(),
], description="Decode latents (.npy/.npz) to mp4 videos")


def latent_files(path: str) -> list[str]:
    if path and os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.npz")) + glob.glob(os.path.join(path, "*.npy")))
        files = [f for f in files if not os.path.basename(f).startswith(".")]
        if not files:
            raise ConfigError(f"no .npy/.npz files in {path}")
        return files
    if path and os.path.isfile(path):
        return [path]
    raise ConfigError(f"--latent_path: not found: {path}")


def load_latent(path: str) -> tuple[np.ndarray, dict]:
    """-> (latent (B, C, T, H, W) float32, extras {"num_frames", "fps"} found in the file)."""
    extras = {}
    if path.endswith(".npy"):
        latent = np.load(path, allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as data:
            key = LATENT_KEY if LATENT_KEY in data.files else "latent_mean" if "latent_mean" in data.files else None
            if key is None:
                raise ConfigError(f"{path}: no '{LATENT_KEY}' array (found {data.files})")
            latent = data[key]
            for name in ("num_frames", "fps"):
                if name in data.files:
                    extras[name] = data[name].item()
    if latent.ndim == 4:
        latent = latent[None]
    if latent.ndim != 5:
        raise ConfigError(f"{path}: latent must be (C, T, H, W) or (B, C, T, H, W), got {latent.shape}")
    return latent.astype(np.float32), extras


def pixel_frames(latent_frames: int, requested, extras: dict, geometry, path: str) -> int:
    """The pixel frames to decode: asked for, saved with the latent, or what the VAE says they are."""
    from opensora.models.vae.geometry import FrameCountError

    if requested is not None:
        from opensora.datasets.aspect import get_num_frames

        return get_num_frames(requested)
    if "num_frames" in extras:
        return int(extras["num_frames"])
    try:
        return geometry.pixel_frames(latent_frames)
    except FrameCountError as err:
        raise ConfigError(f"{path}: {err} (--num_frames)") from None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = parse_config(SCHEMA, argv)
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    files = latent_files(cfg.latent_path)

    import mindspore as ms
    from tqdm import tqdm

    from opensora.datasets.video_io import save_video
    from opensora.models.vae.presets import build_video_vae
    from opensora.runtime import init_runtime_from

    init_runtime_from(cfg)
    if cfg.vae:
        from opensora.models.registry import VAES

        vae = VAES.build(cfg.vae)
        vae.set_train(False)
    else:
        vae = build_video_vae(cfg.vae_type, cfg.vae_checkpoint, cfg.vae_micro_batch_size, cfg.vae_micro_frame_size,
                              cfg.vae_config, cfg.dtype)
    os.makedirs(cfg.output_dir, exist_ok=True)
    written = 0
    for path in tqdm(files, desc="decode", unit="file"):
        latent, extras = load_latent(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        names = [stem] if latent.shape[0] == 1 else [f"{stem}-{b}" for b in range(latent.shape[0])]
        if not cfg.overwrite and all(glob.glob(os.path.join(cfg.output_dir, n + ".mp4")) or
                                     glob.glob(os.path.join(cfg.output_dir, n + ".png")) for n in names):
            continue
        num_frames = pixel_frames(latent.shape[2], cfg.num_frames, extras, vae.geometry, path)
        fps = cfg.fps or extras.get("fps") or 24.0
        for b, name in enumerate(names):
            z = ms.Tensor(latent[b:b + 1]).astype(vae.dtype)
            video = vae.decode(z, num_frames=num_frames)
            save_video(video[0].astype(ms.float32).asnumpy(), os.path.join(cfg.output_dir, name + ".mp4"),
                       fps=float(fps), layout="cthw")
            written += 1
    print(f"summary: {written} video(s) written to {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    run_main(main, errors=(ConfigError,), exit_code=2)
