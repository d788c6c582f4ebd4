"""Upstream's model names -> builders: ``"STDiT3-XL/2"``, ``"OpenSoraVAE_V1_2"``, ``"t5"``, ...

Configs name a model the way upstream's configs do (``model: {type: STDiT3-XL/2, from_pretrained: ...,
qk_norm: true}``); :func:`build_module` looks the type up and passes the other keys to the builder,
which rejects keys it does not take with the closest valid name.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from ..config import ConfigError, check_kwargs
from ..errors import InputError


class Registry:
    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind = kind
        self._modules = modules  # imported on first use, so that registering never imports everything
        self._builders: dict[str, Callable[..., Any]] = {}
        self._geometries: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str | None = None, geometry: Callable[..., Any] | None = None):
        """``geometry`` (VAEs): a function of the same config keywords as the builder returning the VAE's
        latent geometry without building it (see ``vae/geometry.py``)."""
        def decorator(builder):
            key = name or builder.__name__
            if key in self._builders and self._builders[key] is not builder:
                raise KeyError(f"{self.kind} {key!r} registered twice")
            self._builders[key] = builder
            if geometry is not None:
                self._geometries[key] = geometry
            return builder

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            for module in self._modules:
                importlib.import_module(module)
            self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._builders:
            import difflib

            close = difflib.get_close_matches(name, self._builders, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} type {name!r}{hint} (known: {', '.join(self.names())})")
        return self._builders[name]

    def build(self, cfg: dict | None, **overrides) -> Any:
        """``cfg``: ``{"type": name, **kwargs}``; ``overrides`` win over ``cfg``'s keys."""
        if not cfg or "type" not in cfg:
            raise ConfigError(f"a {self.kind} config needs a 'type' (one of {', '.join(self.names())})")
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        kwargs.update(overrides)
        builder = self.get(cfg["type"])
        params = inspect.signature(builder).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            check_kwargs(kwargs, params, f"{self.kind} {cfg['type']!r}")
        try:
            return builder(**kwargs)
        except InputError:
            raise
        except (ValueError, NotImplementedError) as err:  # a constructor refusing its config's values
            raise ConfigError(f"{self.kind} {cfg['type']!r}: {err}") from err

    def geometry(self, cfg: dict | None):
        """What a registered ``geometry`` function says of ``cfg`` (``{"type": name, **kwargs}``), no building."""
        if not cfg or "type" not in cfg:
            raise ConfigError(f"a {self.kind} config needs a 'type' (one of {', '.join(self.names())})")
        self.get(cfg["type"])  # unknown names get the usual error
        if cfg["type"] not in self._geometries:
            raise ConfigError(f"{self.kind} {cfg['type']!r} cannot tell its latent size without being built")
        return self._geometries[cfg["type"]](**{k: v for k, v in cfg.items() if k != "type"})


MODELS = Registry("model", ("opensora.models.stdit", "opensora.models.mmdit"))
VAES = Registry("vae", ("opensora.models.vae", "opensora.models.hunyuan_vae"))
TEXT_ENCODERS = Registry("text encoder", ("opensora.models.text_encoder",))
