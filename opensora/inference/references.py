"""Reference images and videos for conditioning: read, resize-crop to the output size, VAE-encode.

Upstream reads each ``;``-separated path of a prompt's ``reference_path`` (downloading URLs), resizes
it to cover the output size and centre-crops (``resize_crop``: bicubic for images, bilinear for
video frames), scales to [-1, 1] and encodes it with the VAE. URLs are refused here: no network at
run time.
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
    else:
        frames = [_resize_crop(Image.fromarray(f), image_size, Image.BILINEAR) for f in _video_frames(path)]
        if not frames:
            raise ReferenceError(f"reference video {path} has no frames")
    video = np.stack(frames).astype(np.float32) / 127.5 - 1.0  # (T, H, W, 3)
    return video.transpose(3, 0, 1, 2)


def _video_frames(path: str):
    from ..datasets.video_io import VideoReadError, read_video

    try:
        frames, _ = read_video(path)
    except VideoReadError as err:
        raise ReferenceError(f"reference video {err}") from None
    return list(frames)
