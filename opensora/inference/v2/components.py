"""The models of a 2.0 config, built when a stage first needs them and released when asked (offload).

Sections and registries, as upstream's configs name them: ``model`` and ``img_flux`` (``MODELS``,
type ``flux``), ``ae`` (``VAES``, ``hunyuan_vae``), ``img_flux_ae`` (``VAES``, ``autoencoder_2d``), ``t5`` and
``clip`` (``TEXT_ENCODERS``, ``text_embedder``). A section whose ``from_pretrained`` is null gets random
weights written once to ``random_weights_dir`` (the tiny configs), as the 1.x components do, so every
process of the three-stage pipeline uses the same ones; a text section names the folder of its config and
tokenizer with ``random_init_from`` (as 1.x's tiny T5 does). Each builder gets the config's dtype as upstream's
builders do (``torch_dtype``).
"""
from __future__ import annotations

import copy
import gc
import logging
import os
import shutil
import time

from ...config import ConfigError
from ..components import _materialize, _save_cell

logger = logging.getLogger(__name__)

SECTIONS = {"t5": "TEXT_ENCODERS", "clip": "TEXT_ENCODERS", "ae": "VAES", "model": "MODELS", "img_flux": "MODELS",
            "img_flux_ae": "VAES"}


def registry_of(kind: str):
    from ...models import registry

    return getattr(registry, SECTIONS[kind])


def resolved_section(kind: str, section: dict, random_dir: str, dtype: str) -> dict:
    """The section with ``dtype`` set and ``from_pretrained`` a local path (random weights made if null)."""
    if not section or "type" not in section:
        raise ConfigError(f"the config needs a '{kind}' section with a 'type' (see configs/opensora-v2/inference/)")
    section = copy.deepcopy(section)
    section.setdefault("torch_dtype", dtype)
    weights = section.get("from_pretrained")
    if weights is None and section.get("random_init_from"):
        section["from_pretrained"] = random_text_folder(kind, section.pop("random_init_from"), random_dir)
    elif weights is None:
        registry = registry_of(kind)
        section["from_pretrained"] = _materialize(kind, section, random_dir, lambda: registry.build(section),
                                                  _save_cell)
    elif not os.path.exists(str(weights)):
        raise ConfigError(f"{kind} weights not found: {weights} (download hpcai-tech/Open-Sora-v2 into ./ckpts, "
                          f"or set {kind}.from_pretrained)")
    return section


def random_text_folder(kind: str, source: str, random_dir: str) -> str:
    """A text encoder folder with random weights: ``source``'s config.json and tokenizer files, and a
    ``model.ckpt`` of the model that config describes (T5, or CLIP when the section says ``is_clip`` or the
    path names ``openai``, upstream's rule), made once in ``random_dir``."""
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ConfigError(f"{kind}.random_init_from: {source} has no config.json (a folder with the config and the "
                          "tokenizer files, e.g. assets/tiny_t5)")

    def build():
        from ...models.text_encoder.conditioner import CLIPEmbedder
        from ...models.text_encoder.embedder import T5Embedder

        cls = CLIPEmbedder if kind == "clip" else T5Embedder
        return cls.model_class(cls.config_class.from_json(os.path.join(source, "config.json")))

    def save(net, path):
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(source):
            shutil.copy(os.path.join(source, name), os.path.join(path, name))
        _save_cell(net, os.path.join(path, "model.ckpt"))

    return _materialize(kind, {"src": os.path.abspath(source)}, random_dir, build, save, ext="")


def check_weights(cfg, kinds) -> None:
    """Missing weight files are reported before anything is built (null: random weights, fine)."""
    for kind in kinds:
        section = cfg.get(kind) or {}
        if section.get("from_pretrained") is not None and not os.path.exists(str(section["from_pretrained"])):
            raise ConfigError(f"{kind} weights not found: {section['from_pretrained']} (download "
                              f"hpcai-tech/Open-Sora-v2 into ./ckpts, or set {kind}.from_pretrained)")


class Models:
    """``models.get("model")`` builds the section on first use; ``release(...)`` drops models (offload).
    ``sequence_parallel``: the sections built to split their sequences across the runtime's sequence-parallel
    group (the same random weights as without: the flag is added after they are made)."""

    def __init__(self, cfg, dtype: str, sequence_parallel=()):
        self.cfg, self.dtype = cfg, dtype
        self.sequence_parallel = tuple(sequence_parallel)
        self._built: dict = {}
        self.load_s: dict[str, float] = {}

    def section(self, kind: str) -> dict:
        return resolved_section(kind, self.cfg.get(kind), self.cfg.random_weights_dir, self.dtype)

    def get(self, kind: str):
        if kind not in self._built:
            t0 = time.perf_counter()
            section = self.section(kind)
            if kind in self.sequence_parallel:
                section["enable_sequence_parallelism"] = True
            net = registry_of(kind).build(section)
            if hasattr(net, "set_train"):
                net.set_train(False)
            self._built[kind] = net
            self.load_s[kind] = self.load_s.get(kind, 0.0) + time.perf_counter() - t0
            logger.info("%s built in %.1f s", kind, self.load_s[kind])
        return self._built[kind]

    def wrap(self, kind: str, wrapper):
        """Build ``kind`` and use ``wrapper(model)`` in its place from now on (e.g. a benchmark's step timer)."""
        self._built[kind] = wrapper(self.get(kind))
        return self._built[kind]

    def release(self, *kinds) -> None:
        """Drop the named models (all when none named) so that their memory can be reused."""
        for kind in kinds or list(self._built):
            if self._built.pop(kind, None) is not None:
                logger.info("%s released", kind)
        gc.collect()

    def built(self) -> list[str]:
        return list(self._built)
