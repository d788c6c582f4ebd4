"""Reference images and videos for conditioning: read, resize-crop to the output size, VAE-encode.

Upstream reads each ``;``-separated path of a prompt's ``reference_path`` (downloading URLs), resizes
it to cover the output size and centre-crops (``resize_crop``: PIL bicubic for images; for videos
``torch.nn.functional.interpolate`` bilinear without antialiasing on [0, 1] frames, cropped at
``int(round(excess) / 2)``, both as 1.2 and 2.0 do), scales to [-1, 1] and encodes it with the VAE.
URLs are refused here: no network at run time.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..config import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class ReferenceError(ConfigError):
    """A reference path that cannot be used."""


def split_references(text) -> list[str]:
    if text is None or str(text).strip() == "":
        return []
    return [p.strip() for p in str(text).split(";")]


def check_reference_path(path: str) -> str:
    if _URL.match(path):
        raise ReferenceError(f"reference {path!r} is a URL; nothing is downloaded at run time. Download it "
                             "yourself and pass the local file path")
    if not os.path.isfile(path):
        raise ReferenceError(f"reference file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        raise ReferenceError(f"reference {path}: unsupported extension {ext!r}; use an image "
                             f"({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})")
    return path


def _resize_crop(image, size, resample):
    """Scale a PIL image to cover (H, W), then centre-crop (upstream ``resize_crop_to_fill``)."""
    from PIL import Image

    th, tw = size
    w, h = image.size
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        i, j = 0, int(round((sw - tw) / 2.0))
    else:
        sh, sw = round(h * rw), tw
        i, j = int(round((sh - th) / 2.0)), 0
    arr = np.asarray(image.convert("RGB").resize((sw, sh), resample))
    return arr[i:i + th, j:j + tw]


def read_reference(path: str, image_size) -> np.ndarray:
    """-> (3, T, H, W) float32 in [-1, 1]; an image is one frame."""
    from PIL import Image

    check_reference_path(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        try:
            with Image.open(path) as img:
                frames = [_resize_crop(img, image_size, Image.BICUBIC)]
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for files that are not images
            raise ReferenceError(f"reference image {path} cannot be read ({type(err).__name__}: {err})") from None
        video = np.stack(frames).astype(np.float32) / 127.5 - 1.0  # (T, H, W, 3)
        return video.transpose(3, 0, 1, 2)
    frames = _video_frames(path)
    if not len(frames):
        raise ReferenceError(f"reference video {path} has no frames")
    video = resize_crop_video(np.stack(frames).transpose(3, 0, 1, 2).astype(np.float32) / 255.0, image_size)
    return video * 2.0 - 1.0


def _bilinear_axis(size_in: int, size_out: int):
    """Source indices and weights of torch's bilinear interpolation along one axis (align_corners=False)."""
    scale = np.float32(size_in) / np.float32(size_out)
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def resize_crop_video(video: np.ndarray, size) -> np.ndarray:
    """(C, T, H, W) float frames -> resized to cover ``size`` (H, W) with torch's bilinear interpolation
    (no antialiasing) and centre-cropped at upstream's ``int(round(excess) / 2.0)`` offsets."""
    _, _, h, w = video.shape
    th, tw = size
    rh, rw = th / h, tw / w
    sh, sw = (th, round(w * rh)) if rh > rw else (round(h * rw), tw)
    y0, y1, wy = _bilinear_axis(h, sh)
    x0, x1, wx = _bilinear_axis(w, sw)
    rows = video[:, :, y0] * (1 - wy)[:, None] + video[:, :, y1] * wy[:, None]
    out = rows[..., x0] * (1 - wx) + rows[..., x1] * wx
    i, j = (0, int(round(sw - tw) / 2.0)) if rh > rw else (int(round(sh - th) / 2.0), 0)
    return np.ascontiguousarray(out[:, :, i:i + th, j:j + tw], dtype=np.float32)


def _video_frames(path: str):
    from ..datasets.video_io import VideoReadError, read_video

    try:
        frames, _ = read_video(path)
    except VideoReadError as err:
        raise ReferenceError(f"reference video {err}") from None
    return list(frames)
