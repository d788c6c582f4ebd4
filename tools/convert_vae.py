"""Convert VAE weights to a checked MindSpore ``.ckpt``.

    python tools/convert_vae.py --source models/sd-vae-ft-ema --target models/sd-vae-ft-ema.ckpt
    python tools/convert_vae.py --source v1-5-pruned-emaonly.ckpt --target models/sd-vae.ckpt   # LDM naming
    python tools/convert_vae.py --source models/OpenSora-VAE-v1.2 --target models/OpenSora-VAE-v1.2.ckpt
    python tools/convert_vae.py --source hunyuan_vae.pth --target models/hunyuan_vae.ckpt   # Open-Sora 2.0

Sources (``--type auto`` tells them apart by their key names):
- ``sd``: the SD / SDXL image VAE in diffusers naming (``diffusion_pytorch_model.safetensors`` / ``.bin``), or
  in the original Stable Diffusion / LDM naming (a ``.ckpt`` / ``.pth``; a whole SD checkpoint's
  ``first_stage_model.`` prefix is stripped and its other parts ignored). Output keys: diffusers names.
- ``opensora-1.2``: ``hpcai-tech/OpenSora-VAE-v1.2`` (``model.safetensors`` or a ``.pth``): names unchanged.
- ``temporal``: a ``VAE_Temporal_SD`` state dict alone.
- ``hunyuan``: Open-Sora 2.0's Hunyuan video VAE (``hunyuan_vae.safetensors`` or a ``.pth``): names unchanged.
  ``--config``: a JSON of its builder keywords for other sizes (default: the 2.0 VAE's). The ``.safetensors``
  also loads directly, without conversion.
Names are mapped by name with the table below, never by position; every key and shape is checked
against the MindSpore model (built without allocating weights) and nothing is written on any problem.

LDM -> diffusers table (``{i}`` block, ``{j}`` layer; ``n`` = number of resolution levels):
    encoder.down.{i}.block.{j}.*          encoder.down_blocks.{i}.resnets.{j}.*
    encoder.down.{i}.downsample.conv.*    encoder.down_blocks.{i}.downsamplers.0.conv.*
    decoder.up.{i}.block.{j}.*            decoder.up_blocks.{n-1-i}.resnets.{j}.*   (LDM counts up from the
    decoder.up.{i}.upsample.conv.*        decoder.up_blocks.{n-1-i}.upsamplers.0.conv.*  lowest resolution)
    {en,de}coder.mid.block_1.* / block_2.*   {en,de}coder.mid_block.resnets.0.* / resnets.1.*
    {en,de}coder.mid.attn_1.norm.*        {en,de}coder.mid_block.attentions.0.group_norm.*
    {en,de}coder.mid.attn_1.{q,k,v}.*     {en,de}coder.mid_block.attentions.0.to_{q,k,v}.*   weight (C,C,1,1) -> (C,C)
    {en,de}coder.mid.attn_1.proj_out.*    {en,de}coder.mid_block.attentions.0.to_out.0.*    weight (C,C,1,1) -> (C,C)
    {en,de}coder.norm_out.*               {en,de}coder.conv_norm_out.*
    *.nin_shortcut.*                      *.conv_shortcut.*
    conv_in, conv_out, quant_conv, post_quant_conv: unchanged; ``loss.*`` (training losses): dropped.
Old diffusers (< 0.14) attention names: ``query``/``key``/``value``/``proj_attn`` -> ``to_q``/``to_k``/``to_v``/``to_out.0``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.torch_weights import check_target, convert, weight_file_shapes, weight_files  # noqa: E402

from opensora.dtypes import DTYPE_CHOICES  # noqa: E402
from opensora.utils.checkpoint import CheckpointError, model_shapes  # noqa: E402
from opensora.utils.cli import run_main, script_main  # noqa: E402

LDM_PREFIX = "first_stage_model."
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LDM_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "norm": "group_norm"}


def ldm_to_diffusers(name: str, num_levels: int) -> str | None:
    """One LDM (original SD) VAE key -> its diffusers key; None for keys that are not VAE weights."""
    if name.startswith("loss."):
        return None
    name = name.replace(".nin_shortcut.", ".conv_shortcut.")
    m = re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)", name)
    if m:
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    m = re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.*)", name)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", name)
    if m:
        return f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    m = re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.*)", name)
    if m:
        return f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    m = re.match(r"(encoder|decoder)\.mid\.block_([12])\.(.*)", name)
    if m:
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out|norm)\.(.*)", name)
    if m:
        return f"{m[1]}.mid_block.attentions.0.{_LDM_ATTN[m[2]]}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.norm_out\.(.*)", name)
    if m:
        return f"{m[1]}.conv_norm_out.{m[2]}"
    return name


def is_ldm_naming(names) -> bool:
    return any(n.startswith(LDM_PREFIX) or ".down.0.block." in n or n.startswith("encoder.down.") for n in names)


def detect_type(names) -> str:
    names = list(names)
    if any(n.startswith("temporal_vae.") for n in names):
        return "opensora-1.2"
    if any(n.startswith("encoder.conv_in.conv.") for n in names):
        return "hunyuan" if any(n.startswith("encoder.down_blocks.") for n in names) else "temporal"
    return "sd"


def make_renamer(kind: str, ldm: bool, num_levels: int):
    """The rename function for tools.torch_weights.convert (one source tensor -> 0 or 1 pairs)."""
    has_prefix = {"value": False}

    def rename(name, array):
        if ldm:
            if name.startswith(LDM_PREFIX):
                name = name[len(LDM_PREFIX):]
            elif has_prefix["value"]:
                return []
            new = ldm_to_diffusers(name, num_levels)
            if new is None:
                return []
            if ".attentions.0.to_" in new and new.endswith(".weight") and array.ndim == 4:
                array = array.reshape(array.shape[0], array.shape[1])  # 1x1 conv -> linear
            return [(new, array)]
        if kind in ("sd", "opensora-1.2"):
            parts = name.split(".")
            if len(parts) >= 2 and parts[-2] in _OLD_ATTN and ".attentions." in name:
                name = ".".join(parts[:-2] + [_OLD_ATTN[parts[-2]], parts[-1]])
        return [(name, array)]

    return rename, has_prefix


def expected_model_shapes(kind: str, config=None, vae_2d_config=None, source_dir: str | None = None) -> dict:
    """Names and shapes of the MindSpore model, built without allocating its weights. For the 1.2 VAE the
    architecture comes from ``source_dir``'s ``config.json`` when there is one (as ``from_pretrained``
    reads it: its 2D VAE and temporal VAE), ``vae_2d_config`` overriding the 2D part."""
    from mindspore.nn.utils import no_init_parameters

    from opensora.models.hunyuan_vae import AutoencoderKLCausal3D
    from opensora.models.vae import AutoencoderKL, VAE_Temporal_SD, VideoAutoencoderPipeline
    from opensora.models.vae.loading import SD_VAE_CONFIG
    from opensora.models.vae.video_vae import v1_2_pipeline_kwargs

    with no_init_parameters():
        if kind == "sd":
            net = AutoencoderKL.from_config(config or SD_VAE_CONFIG)
        elif kind == "temporal":
            net = VAE_Temporal_SD()
        elif kind == "hunyuan":
            net = AutoencoderKLCausal3D(**_read_json_config(config))
        else:
            net = VideoAutoencoderPipeline(**v1_2_pipeline_kwargs(from_pretrained=source_dir,
                                                                  vae_2d_config=vae_2d_config))
    return model_shapes(net)


def _read_json_config(config) -> dict:
    """Builder keywords from a JSON file (or a dict); {} for the default architecture."""
    if config is None or isinstance(config, dict):
        return dict(config or {})
    import json

    with open(config, "r", encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if k not in ("type", "from_pretrained")}


def _default_config(source: str) -> str | None:
    directory = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    path = os.path.join(directory, "config.json")
    return path if os.path.isfile(path) else None


def convert_vae(source: str, target: str, kind: str = "auto", config: str | None = None,
                vae_2d_config: str | None = None, dtype: str | None = None):
    if not os.path.exists(source):
        raise CheckpointError(f"--source not found: {source}")
    files = weight_files(source)
    names = [n for f in files for n in weight_file_shapes(f)]
    if kind == "auto":
        kind = detect_type(names)
    ldm = kind == "sd" and is_ldm_naming(names)
    if kind == "sd" and config is None:
        config = _default_config(source)
    source_dir = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    expected = expected_model_shapes(kind, config=config, vae_2d_config=vae_2d_config, source_dir=source_dir)
    num_levels = 1 + max((int(m[1]) for n in expected for m in [re.match(r"decoder\.up_blocks\.(\d+)\.", n)] if m),
                         default=-1)
    rename, state = make_renamer(kind, ldm, num_levels)
    state["value"] = any(n.startswith(LDM_PREFIX) for n in names)  # a whole SD checkpoint: keep only the VAE
    report = convert(files, target, expected, rename=rename, dtype=dtype)
    return kind, ldm, report


@script_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", "--src", required=True, help="weight file or Hugging Face-style directory")
    parser.add_argument("--target", required=True, help="output .ckpt")
    parser.add_argument("--type", default="auto", choices=["auto", "sd", "opensora-1.2", "temporal", "hunyuan"])
    parser.add_argument("--config", default=None,
                        help="diffusers config.json of an SD/SDXL VAE (default: next to --source, else the SD VAE's); "
                             "hunyuan: a JSON of builder keywords (default: the Open-Sora 2.0 VAE)")
    parser.add_argument("--vae_2d_config", "--vae-2d-config", default=None,
                        help="1.2: SDXL VAE config.json or dir (default: the bundled SDXL VAE config)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                        help="cast floating weights (default: keep the source dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace --target if it exists")
    args = parser.parse_args(argv)
    check_target(args.source, args.target, args.overwrite)
    kind, ldm, _ = convert_vae(args.source, args.target, args.type, args.config, args.vae_2d_config, args.dtype)
    print(f"converted {args.source} ({kind}{', LDM naming' if ldm else ''}) -> {args.target}")
    return 0


if __name__ == "__main__":
    run_main(main)
