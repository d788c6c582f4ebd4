"""The two VAE families the scripts offer, by a short name, built from a checkpoint path.

``--vae_type``: ``sd`` (``VideoAutoencoderKL``: the SD image VAE frame by frame, Open-Sora 1.0/1.1) or
``opensora-1.2`` (``OpenSoraVAE_V1_2``: SDXL VAE + causal temporal VAE). Upstream's class names are
accepted too.
"""
from __future__ import annotations

import mindspore as ms

from ...config import ConfigError
from ...dtypes import to_ms_dtype
from ..registry import VAES

VAE_TYPES = {
    "sd": "VideoAutoencoderKL",
    "sd-vae": "VideoAutoencoderKL",
    "videoautoencoderkl": "VideoAutoencoderKL",
    "opensora-1.2": "OpenSoraVAE_V1_2",
    "opensora-v1.2": "OpenSoraVAE_V1_2",
    "v1.2": "OpenSoraVAE_V1_2",
    "opensoravae_v1_2": "OpenSoraVAE_V1_2",
}


def vae_class_name(vae_type: str) -> str:
    key = str(vae_type).strip().lower()
    if key not in VAE_TYPES:
        raise ConfigError(f"unknown vae_type {vae_type!r}; use 'sd' (SD VAE, Open-Sora 1.0/1.1) or "
                          "'opensora-1.2' (the Open-Sora 1.2 3D VAE)")
    return VAE_TYPES[key]


def video_vae_config(vae_type: str, checkpoint: str | None, micro_batch_size: int | None = 4,
                     micro_frame_size: int = 17, config=None) -> dict:
    """The registry config of the scripts' ``--vae_type``/``--vae_checkpoint``/... flags (its geometry can be
    asked before the VAE is built: ``geometry_of``)."""
    name = vae_class_name(vae_type)
    if not checkpoint:
        raise ConfigError("--vae_checkpoint is required: a Hugging Face-style directory (config.json + "
                          "safetensors), a .safetensors file or a .ckpt written by tools/convert_vae.py")
    if name == "VideoAutoencoderKL":
        return {"type": name, "from_pretrained": checkpoint, "micro_batch_size": micro_batch_size, "config": config}
    return {"type": name, "from_pretrained": checkpoint, "micro_batch_size": micro_batch_size,
            "micro_frame_size": micro_frame_size, "vae_2d_config": config}


def build_video_vae(vae_type: str, checkpoint: str | None, micro_batch_size: int | None = 4,
                    micro_frame_size: int = 17, config=None, dtype: str = "float32"):
    """A ready VAE (``encode_posterior``/``encode``/``decode``/``get_latent_size``) in ``dtype``."""
    vae = VAES.build(video_vae_config(vae_type, checkpoint, micro_batch_size, micro_frame_size, config))
    vae.set_train(False)
    if to_ms_dtype(dtype) != ms.float32:
        from ..layers.precision import cast_parameters

        cast_parameters(vae, to_ms_dtype(dtype))
    return vae
