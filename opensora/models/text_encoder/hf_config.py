"""The part of a Hugging Face ``config.json`` a model uses, as a dataclass (T5's and CLIP's configs)."""
from __future__ import annotations

import json
from dataclasses import asdict, fields


class HFConfig:
    """Mixin for a ``@dataclass`` of config keys: other keys of the file are ignored, :meth:`check` validates."""

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in names})
        config.check()
        return config

    @classmethod
    def from_json(cls, path: str):
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Raise ``ValueError`` for values the model cannot be built with."""
