"""Text encoders: T5 v1.1 (``"t5"`` in ``TEXT_ENCODERS``), its tokenizer and upstream's caption cleaning."""
from .embedder import T5Embedder, T5Encoder  # noqa: F401  (registers "t5")
from .t5 import T5Config, T5EncoderModel, t5_encoder_param_shapes  # noqa: F401
from .text_cleaning import clean_caption, text_preprocessing  # noqa: F401
