"""Open-Sora 2.0 MMDiT weights: the official key/shape manifests map onto the full-size MindSpore models
(built without allocating their weights), bad checkpoints are refused with a list (loading and converting),
.pth conversion by name, bf16 weights kept bf16, config errors."""
import os
from dataclasses import fields

import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.config import ConfigError
from opensora.models.mmdit import MMDiTConfig
from opensora.models.mmdit.convert import layout_of, official_kwargs
from opensora.models.registry import MODELS
from opensora.utils.checkpoint import CheckpointError, compare_shapes
from tests.fixtures.manifests import load_manifest
from tests.fixtures.tiny_mmdit import reference_model, save_reference, tiny_inputs, tiny_kwargs
from tools.convert_mmdit import convert_file, expected_shapes, main

MANIFESTS = {"Open_Sora_v2": "mmdit_v2_11b", "flux1-dev": "flux1_dev"}
TINY_ARGS = ["in_channels=16", "vec_in_dim=32", "context_in_dim=32", "hidden_size=64", "num_heads=2", "depth=2",
             "depth_single_blocks=2", "axes_dim=[8,12,12]"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_keys_and_shapes_map_onto_full_size_model(name):
    manifest = load_manifest(MANIFESTS[name])
    shapes = {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}
    # the layout read from the keys gives the manifest's constructor arguments (the RoPE form is the config's)
    guessed_name, guessed = official_kwargs(shapes)
    assert guessed_name == name
    defaults = {f.name: f.default for f in fields(MMDiTConfig)}  # the manifest omits upstream's defaults
    assert set(guessed) >= set(manifest["kwargs"])
    for key, value in guessed.items():
        assert value == manifest["kwargs"].get(key, defaults[key]), key
    report = compare_shapes(shapes, expected_shapes(**manifest["kwargs"]))
    assert report.ok, report.format()
    assert len(shapes) == manifest["num_state_dict_entries"]


@pytest.fixture(scope="module")
def tiny_state():
    ref = reference_model("v2")
    return ref, {k: v.detach().contiguous() for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_bad_checkpoint_refused_with_list(tiny_state, tmp_path, problem):
    from safetensors.torch import save_file

    state = dict(tiny_state[1])
    del state["single_blocks.1.v_mlp.bias"]  # every file below lacks this key ...
    if problem == "missing":
        expected = ["single_blocks.1.v_mlp.bias"]
    elif problem == "extra":  # ... and has one key too many
        state["double_blocks.7.img_attn.q_proj.weight"] = torch.zeros(3, 3)
        expected = ["single_blocks.1.v_mlp.bias", "double_blocks.7.img_attn.q_proj.weight"]
    else:  # ... and one of the wrong shape
        state["cond_in.weight"] = torch.zeros(64, 16)  # a cond_in without the mask channels
        expected = ["single_blocks.1.v_mlp.bias", "cond_in.weight: (64, 16) vs (64, 20)"]
    src = str(tmp_path / "bad.safetensors")
    save_file(state, src)
    with pytest.raises(CheckpointError) as err:  # loading: strict, nothing loaded
        MODELS.build({"type": "flux", **tiny_kwargs("v2")}, from_pretrained=src)
    for name in expected:
        assert name in str(err.value)
    target = str(tmp_path / "bad_out.safetensors")
    with pytest.raises(CheckpointError) as err:  # converting: nothing written
        convert_file(src, target, **tiny_kwargs("v2"))
    for name in expected:
        assert name in str(err.value)
    assert not os.path.exists(target)
    assert main(["--src", src, "--target", target, "--kwargs", *TINY_ARGS]) == 2  # bad input (CheckpointError is an InputError)
    assert not os.path.exists(target)


def test_pth_converted_by_name(tiny_state, tmp_path):
    """An upstream-style .pth (state dict wrapped in "model") -> .safetensors by the command line, layout from
    the keys; the converted file loads strictly and gives the reference's numbers."""
    ref, state = tiny_state
    src = str(tmp_path / "finetune.pth")
    torch.save({"model": state}, src)
    target = str(tmp_path / "converted.safetensors")
    assert main(["--src", src, "--target", target, "--kwargs", *TINY_ARGS, "use_liger_rope=true"]) == 0
    net = MODELS.build({"type": "flux", **tiny_kwargs("v2")}, from_pretrained=target)
    inputs = tiny_inputs("v2")
    with torch.no_grad():
        expected = ref(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    got = net(**{k: ms.Tensor(v) for k, v in inputs.items()}).asnumpy()
    assert np.abs(got - expected).max() < 1e-4


def test_bf16_weights_stay_bf16(tiny_state, tmp_path):
    """A bf16 .safetensors (as the official files) loaded into a bf16 model keeps its dtype and values;
    into a float32 model it is widened exactly."""
    ref, state = tiny_state
    path = save_reference(ref, str(tmp_path / "bf16.safetensors"), dtype="bfloat16")
    expected = {k: v.to(torch.bfloat16).float().numpy() for k, v in state.items()}
    for dtype, ms_dtype in (("bf16", ms.bfloat16), ("float32", ms.float32)):
        net = MODELS.build({"type": "flux", **tiny_kwargs("v2"), "dtype": dtype}, from_pretrained=path)
        params = {p.name: p for p in net.get_parameters()}
        assert set(params) == set(expected)
        for name, param in params.items():
            assert param.dtype == ms_dtype, name
            assert np.array_equal(param.astype(ms.float32).asnumpy(), expected[name]), name


def test_layout_of_keys():
    assert layout_of(["double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"]) == \
        dict(fused_qkv=True, guidance_embed=True, cond_embed=False)
    with pytest.raises(ValueError, match="not an MMDiT"):
        layout_of(["spatial_blocks.0.attn.qkv.weight"])


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="fused_qkv"):  # a misspelt key names the closest valid one
        MODELS.build({"type": "flux", **tiny_kwargs("v2"), "fused_qvk": True})
    kwargs = tiny_kwargs("v2")
    del kwargs["theta"]
    with pytest.raises(ConfigError, match="missing theta"):
        MODELS.build({"type": "flux", **kwargs})
    with pytest.raises(CheckpointError, match="not found"):
        MODELS.build({"type": "flux", **tiny_kwargs("v2")}, from_pretrained=str(tmp_path / "absent.safetensors"))
    with pytest.raises(ConfigError, match="disagree"):
        MODELS.build({"type": "flux", **tiny_kwargs("v2"), "dtype": "fp32", "torch_dtype": "bf16"})
