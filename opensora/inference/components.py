"""Building the text encoder, VAE, diffusion model and scheduler from an inference config.

Weights are local files (``from_pretrained``; ``--ckpt_path`` overrides the model's). A component
whose ``from_pretrained`` is null gets random weights — used by the tiny configs — and these are
written once to ``random_weights_dir`` (seeded per component, independent of build order), so that
every process of the three-stage pipeline, and the one-process script, use the same weights.
The latent size is known without building the VAE (stage 2 of the three-stage pipeline): each VAE's
``geometry`` (``opensora/models/vae/geometry.py``).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil

from ..config import ConfigError
from ..runtime import set_seed
from ..utils.files import atomic_write, remove_stale_temporaries

logger = logging.getLogger(__name__)

# seeds of random initialisation per component (fixed, so every process builds the same weights)
_INIT_SEEDS = {"text_encoder": 1, "vae": 2, "model": 3,
               "t5": 4, "clip": 5, "ae": 6, "img_flux": 7, "img_flux_ae": 8}  # Open-Sora 2.0 sections


def _digest(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _materialize(kind: str, cfg: dict, folder: str, build, save, ext: str = ".ckpt") -> str:
    """Path of a random-weight file for ``cfg`` in ``folder``, created (atomically) when missing."""
    path = os.path.join(folder, f"{kind}-{_digest(cfg)}{ext}")
    if not os.path.exists(path):
        logger.warning("%s: no from_pretrained given, using random weights (written to %s)", kind, path)
        set_seed(_INIT_SEEDS[kind])
        remove_stale_temporaries(folder)
        with atomic_write(path) as tmp:
            save(build(), tmp)
    return path


def _save_cell(net, path: str) -> None:
    import mindspore as ms

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ms.save_checkpoint(net, path)


def text_encoder_cfg(cfg: dict, random_dir: str) -> dict:
    """The T5 config with a local directory; ``random_init_from``: a directory with config.json and the
    tokenizer (e.g. assets/tiny_t5) from which a random-weight T5 directory is made."""
    cfg = copy.deepcopy(cfg)
    source = cfg.pop("random_init_from", None)
    if cfg.get("from_pretrained") is None and source:
        def build():
            from ..models.text_encoder.t5 import T5Config, T5EncoderModel

            return T5EncoderModel(T5Config.from_json(os.path.join(source, "config.json")))

        def save(net, path):
            os.makedirs(path, exist_ok=True)
            for name in os.listdir(source):
                shutil.copy(os.path.join(source, name), os.path.join(path, name))
            _save_cell(net, os.path.join(path, "model.ckpt"))

        cfg["from_pretrained"] = _materialize("text_encoder", {"src": os.path.abspath(source)}, random_dir, build, save,
                                            ext="")
    return cfg


def build_text_encoder(cfg: dict, random_dir: str):
    from ..models.registry import TEXT_ENCODERS

    return TEXT_ENCODERS.build(text_encoder_cfg(cfg, random_dir))


def vae_cfg(cfg: dict, random_dir: str) -> dict:
    cfg = copy.deepcopy(cfg)
    if cfg.get("from_pretrained") is None:
        from ..models.registry import VAES

        cfg["from_pretrained"] = _materialize("vae", cfg, random_dir, lambda: VAES.build(cfg), _save_cell)
    return cfg


def build_vae(cfg: dict, random_dir: str):
    from ..models.registry import VAES

    vae = VAES.build(vae_cfg(cfg, random_dir))
    vae.set_train(False)
    return vae


def build_model(cfg: dict, random_dir: str, ckpt_path=None, **size_kwargs):
    """The diffusion model; ``size_kwargs``: input_size, in_channels, caption_channels, model_max_length."""
    from ..models.registry import MODELS

    cfg = copy.deepcopy(cfg)
    if ckpt_path:
        cfg["from_pretrained"] = ckpt_path
    # STDiT 1.0 fixes its size in the constructor; 1.1/1.2 take any input_size
    full = {**cfg, **size_kwargs}
    if full.get("from_pretrained") is None:
        full["from_pretrained"] = _materialize("model", full, random_dir, lambda: MODELS.build(full), _save_cell)
    elif not os.path.exists(str(full["from_pretrained"])):
        raise ConfigError(f"model weights not found: {full['from_pretrained']} (give --ckpt_path FILE, or set "
                          "model.from_pretrained to a local directory or converted .ckpt)")
    model = MODELS.build(full)
    model.set_train(False)
    return model


def build_scheduler(cfg: dict):
    from ..schedulers import SCHEDULERS

    return SCHEDULERS.build(cfg)
