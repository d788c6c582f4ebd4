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
for batches; ``.png`` for a single frame), H.264 via imageio, written atomically; existing videos are
kept (a rerun finishes the job) unless ``--overwrite``. Every latent file is read and checked (layout,
NaN/inf) and every output name planned (two files that would write one video are an error) before the
VAE is loaded.
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
from opensora.errors import NonFiniteError, RunError  # noqa: E402
from opensora.inference.options import frame_count  # noqa: E402
from opensora.runtime import runtime_options  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.utils.finite import nonfinite_rows  # noqa: E402
from opensora.utils.outputs import check_distinct, inside, prepare_output_dir  # noqa: E402

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
    Option("num_frames", optional(frame_count), None, "pixel frames to decode (opensora-1.2), e.g. 51 or 2s", min=1),
    Option("fps", optional(float), None, "frames per second of the mp4 (default: the file's, else 24)", above=0,
           max=1000),
    Option("vae_micro_batch_size", optional(int), 4, "frames per image-VAE call (bounds memory)", min=1),
    Option("vae_micro_frame_size", int, 17, "frames per temporal-VAE chunk (opensora-1.2)", min=1),
    Option("dtype", str, "float32", "VAE compute dtype", choices=DTYPE_CHOICES),
    Option("overwrite", str2bool, False, "rewrite videos that already exist (default: keep them)"),
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
    """-> (latent (B, C, T, H, W) float32, extras {"num_frames", "fps"} found in the file); a file that cannot
    be read, has another layout or holds NaN/inf is an error naming it."""
    extras = {}
    try:
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
    except ConfigError:
        raise
    except Exception as err:  # the boundary: zip, pickle and format errors of a damaged file
        raise ConfigError(f"{path}: cannot be read as a latent file ({type(err).__name__}: {err})") from None
    if latent.ndim == 4:
        latent = latent[None]
    if latent.ndim != 5 or not np.issubdtype(latent.dtype, np.number):
        raise ConfigError(f"{path}: latent must be (C, T, H, W) or (B, C, T, H, W) numbers, got {latent.shape} "
                          f"{latent.dtype}")
    bad = nonfinite_rows(latent.astype(np.float32))
    if bad:
        raise ConfigError(f"{path}: the latent of batch position(s) {bad} holds NaN/inf values; it cannot be decoded "
                          "(re-run the sampling stage)")
    return latent.astype(np.float32), extras


def output_names(path: str, batch: int) -> list[str]:
    stem = os.path.splitext(os.path.basename(path))[0]
    return [stem] if batch == 1 else [f"{stem}-{b}" for b in range(batch)]


def pixel_frames(latent_frames: int, requested, extras: dict, geometry, path: str) -> int:
    """The pixel frames to decode: asked for, saved with the latent, or what the VAE says they are."""
    from opensora.models.vae.geometry import FrameCountError

    if requested is not None:
        return int(requested)
    if "num_frames" in extras:
        return int(extras["num_frames"])
    try:
        return geometry.pixel_frames(latent_frames)
    except FrameCountError as err:
        raise ConfigError(f"{path}: {err} (--num_frames)") from None


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = parse_config(SCHEMA, argv)
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    files = latent_files(cfg.latent_path)
    latents = {path: load_latent(path) for path in files}  # every file checked before the VAE is loaded
    from opensora.models.vae.geometry import geometry_of
    from opensora.models.vae.presets import video_vae_config

    vae_cfg = cfg.vae or video_vae_config(cfg.vae_type, cfg.vae_checkpoint, cfg.vae_micro_batch_size,
                                          cfg.vae_micro_frame_size, cfg.vae_config)
    geometry = geometry_of(vae_cfg)
    frames = {path: pixel_frames(latent.shape[2], cfg.num_frames, extras, geometry, path)
              for path, (latent, extras) in latents.items()}
    jobs = [(path, b, inside(cfg.output_dir, name, "the latent file name"))
            for path, (latent, _) in latents.items() for b, name in enumerate(output_names(path, latent.shape[0]))]
    check_distinct([(f"{os.path.basename(p)}[{b}]", out) for p, b, out in jobs], "latent")
    prepare_output_dir(cfg.output_dir, "--output_dir")

    def finished(out):
        return os.path.isfile(out + ".mp4") or os.path.isfile(out + ".png")

    todo = [job for job in jobs if cfg.overwrite or not finished(job[2])]
    if len(todo) < len(jobs):
        logger.info("keeping %d video(s) that already exist (--overwrite true to decode them again)",
                    len(jobs) - len(todo))
    written = 0
    if todo:
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
            vae = build_video_vae(cfg.vae_type, cfg.vae_checkpoint, cfg.vae_micro_batch_size,
                                  cfg.vae_micro_frame_size, cfg.vae_config, cfg.dtype)
        for path, b, out in tqdm(todo, desc="decode", unit="video"):
            latent, extras = latents[path]
            num_frames = frames[path]
            fps = cfg.fps or extras.get("fps") or 24.0
            z = ms.Tensor(latent[b:b + 1]).astype(vae.dtype)
            video = vae.decode(z, num_frames=num_frames)
            video = video[0].astype(ms.float32).asnumpy()
            if nonfinite_rows(video[None]):
                raise NonFiniteError(f"{path}: the VAE decoded NaN/inf from a finite latent (batch position {b}); "
                                     f"likely cause: the VAE's weights, or float16 overflow (dtype {cfg.dtype})")
            save_video(video, out + ".mp4", fps=float(fps), layout="cthw")
            written += 1
    missing = [out for _, _, out in jobs if not finished(out)]
    if missing:
        raise RunError(f"{len(missing)} video(s) were not written: {missing[:5]}")
    print(f"summary: {written} video(s) written to {cfg.output_dir}, {len(jobs) - len(todo)} kept")
    return 0


if __name__ == "__main__":
    run_main(main)
