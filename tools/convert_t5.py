"""Convert the T5-v1.1-XXL encoder (``DeepFloyd/t5-v1_1-xxl``) to a MindSpore ``.ckpt`` (or ``.safetensors``).

    python tools/convert_t5.py --src pretrained_models/t5-v1_1-xxl --target pretrained_models/t5-v1_1-xxl/model.ckpt
    python tools/convert_t5.py --src shard1.bin shard2.bin --config config.json --target t5.ckpt --dtype float16

``--src``: the Hugging Face directory (``.safetensors`` preferred over ``.bin``) or weight files.
``config.json`` is taken from ``--config``, else from the source directory. The expected names and
shapes come from the config without building the model (the full encoder is 19 GB in float32).
The name table (``opensora/models/text_encoder/t5_weights.py``): ``encoder.embed_tokens.weight`` is
the tied copy of ``shared.weight`` (kept once, checked equal), ``decoder.*``/``lm_head.weight`` are
dropped as ``T5EncoderModel`` does; everything else is kept unchanged. Missing, unexpected or
mis-shaped keys are all listed and nothing is written. Files are read one tensor at a time and
written incrementally, so peak memory stays about one tensor above the OS file cache.

Which target: MindSpore parses a ``.ckpt`` whole and refuses one larger than the free memory, so the
full encoder as ``model.ckpt`` (19 GB in float32, 9.5 GB in float16) needs that much free RAM on top
of the model; a ``.safetensors`` target (``--target <dir>/model.safetensors``) is read lazily. When
the official directory already has ``.safetensors`` shards, no conversion is needed at all.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opensora.models.text_encoder.t5 import T5Config, t5_encoder_param_shapes  # noqa: E402
from opensora.models.text_encoder.t5_weights import EMBED_ALIAS, EMBED_NAME, official_to_ms  # noqa: E402
from opensora.utils.checkpoint import CheckpointError, compare_shapes  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from tools.torch_weights import (check_sources, convert, find_config_json, folder_converter_main,  # noqa: E402
                                 weight_file_shapes, weight_files)

logger = logging.getLogger("convert_t5")


class EmbeddingTie:
    """Renames the official keys; keeps the tied embedding once and checks its two copies are equal."""

    def __init__(self):
        self.embedding_digest: tuple[str, str] | None = None  # (official name, sha1 of the bytes)
        self.dropped: list[str] = []

    def __call__(self, name, array):
        new = official_to_ms(name)
        if new is None:
            self.dropped.append(name)
            return []
        if new == EMBED_NAME:
            digest = hashlib.sha1(array.tobytes()).hexdigest()
            if self.embedding_digest is not None:
                first, first_digest = self.embedding_digest
                if first_digest != digest:
                    raise CheckpointError(f"{first} and {name} differ, but T5EncoderModel ties them "
                                          "(one tensor); this is not a T5 encoder checkpoint as expected")
                return []
            self.embedding_digest = (name, digest)
        return [(new, array)]


def precheck(files: list[str], expected: dict) -> None:
    """Compare names and shapes from the file headers before any data is read (fast failure)."""
    shapes = {}
    for path in files:
        for name, shape in weight_file_shapes(path).items():
            new = official_to_ms(name)
            if new is not None and not (name == EMBED_ALIAS and new in shapes):
                shapes.setdefault(new, shape)
    report = compare_shapes(shapes, expected)
    if not report.ok:
        raise CheckpointError(f"the weights do not match the T5 encoder of this config; nothing was written:\n"
                              f"{report.format()}")


def convert_t5(sources: list[str], target: str, dtype: str | None = None, config: str | None = None):
    check_sources(sources, dtype)
    files = weight_files(sources)
    cfg = T5Config.from_json(find_config_json(sources, config, "DeepFloyd/t5-v1_1-xxl"))
    expected = t5_encoder_param_shapes(cfg)
    precheck(files, expected)
    rename = EmbeddingTie()
    report = convert(files, target, expected, rename=rename, dtype=dtype)
    if rename.dropped:
        logger.info("dropped %d decoder / lm_head keys (not part of the encoder)", len(rename.dropped))
    logger.info("wrote %s: %d tensors from %d file(s)", target, len(expected), len(files))
    return report


@script_main
def main(argv=None) -> int:
    return folder_converter_main(argv, __doc__, "T5", convert_t5)


if __name__ == "__main__":
    run_main(main)
