"""Open-Sora 2.0's diffusion model, the Flux MMDiT; importing registers ``"flux"`` in
``opensora.models.registry.MODELS``."""
from .model import Flux, MMDiTConfig, MMDiTModel  # noqa: F401

__all__ = ["Flux", "MMDiTConfig", "MMDiTModel"]
