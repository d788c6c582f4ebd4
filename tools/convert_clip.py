"""Convert CLIP's text tower (``openai/clip-vit-large-patch14``, Open-Sora 2.0) to a MindSpore ``.ckpt``/``.safetensors``.

    python tools/convert_clip.py --src ckpts/openai/clip-vit-large-patch14 \
        --target ckpts/openai/clip-vit-large-patch14/model.ckpt

Only needed for PyTorch ``.bin`` weights: the folder's ``model.safetensors`` is read directly. ``--src``: the
Hugging Face directory (``.safetensors`` preferred over ``.bin``) or weight files; ``config.json`` (of the
whole ``CLIPModel`` or of the text model) from ``--config``, else from the source directory. The name table
(``opensora/models/text_encoder/clip_weights.py``): ``text_model.*`` unchanged, the same names without the
prefix (``transformers`` 5.x) prefixed, the vision tower, projections, ``logit_scale`` and ``position_ids``
dropped. Missing, unexpected or mis-shaped keys are all listed and nothing is written.
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.models.text_encoder.clip import CLIPTextConfig, CLIPTextModel  # noqa: E402
from opensora.models.text_encoder.clip_weights import official_to_ms  # noqa: E402
from opensora.utils.checkpoint import model_shapes  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from tools.torch_weights import (check_sources, convert, find_config_json, folder_converter_main,  # noqa: E402
                                 weight_files)

logger = logging.getLogger("convert_clip")


def expected_shapes(config: CLIPTextConfig) -> dict:
    """Names and shapes of the MindSpore text model, built without allocating its weights."""
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():
        return model_shapes(CLIPTextModel(config))


def convert_clip(sources: list[str], target: str, dtype: str | None = None, config: str | None = None):
    check_sources(sources, dtype)
    files = weight_files(sources)
    expected = expected_shapes(CLIPTextConfig.from_json(find_config_json(sources, config,
                                                                         "openai/clip-vit-large-patch14")))

    def rename(name, array):
        new = official_to_ms(name)
        return [] if new is None else [(new, array)]

    report = convert(files, target, expected, rename=rename, dtype=dtype)
    logger.info("wrote %s: %d tensors from %d file(s)", target, len(expected), len(files))
    return report


@script_main
def main(argv=None) -> int:
    return folder_converter_main(argv, __doc__, "CLIP", convert_clip)


if __name__ == "__main__":
    run_main(main)
