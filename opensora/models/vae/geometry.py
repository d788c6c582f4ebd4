"""How a VAE maps pixel sizes to latent sizes: the one home of every VAE's frame and size arithmetic.

Every VAE exposes ``vae.geometry`` (a :class:`LatentGeometry`), and the same object is available from a
VAE config without building the VAE (:func:`geometry_of`, used by the three-stage pipeline's sampling
stage, training's latent-cache cropping and the decoding script). Nothing outside the VAEs writes a
VAE's compression factors or its 17-frames-to-5-latents rule again: it asks.

Three temporal rules exist in Open-Sora:

* frame-wise (the SD / SDXL image VAE of 1.0 and 1.1): one latent frame per pixel frame;
* chunked (the 1.2 pipeline): chunks of ``micro_frame_size`` pixel frames, each padded at the front to a
  multiple of the time factor 4 and compressed 4x, so 17 -> 5, 51 -> 15 and a shorter last chunk of r
  frames gives ceil(r / 4) latent frames;
* causal (the 2.0 Hunyuan VAE): the first frame alone, then groups of 4: n = 4k + 1 -> k + 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import InputError


class FrameCountError(InputError):
    """A pixel or latent frame count that the VAE's temporal rule cannot map."""


@dataclass(frozen=True)
class LatentGeometry:
    """``channels`` latent channels; each latent pixel covers ``spatial_factor`` pixels per side."""

    channels: int
    spatial_factor: int = 8

    def latent_frames(self, num_frames: int) -> int:
        raise NotImplementedError

    def pixel_frames(self, latent_frames: int) -> int:
        """The pixel frame count that ``latent_frames`` latent frames decode to; a :class:`FrameCountError`
        when several counts give that many latent frames (the decoder then needs to be told)."""
        raise NotImplementedError

    def latent_size(self, input_size) -> list:
        """Pixel (T, H, W) -> latent (t, h, w); a ``None`` entry stays ``None``."""
        t, h, w = input_size
        f = self.spatial_factor
        return [None if t is None else self.latent_frames(int(t)),
                None if h is None else int(h) // f, None if w is None else int(w) // f]


def _check_count(value: int, what: str) -> int:
    if int(value) < 1:
        raise FrameCountError(f"{what} must be at least 1, got {value}")
    return int(value)


@dataclass(frozen=True)
class FramewiseGeometry(LatentGeometry):
    """An image VAE applied to every frame."""

    def latent_frames(self, num_frames: int) -> int:
        return _check_count(num_frames, "the number of frames")

    def pixel_frames(self, latent_frames: int) -> int:
        return _check_count(latent_frames, "the number of latent frames")


@dataclass(frozen=True)
class ChunkedGeometry(LatentGeometry):
    """Chunks of ``micro_frame_size`` frames (None: the whole clip is one chunk), each front-padded to a
    multiple of ``time_factor`` and compressed by it (Open-Sora 1.2's ``VideoAutoencoderPipeline``)."""

    time_factor: int = 4
    micro_frame_size: int | None = 17

    @property
    def latent_chunk(self) -> int | None:
        """Latent frames of one whole chunk (5 for 17 frames)."""
        return None if not self.micro_frame_size else math.ceil(self.micro_frame_size / self.time_factor)

    def latent_frames(self, num_frames: int) -> int:
        n = _check_count(num_frames, "the number of frames")
        if not self.micro_frame_size:
            return math.ceil(n / self.time_factor)
        full, rest = divmod(n, self.micro_frame_size)
        return full * self.latent_chunk + math.ceil(rest / self.time_factor)

    def pixel_frames(self, latent_frames: int) -> int:
        t = _check_count(latent_frames, "the number of latent frames")
        if self.micro_frame_size and t % self.latent_chunk == 0:
            return t // self.latent_chunk * self.micro_frame_size
        chunk = f"{self.latent_chunk}" if self.micro_frame_size else "1"
        raise FrameCountError(
            f"{t} latent frames is not a whole number of {chunk}-latent-frame chunks: it decodes to any of "
            f"several frame counts; give the number of pixel frames")

    def chunk_pixel_frames(self, num_frames: int) -> list[int]:
        """Pixel frames of each chunk of a ``num_frames`` clip, in order (what each decoded chunk holds)."""
        n = _check_count(num_frames, "the number of frames")
        size = self.micro_frame_size or n
        return [min(size, n - start) for start in range(0, n, size)]


@dataclass(frozen=True)
class CausalGeometry(LatentGeometry):
    """The first frame alone, then groups of ``time_factor`` frames (causal video VAEs: n = 4k + 1 frames)."""

    time_factor: int = 4

    def latent_frames(self, num_frames: int) -> int:
        n = _check_count(num_frames, "the number of frames")
        if (n - 1) % self.time_factor:
            raise FrameCountError(f"{n} frames: this VAE takes {self.time_factor}k+1 frames "
                                  f"(e.g. {n - (n - 1) % self.time_factor} or "
                                  f"{n - (n - 1) % self.time_factor + self.time_factor})")
        return (n - 1) // self.time_factor + 1

    def pixel_frames(self, latent_frames: int) -> int:
        t = _check_count(latent_frames, "the number of latent frames")
        return (t - 1) * self.time_factor + 1


def geometry_of(cfg: dict) -> LatentGeometry:
    """The geometry of the VAE a config describes (``{"type": ..., ...}`` as in the inference configs),
    without building it or reading its weights."""
    from ..registry import VAES

    return VAES.geometry(cfg)
