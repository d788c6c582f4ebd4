"""Each model's initialisation follows upstream's ``initialize_weights`` (stated once per model): zeros where
upstream zeroes, N(0, 0.02) where it draws a normal, xavier-uniform for the other linear layers, and the
lazy build (``build_pretrained``) draws the same rules as a direct construction."""
import math

import numpy as np
import pytest

from opensora.models.registry import MODELS
from tests.fixtures.tiny_stdit import MODEL_NAMES, tiny_kwargs

# name patterns -> rule, per version (upstream opensora/v1.0 stdit.py, v1.1 stdit2.py, v1.2 stdit3.py)
ZERO = {
    "STDiT": ["blocks.0.cross_attn.proj.weight", "blocks.1.cross_attn.proj.bias", "blocks.0.attn_temp.proj.weight",
              "blocks.1.attn_temp.proj.bias", "final_layer.linear.weight", "final_layer.linear.bias"],
    "STDiT2": ["blocks.0.cross_attn.proj.weight", "blocks.1.attn_temp.proj.weight", "final_layer.linear.weight"],
    "STDiT3": ["temporal_blocks.0.attn.proj.weight", "temporal_blocks.1.cross_attn.proj.weight",
               "temporal_blocks.0.mlp.fc2.weight", "fps_embedder.mlp.2.weight", "fps_embedder.mlp.2.bias"],
}
NORMAL_002 = {
    "STDiT": ["t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight", "t_block.1.weight", "y_embedder.y_proj.fc1.weight"],
    "STDiT2": ["t_embedder.mlp.0.weight", "t_block.1.weight", "t_block_temp.1.weight", "y_embedder.y_proj.fc2.weight"],
    "STDiT3": ["fps_embedder.mlp.0.weight"],
}
XAVIER = {
    "STDiT": ["blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight"],
    "STDiT2": ["blocks.0.attn.qkv.weight", "csize_embedder.mlp.0.weight"],
    "STDiT3": ["spatial_blocks.0.attn.proj.weight", "spatial_blocks.1.cross_attn.proj.weight",
               "t_embedder.mlp.0.weight", "t_block.1.weight", "y_embedder.y_proj.fc1.weight"],
}
NOT_ZERO = {"STDiT3": ["spatial_blocks.0.mlp.fc2.weight", "x_embedder.proj.bias"], "STDiT": ["x_embedder.proj.bias"],
            "STDiT2": ["x_embedder.proj.bias"]}


def _params(version, lazy):
    kwargs = tiny_kwargs(version)
    if lazy:
        net = MODELS.build({"type": MODEL_NAMES[version], **kwargs})
    else:
        from opensora.models.stdit import STDiT, STDiT2, STDiT3

        net = {"STDiT": STDiT, "STDiT2": STDiT2, "STDiT3": STDiT3}[version](**kwargs)
    return {p.name: p.asnumpy() for p in net.get_parameters()}


@pytest.mark.parametrize("lazy", [True, False], ids=["build_pretrained", "direct"])
@pytest.mark.parametrize("version", ["STDiT", "STDiT2", "STDiT3"])
def test_initialisation_follows_upstream(version, lazy):
    params = _params(version, lazy)
    for name in ZERO[version]:
        assert not params[name].any(), name
    for name in NOT_ZERO[version] + NORMAL_002[version] + XAVIER[version]:
        assert params[name].any(), name
    for name in NORMAL_002[version]:
        assert abs(params[name].std() - 0.02) < 0.002 and params[name].mean() < 0.002, name
    for name in XAVIER[version]:
        w = params[name]
        bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
        assert np.abs(w).max() <= bound and abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound, name
        assert not params[name[: -len("weight")] + "bias"].any(), name
    if version != "STDiT3":  # 1.0 and 1.1 initialise the patch embedding as the linear layer it is
        w = params["x_embedder.proj.weight"]
        fan_in = int(np.prod(w.shape[1:]))
        assert np.abs(w).max() <= math.sqrt(6.0 / (fan_in + w.shape[0]))
