"""Reading and writing videos (shared by training, the latent cache, inference and the decode stage).

``read_video``: decord when it can, else imageio (ffmpeg); images (.jpg/.png/...) are one-frame videos.
Any failure raises :class:`VideoReadError` naming the file and the reason, so batch jobs can report
and skip it. ``save_video``: H.264 .mp4 through imageio (libx264), or .png for a single frame; written
to a temporary name and renamed, so a crash never leaves a half file.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..utils.files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".flv", ".m4v")
IMG_FPS = 120.0  # upstream's fps condition for images


class VideoReadError(InputError):
    """A video or image could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def frame_indices(total: int, num_frames: int | None, frame_interval: int = 1, start: int = 0) -> np.ndarray:
    """``num_frames`` indices ``start, start+interval, ...`` (all frames from ``start`` when None)."""
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
    if num_frames is None:
        return np.arange(start, total, frame_interval)
    needed = start + (num_frames - 1) * frame_interval + 1
    if needed > total:
        raise ValueError(f"needs {needed} frames ({num_frames} at interval {frame_interval} from {start}) "
                         f"but has {total}; lower --num_frames or --frame_stride")
    return start + np.arange(num_frames) * frame_interval


def _read_image(path: str):
    from PIL import Image

    with Image.open(path) as img:
        frame = np.asarray(img.convert("RGB"))
    return frame[None], {"fps": IMG_FPS, "video_fps": IMG_FPS, "total_frames": 1, "backend": "pil"}


def _read_decord(path, num_frames, frame_interval, start):
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    indices = frame_indices(total, num_frames, frame_interval, start)
    frames = reader.get_batch(list(indices)).asnumpy() if len(indices) else np.zeros((0, 1, 1, 3), np.uint8)
    fps = float(reader.get_avg_fps())
    return frames, {"fps": fps, "video_fps": fps, "total_frames": total, "backend": "decord"}


def _read_imageio(path, num_frames, frame_interval, start):
    import imageio

    with imageio.get_reader(path, "ffmpeg") as reader:
        fps = float(reader.get_meta_data().get("fps", 0.0) or 0.0)
        frames = [np.asarray(f)[..., :3] for f in reader]  # sequential: robust where seeking is not
    indices = frame_indices(len(frames), num_frames, frame_interval, start)
    out = np.stack([frames[i] for i in indices]) if len(indices) else np.zeros((0, 1, 1, 3), np.uint8)
    return out, {"fps": fps, "video_fps": fps, "total_frames": len(frames), "backend": "imageio"}


def read_video(path: str, num_frames: int | None = None, frame_interval: int = 1, start: int = 0,
               backend: str = "auto"):
    """-> ``(frames, info)``: frames (T, H, W, 3) uint8; info ``{"fps", "video_fps", "total_frames", "backend"}``.

    ``num_frames`` frames every ``frame_interval`` (a.k.a. stride) from ``start``; None = all.
    ``backend``: "auto" (decord, then imageio), "decord" or "imageio".
    """
    if not os.path.isfile(path):
        raise VideoReadError(path, "file not found")
    if is_image(path):
        try:
            frames, info = _read_image(path)
        except Exception as err:  # PIL raises many types for bad files
            raise VideoReadError(path, f"cannot read image ({type(err).__name__}: {err})") from None
        return frames, info  # one frame whatever num_frames asks (callers repeat it if they need)
    readers = {"decord": [_read_decord], "imageio": [_read_imageio], "auto": [_read_decord, _read_imageio]}[backend]
    reasons = []
    for reader in readers:
        try:
            frames, info = reader(path, num_frames, frame_interval, start)
        except ImportError as err:
            reasons.append(f"{reader.__name__[6:]} not installed ({err})")
            continue
        except ValueError as err:  # too short: the same answer from every backend
            raise VideoReadError(path, str(err)) from None
        except Exception as err:  # decord/ffmpeg raise their own error types for corrupt files
            reasons.append(f"{reader.__name__[6:]}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            continue
        if frames.ndim != 4 or frames.shape[-1] != 3:
            reasons.append(f"{reader.__name__[6:]}: unexpected frame array {frames.shape}")
            continue
        return np.ascontiguousarray(frames, dtype=np.uint8), info
    raise VideoReadError(path, "cannot decode video (" + "; ".join(reasons) + ")")


def to_uint8_frames(frames, layout: str = "auto") -> np.ndarray:
    """(T, H, W, C) uint8 from uint8 (T, H, W, C), or a float array/tensor in [-1, 1] laid out
    (T, H, W, C) or (C, T, H, W) (upstream's ``save_sample`` layout). ``layout``: "thwc", "cthw" or "auto"
    (a float array whose first axis is 3 and last axis is not is taken as (C, T, H, W))."""
    if hasattr(frames, "asnumpy"):
        frames = frames.asnumpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None] if layout != "cthw" else frames[:, None]
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, C) or (C, T, H, W), got shape {frames.shape}")
    if layout == "cthw" or (layout == "auto" and frames.dtype != np.uint8 and frames.shape[0] in (1, 3)
                            and frames.shape[-1] not in (1, 3)):
        frames = frames.transpose(1, 2, 3, 0)
    if frames.dtype != np.uint8:
        frames = np.clip((frames.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames)


def save_video(frames, path: str, fps: float = 24.0, layout: str = "auto", force_video: bool = False) -> str:
    """Write frames as H.264 mp4 (or .png when there is one frame, unless ``force_video``).

    ``path`` may omit the extension. Returns the path written.
    """
    frames = to_uint8_frames(frames, layout)
    stem, ext = os.path.splitext(path)
    if ext.lower() not in (".mp4", ".png"):
        stem, ext = path, ""
    as_image = frames.shape[0] == 1 and not force_video
    path = stem + (".png" if as_image else ".mp4")
    with atomic_write(path) as tmp:
        if as_image:
            from PIL import Image

            Image.fromarray(frames[0]).save(tmp, format="PNG")
        else:
            import imageio

            # libx264 + yuv420p needs even sizes; macro_block_size=2 lets imageio round odd ones
            imageio.mimwrite(tmp, list(frames), fps=float(fps), codec="libx264", format="FFMPEG",
                             macro_block_size=2, pixelformat="yuv420p")
    return path
