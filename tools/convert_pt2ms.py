"""Convert official Open-Sora DiT weights (STDiT 1.0 .pth, STDiT2 1.1 / STDiT3 1.2 .safetensors) and
PixArt-alpha's ``PixArt-XL-2-*.pth`` to a MindSpore ``.ckpt``, by name.

    python tools/convert_pt2ms.py --src OpenSora-v1-HQ-16x512x512.pth --target stdit.ckpt
    python tools/convert_pt2ms.py --src OpenSora-STDiT-v3/ --target stdit3.ckpt --model STDiT3-XL/2
    python tools/convert_pt2ms.py --src tiny.safetensors --target tiny.ckpt --model STDiT3-XL/2 \
        --kwargs depth=2 hidden_size=64 num_heads=4 caption_channels=16 model_max_length=8

The model is guessed from the keys when ``--model`` is not given. Every key and shape is checked
against the MindSpore model built (without allocating its weights) from the model's official
constructor arguments plus ``--kwargs``; on any missing, extra or mis-shaped key the full list is
printed and nothing is written. The few true differences are THE table in
``opensora/models/stdit/convert.py`` (also used by ``from_pretrained``). PixArt is converted with its
own keys (``pixart_to_stdit`` maps them onto STDiT for training init).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.torch_weights import (CheckpointError, check_target, convert, read_weight_file,  # noqa: E402
                                 weight_files, weights_parser)

from opensora.config import yaml_value  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402
from opensora.models.stdit.common import folder_config_values  # noqa: E402
from opensora.models.stdit.convert import (MODEL_NAMES, OFFICIAL_KWARGS, config_class, guess_model,  # noqa: E402
                                           pixart_shapes, rename)


def expected_shapes(model: str, **kwargs) -> dict[str, tuple]:
    """Name -> shape of the MindSpore model ``model`` built with the official kwargs + ``kwargs``,
    without allocating the weights (parameters are created lazily)."""
    from mindspore.nn.utils import no_init_parameters

    from opensora.models.registry import MODELS
    from opensora.utils.checkpoint import model_shapes

    is_pixart = model == "PixArt-XL/2"
    build_as = "STDiT-XL/2" if is_pixart else model
    values = {**OFFICIAL_KWARGS.get(build_as, {}), **kwargs}
    pixart_extra = {k: values.pop(k) for k in ("micro_condition",) if k in values}
    with no_init_parameters():
        net = MODELS.build({"type": build_as, **values})
    shapes = model_shapes(net)
    if is_pixart:
        shapes = pixart_shapes(shapes)
        if pixart_extra.get("micro_condition"):  # PixArtMS: size / aspect-ratio embedders
            h = shapes["t_embedder.mlp.2.bias"][0] // 3
            for name in ("csize_embedder", "ar_embedder"):
                shapes.update({f"{name}.mlp.0.weight": (h, 256), f"{name}.mlp.0.bias": (h,),
                               f"{name}.mlp.2.weight": (h, h), f"{name}.mlp.2.bias": (h,)})
    return shapes


def parse_kwargs(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--kwargs takes key=value pairs, got {item!r}")
        key, value = item.split("=", 1)
        out[key.replace("-", "_")] = yaml_value(value)
    return out


def convert_file(src: str, target: str, model: str | None = None, dtype: str | None = None,
                 model_kwargs: dict | None = None) -> str:
    """Convert ``src`` (file or directory) to ``target``; returns the model name used. The model's size:
    the official constructor arguments, then the ``config.json`` of a Hugging Face-style source folder (as
    ``from_pretrained`` reads it), then ``model_kwargs``."""
    kwargs = dict(model_kwargs or {})
    files = weight_files(src)
    if model is None or model == "PixArt-XL/2":
        keys = {}
        for path in files:
            keys.update({k: tuple(v.shape) for k, v in read_weight_file(path).items()})
        model = model or guess_model(keys)
        # PixArt-XL-2-1024-MS.pth carries the size / aspect-ratio embedders, also when --model is given
        if model == "PixArt-XL/2" and any(k.startswith("csize_embedder.") for k in keys):
            kwargs.setdefault("micro_condition", True)
    if model not in MODEL_NAMES:
        raise CheckpointError(f"unknown model {model!r}; use one of {', '.join(MODEL_NAMES)}")
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    if config_class(model) is not None:
        kwargs = {**folder_config_values(config_class(model), folder), **kwargs}
    shapes = expected_shapes(model, **kwargs)
    try:
        convert(files, target, shapes, rename=rename, dtype=dtype)
    except CheckpointError as err:
        raise CheckpointError(f"{src} as {model} ({OFFICIAL_KWARGS.get(model, {})} + {kwargs}): {err}\n"
                              "(a different y_embedding length or caption size: pass --kwargs model_max_length=N "
                              "caption_channels=C)") from None
    return model


@script_main
def main(argv=None) -> int:
    parser = weights_parser(__doc__, ".pth/.pt/.bin/.safetensors file, or a directory of them",
                            "output MindSpore .ckpt")
    parser.add_argument("--model", choices=MODEL_NAMES, default=None, help="default: guessed from the keys")
    args = parser.parse_args(argv)
    check_target(args.src, args.target, args.overwrite)
    model = convert_file(args.src, args.target, args.model, args.dtype, parse_kwargs(args.kwargs))
    print(f"converted {args.src} as {model} -> {args.target}")
    return 0


if __name__ == "__main__":
    run_main(main)
