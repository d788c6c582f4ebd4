"""STDiT (1.0), STDiT2 (1.1), STDiT3 (1.2); importing registers them in ``opensora.models.registry.MODELS``
(``STDiT-XL/2``, ``STDiT2-XL/2``, ``STDiT3-XL/2``, ``STDiT3-3B/2``)."""
from .stdit import STDiT, STDiTBlock, STDiTConfig  # noqa: F401
from .stdit2 import STDiT2, STDiT2Block, STDiT2Config  # noqa: F401
from .stdit3 import STDiT3, STDiT3Block, STDiT3Config  # noqa: F401

__all__ = ["STDiT", "STDiTBlock", "STDiTConfig", "STDiT2", "STDiT2Block", "STDiT2Config",
           "STDiT3", "STDiT3Block", "STDiT3Config"]
