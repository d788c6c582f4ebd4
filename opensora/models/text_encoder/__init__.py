"""Text encoders: T5 v1.1 (``"t5"`` in ``TEXT_ENCODERS``, Open-Sora 1.x), Open-Sora 2.0's ``"text_embedder"``
(T5 without mask, or CLIP-L's pooled output), their tokenizers and upstream's caption cleaning."""
from .clip import CLIPTextConfig, CLIPTextModel  # noqa: F401
from .conditioner import CLIPEmbedder, HFEmbedder  # noqa: F401  (registers "text_embedder")
from .embedder import T5Embedder, T5Encoder  # noqa: F401  (registers "t5")
from .t5 import T5Config, T5EncoderModel, t5_encoder_param_shapes  # noqa: F401
from .text_cleaning import clean_caption, text_preprocessing  # noqa: F401
