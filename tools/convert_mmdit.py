"""Convert Open-Sora 2.0 MMDiT / Flux weights (``.safetensors`` or PyTorch ``.pth``/``.pt``/``.bin``) to a
MindSpore ``.safetensors`` (read lazily) or ``.ckpt``, by name.

    python tools/convert_mmdit.py --src ckpts/Open_Sora_v2.safetensors --target models/mmdit_v2_fp32.safetensors --dtype fp32
    python tools/convert_mmdit.py --src my_finetune/model.pth --target models/finetune.safetensors
    python tools/convert_mmdit.py --src tiny.pth --target tiny.safetensors --kwargs hidden_size=64 num_heads=2 \
        depth=2 depth_single_blocks=2 axes_dim=[8,12,12] in_channels=16 vec_in_dim=32 context_in_dim=32

The official files load directly (``from_pretrained`` of the ``flux`` model): converting is for ``.pth``
files, another dtype, or a ``.ckpt``. The layout (``fused_qkv``, ``guidance_embed``, ``cond_embed``) is
read from the keys, the sizes are the official ones (19 + 38 blocks, hidden 3072) unless ``--kwargs`` says
otherwise. Every key and shape is checked against the MindSpore model built (without allocating its
weights) from those arguments; on any missing, extra or mis-shaped key the full list is printed and
nothing is written. Names are unchanged (the MindSpore model uses the official keys).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.convert_pt2ms import parse_kwargs  # noqa: E402
from tools.torch_weights import (check_target, convert, weight_file_shapes, weight_files,  # noqa: E402
                                 weights_parser)

from opensora.models.mmdit.convert import official_kwargs  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402


def expected_shapes(**kwargs) -> dict[str, tuple]:
    """Name -> shape of the ``flux`` model built with ``kwargs``, without allocating its weights."""
    from mindspore.nn.utils import no_init_parameters

    from opensora.models.registry import MODELS
    from opensora.utils.checkpoint import model_shapes

    with no_init_parameters():
        net = MODELS.build({"type": "flux", **kwargs})
    return model_shapes(net)


def convert_file(src: str, target: str, dtype: str | None = None, **kwargs) -> str:
    """Convert ``src`` (a file or a directory of weight files) to ``target``; returns the official layout
    name whose arguments were used (``kwargs`` override them)."""
    files = weight_files(src)
    keys = [k for path in files for k in weight_file_shapes(path)]
    name, values = official_kwargs(keys)
    values.update(kwargs)
    convert(files, target, expected_shapes(**values), dtype=dtype)
    return name


@script_main
def main(argv=None) -> int:
    parser = weights_parser(__doc__, ".safetensors/.pth/.pt/.bin file, or a directory of them",
                            "output .safetensors (recommended: read lazily) or .ckpt")
    args = parser.parse_args(argv)
    check_target(args.src, args.target, args.overwrite)
    name = convert_file(args.src, args.target, args.dtype, **parse_kwargs(args.kwargs))
    print(f"converted {args.src} (layout of {name}) -> {args.target}")
    return 0


if __name__ == "__main__":
    run_main(main)
