"""Conversion: official key/shape manifests map onto the full-size models; bad checkpoints are refused
with a list and nothing written; PixArt; from_pretrained on a Hugging Face style directory."""
import json
import os

import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.models.stdit.convert import guess_model, pixart_to_stdit, rename
from opensora.utils.checkpoint import CheckpointError, compare_shapes, read_checkpoint
from tests.fixtures.tiny_stdit import MODEL_NAMES, build_tiny, reference_model, tiny_inputs, tiny_kwargs
from tests.fixtures.manifests import load_manifest
from tools.convert_pt2ms import convert_file, expected_shapes, main

FILES = {"STDiT-XL/2": "stdit_xl2_v1_0", "STDiT2-XL/2": "stdit2_xl2_v1_1", "STDiT3-XL/2": "stdit3_xl2_v1_2"}


def _manifest(model):
    return load_manifest(FILES[model])


def _mapped_shapes(manifest):
    out = {}
    for name, entry in manifest["state_dict"].items():
        for new_name, shape in rename(name, tuple(entry["shape"])):
            out[new_name] = shape
    return out


@pytest.mark.parametrize("model", sorted(FILES))
def test_manifest_keys_and_shapes_map_onto_full_size_model(model):
    manifest = _manifest(model)
    assert guess_model({k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}) == model
    kwargs = {k: v for k, v in manifest["kwargs"].items() if k not in ("enable_flash_attn", "enable_flashattn")}
    report = compare_shapes(_mapped_shapes(manifest), expected_shapes(model, **kwargs))
    assert report.ok, report.format()


def test_3b_preset_shapes():
    shapes = expected_shapes("STDiT3-3B/2")
    assert shapes["spatial_blocks.27.attn.qkv.weight"] == (3 * 1872, 1872)
    assert shapes["temporal_blocks.0.attn.q_norm.weight"] == (72,)
    assert guess_model(shapes) == "STDiT3-3B/2"


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    from safetensors.torch import save_file

    ref = reference_model("STDiT3")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    directory = tmp_path_factory.mktemp("src")
    return ref, state, directory, save_file


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_bad_checkpoint_refused_with_list(tiny_src, problem):
    _, state, directory, save_file = tiny_src
    state = dict(state)
    if problem == "missing":
        del state["spatial_blocks.1.mlp.fc2.weight"]
        expected = "spatial_blocks.1.mlp.fc2.weight"
    elif problem == "extra":
        state["spatial_blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)
        expected = "spatial_blocks.9.attn.qkv.weight"
    else:
        state["y_embedder.y_embedding"] = torch.zeros(5, 16)  # another caption length
        expected = "y_embedder.y_embedding: (5, 16) vs (8, 16)"
    src = str(directory / f"bad_{problem}.safetensors")
    save_file(state, src)
    target = str(directory / f"bad_{problem}.ckpt")
    with pytest.raises(CheckpointError) as err:
        convert_file(src, target, "STDiT3-XL/2", model_kwargs=tiny_kwargs("STDiT3"))
    assert expected in str(err.value)
    assert not os.path.exists(target)
    # the command line says so too and exits non-zero
    assert main(["--src", src, "--target", target, "--kwargs", "depth=2", "hidden_size=64", "num_heads=4",
                 "caption_channels=16", "model_max_length=8"]) == 2
    assert not os.path.exists(target)


def test_from_pretrained_hf_directory_and_guess(tiny_src, tmp_path):
    ref, state, _, save_file = tiny_src
    repo = tmp_path / "OpenSora-STDiT-v3"
    repo.mkdir()
    save_file(state, str(repo / "model.safetensors"))
    config = {"architectures": ["STDiT3"], "model_type": "STDiT3", **tiny_kwargs("STDiT3"),
              "patch_size": [1, 2, 2], "enable_flash_attn": True, "torch_dtype": "float32"}
    (repo / "config.json").write_text(json.dumps(config))
    from opensora.models.registry import MODELS

    net = MODELS.build({"type": "STDiT3-XL/2", "from_pretrained": str(repo)})  # size from config.json
    net.set_train(False)
    inputs = tiny_inputs("STDiT3", as_numpy=True)
    with torch.no_grad():
        expected = ref(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    got = net(**{k: ms.Tensor(v) for k, v in inputs.items()}).asnumpy()
    assert np.abs(got - expected).max() < 1e-4
    # guessed model name through the command line
    target = str(tmp_path / "guessed.ckpt")
    kw = ["depth=2", "hidden_size=64", "num_heads=4", "caption_channels=16", "model_max_length=8"]
    assert main(["--src", str(repo), "--target", target, "--kwargs", *kw]) == 0
    assert os.path.exists(target)


def test_folder_converts_without_flags(tiny_src, tmp_path):
    """A Hugging Face-style folder of a non-official STDiT3 (config.json + model.safetensors) converts with no
    --model and no --kwargs: the size comes from the folder's config.json, as from_pretrained reads it; the
    converted checkpoint matches the reference. ``--kwargs dtype=...`` is a model keyword, not the tool's."""
    ref, state, _, save_file = tiny_src
    repo = tmp_path / "my-finetuned-stdit3"
    repo.mkdir()
    save_file(state, str(repo / "model.safetensors"))
    config = {"architectures": ["STDiT3"], "model_type": "STDiT3", **tiny_kwargs("STDiT3"), "patch_size": [1, 2, 2]}
    (repo / "config.json").write_text(json.dumps(config))
    target = str(tmp_path / "converted.ckpt")
    assert main(["--src", str(repo), "--target", target]) == 0
    net = build_tiny("STDiT3", target)
    inputs = tiny_inputs("STDiT3", as_numpy=True)
    with torch.no_grad():
        expected = ref(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    got = net(**{k: ms.Tensor(v) for k, v in inputs.items()}).asnumpy()
    assert np.abs(got - expected).max() < 1e-4
    assert main(["--src", str(repo), "--target", str(tmp_path / "fp32.ckpt"), "--kwargs", "dtype=fp32"]) == 0


def test_pixart_converted_with_own_keys(tmp_path):
    ref = reference_model("STDiT")
    state = {k: v for k, v in ref.state_dict().items() if ".attn_temp." not in k}
    state["x_embedder.proj.weight"] = state["x_embedder.proj.weight"][:, :, 0]  # PixArt's 2-D patch kernel
    src = str(tmp_path / "PixArt-XL-2-512x512.pth")
    torch.save({"state_dict": state}, src)
    target = str(tmp_path / "pixart.ckpt")
    kw = {k: v for k, v in tiny_kwargs("STDiT").items()}
    assert convert_file(src, target, None, model_kwargs=kw) == "PixArt-XL/2"
    params = ms.load_checkpoint(target)
    assert tuple(params["x_embedder.proj.weight"].shape) == (64, 4, 2, 2)
    assert "pos_embed" not in params and not any(".attn_temp." in k for k in params)
    mapped = pixart_to_stdit(params)
    assert tuple(mapped["x_embedder.proj.weight"].shape) == (64, 4, 1, 2, 2)
    net = build_tiny("STDiT")
    missing = set(net.parameters_dict()) - set(mapped)
    assert missing and all(".attn_temp." in k for k in missing)


def test_pixart_ms_with_model_given(tmp_path):
    """PixArt-XL-2-1024-MS.pth: its size / aspect-ratio embedders (hidden/3 wide) and its saved pos_embed
    are taken also when --model PixArt-XL/2 is named (not only when the model is guessed)."""
    ref = reference_model("STDiT")
    state = {k: v for k, v in ref.state_dict().items() if ".attn_temp." not in k}
    state["x_embedder.proj.weight"] = state["x_embedder.proj.weight"][:, :, 0]
    state["pos_embed"] = torch.zeros(1, 16, 64)
    h = 64 // 3
    for name in ("csize_embedder", "ar_embedder"):
        state.update({f"{name}.mlp.0.weight": torch.randn(h, 256), f"{name}.mlp.0.bias": torch.randn(h),
                      f"{name}.mlp.2.weight": torch.randn(h, h), f"{name}.mlp.2.bias": torch.randn(h)})
    src = str(tmp_path / "PixArt-XL-2-1024-MS.pth")
    torch.save({"state_dict": state}, src)
    target = str(tmp_path / "pixart_ms.ckpt")
    assert convert_file(src, target, "PixArt-XL/2", model_kwargs=tiny_kwargs("STDiT")) == "PixArt-XL/2"
    params = ms.load_checkpoint(target)
    assert tuple(params["csize_embedder.mlp.2.weight"].shape) == (h, h) and "pos_embed" not in params


@pytest.mark.full
@pytest.mark.parametrize("model", sorted(FILES))
def test_full_size_conversion_from_manifest(model, tmp_path):
    from safetensors.numpy import save_file

    manifest = _manifest(model)
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v["shape"], dtype=np.float32).astype(np.float16)
             for k, v in manifest["state_dict"].items()}
    src = str(tmp_path / "full.safetensors")
    save_file(state, src)
    del state
    target = str(tmp_path / "full.ckpt")
    kwargs = {k: v for k, v in manifest["kwargs"].items() if k not in ("enable_flash_attn", "enable_flashattn")}
    assert convert_file(src, target, None, model_kwargs=kwargs) == model
    params = read_checkpoint(target)  # also: MindSpore's free-memory check must not count the page cache
    report = compare_shapes({k: v.shape for k, v in params.items()}, expected_shapes(model, **kwargs))
    assert report.ok, report.format()
