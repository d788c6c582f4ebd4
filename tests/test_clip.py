"""CLIP-L's text tower (Open-Sora 2.0's pooled text vector) against ``transformers.CLIPTextModel`` on a tiny random
CLIP, its loading (official layout, transformers 5.x layout, .bin via tools/convert_clip.py, bad files) and the
full-size key/shape manifest."""
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from opensora.config import ConfigError
from opensora.models.layers import forms
from opensora.models.layers.nn import LayerNorm
from opensora.models.registry import TEXT_ENCODERS
from opensora.models.text_encoder import CLIPTextConfig, CLIPTextModel, HFEmbedder
from opensora.models.text_encoder.clip_weights import map_names
from opensora.models.text_encoder.pretrained import load_renamed
from opensora.utils.checkpoint import CheckpointError, model_shapes
from tests.fixtures.manifests import load_manifest
from tests.fixtures.tiny_clip import make_tiny_clip_dir, torch_reference, torch_text_model, write_weights
from tests.reference.text_embedder_torch import HFEmbedderReference

TEXTS = ["a cat flies over the river.", "", "The DOG runs over the river at night " * 12,
         "Ünïcödé prompt: 日本語"]
TOL = 1e-4


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """The official layout: .../openai/clip-vit-large-patch14 with a whole CLIPModel's weights (legacy eos 2)."""
    return make_tiny_clip_dir(str(tmp_path_factory.mktemp("ckpts") / "openai" / "clip-vit-large-patch14"))


@pytest.fixture(scope="module")
def reference(clip_dir):
    return torch_text_model(clip_dir)


def test_text_embedder_matches_upstreams_call(clip_dir):
    """Prompts -> pooled (B, D) as upstream's HFEmbedder (CLIPTokenizer, max length 77, no mask), both modes."""
    embedder = TEXT_ENCODERS.build({"type": "text_embedder", "from_pretrained": clip_dir, "max_length": 77})
    assert embedder.is_clip and embedder.output_dim == 32
    upstream = HFEmbedderReference(clip_dir, 77)
    expected_ids = upstream.tokenize(TEXTS).numpy()
    ids, _ = embedder.embedder.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, expected_ids)
    eos = upstream.tokenizer.eos_token_id  # also the pad token
    assert (ids[2, :-1] != eos).all() and ids[2, -1] == eos  # the long prompt is truncated to 77 tokens, eos kept
    expected = upstream(TEXTS)
    last_expected, _ = torch_reference(upstream.hf_module, expected_ids)
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        ms.set_context(mode=mode)
        pooled = embedder(TEXTS).asnumpy()
        last, pooled_direct = (t.asnumpy() for t in embedder.model(ms.Tensor(ids)))
        assert pooled.shape == (len(TEXTS), 32)
        assert np.abs(pooled - expected).max() <= TOL, (mode, np.abs(pooled - expected).max())
        np.testing.assert_array_equal(pooled, pooled_direct)
        assert np.abs(last - last_expected).max() <= TOL, (mode, np.abs(last - last_expected).max())


def test_plain_formulations_match_transformers(clip_dir, reference):
    """Off the CPU backend the LayerNorms keep their fused kernel (forms.py): that build matches too, in graph mode."""
    with forms.formulations(cpu=False):
        embedder = HFEmbedder(clip_dir, max_length=77)
    chosen = {cell._layer_norm for _, cell in embedder.model.cells_and_names() if isinstance(cell, LayerNorm)}
    assert chosen == {forms.LAYER_NORM.plain}
    ids, _ = embedder.embedder.tokenize(TEXTS)
    last_expected, pooled_expected = torch_reference(reference, ids)
    ms.set_context(mode=ms.GRAPH_MODE)
    last, pooled = (t.asnumpy() for t in embedder.model(ms.Tensor(ids)))
    assert np.abs(pooled - pooled_expected).max() <= TOL and np.abs(last - last_expected).max() <= TOL


@pytest.mark.parametrize("eos", [2, 300])
def test_pooled_token_rules(clip_dir, reference, eos):
    """eos_token_id 2: the (first) largest id; otherwise the first eos id, position 0 when absent. Ids chosen so
    that the two rules disagree on every row, with ties (526 is the tiny vocabulary's largest id, <|endoftext|>)."""
    config = CLIPTextConfig.from_json(os.path.join(clip_dir, "config.json"))
    config.eos_token_id = eos
    model = CLIPTextModel(config)
    load_renamed(model, [os.path.join(clip_dir, "model.safetensors")], map_names, "tools/convert_clip.py")
    ids = np.full((4, 12), 526, np.int64)
    ids[:, 0] = 525
    ids[0, 1:6] = [40, 300, 526, 500, 7]
    ids[1, 1:6] = [9, 526, 9, 300, 300]
    ids[2, :] = [1, 3, 8, 400, 400, 1, 2, 3, 4, 5, 6, 7]  # tie of the largest id; no 300, no 526
    reference.eos_token_id = eos  # CLIPTextModel reads the rule from this attribute
    try:
        last_expected, pooled_expected = torch_reference(reference, ids)
    finally:
        reference.eos_token_id = reference.config.eos_token_id
    last, pooled = (t.asnumpy() for t in model(ms.Tensor(ids.astype(np.int32))))
    positions = model.text_model.eos_positions(ms.Tensor(ids.astype(np.int32))).asnumpy()
    assert positions.tolist() == ([3, 2, 3, 1] if eos == 2 else [2, 4, 0, 0])
    assert np.abs(last - last_expected).max() <= TOL
    assert np.abs(pooled - pooled_expected).max() <= TOL


def test_transformers5_layout_and_bin_conversion(clip_dir, reference, tmp_path):
    """A CLIPTextModel state dict without the text_model. prefix (+ the old position_ids buffer) loads the same;
    a .bin-only folder asks for tools/convert_clip.py, which writes a checked model.ckpt."""
    import shutil

    import torch

    from tools.convert_clip import convert_clip

    state = dict(reference.state_dict())  # transformers 5.x: no text_model. prefix
    assert "embeddings.token_embedding.weight" in state and not any(k.startswith("text_model.") for k in state)

    state["embeddings.position_ids"] = torch.arange(77).reshape(1, -1)
    folder = tmp_path / "openai" / "clip-5x"
    shutil.copytree(clip_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    write_weights(str(folder), state, "bin")
    with pytest.raises(CheckpointError, match="tools/convert_clip.py"):
        HFEmbedder(str(folder), max_length=77)
    convert_clip([str(folder)], str(folder / "model.ckpt"))
    ids = np.array([[525, 69, 75, 526] + [526] * 8], np.int32)
    _, expected = torch_reference(reference, ids)
    got = HFEmbedder(str(folder), max_length=77).model(ms.Tensor(ids))[1].asnumpy()
    assert np.abs(got - expected).max() <= TOL


def test_bad_checkpoint_refused_with_a_list(clip_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    state = load_file(os.path.join(clip_dir, "model.safetensors"))
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    state["text_model.encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
    state["text_model.final_layer_norm.weight"] = np.ones(16, np.float32)
    path = str(tmp_path / "bad.safetensors")
    save_file(state, path)
    with no_init_parameters():
        model = CLIPTextModel(CLIPTextConfig.from_json(os.path.join(clip_dir, "config.json")))
    with pytest.raises(CheckpointError) as err:
        load_renamed(model, [path], map_names, "tools/convert_clip.py")
    message = str(err.value)
    for expected in ("missing", "text_model.encoder.layers.1.mlp.fc2.bias", "not used",
                     "text_model.encoder.layers.0.extra.weight",
                     "text_model.final_layer_norm.weight: (16,) vs (32,)"):
        assert expected in message, message
    with pytest.raises(CheckpointError, match="given twice"):
        map_names(["text_model.final_layer_norm.weight", "final_layer_norm.weight"])


def test_config_errors(clip_dir):
    with pytest.raises(ValueError, match="longer than the model's 77 positions"):
        HFEmbedder(clip_dir, max_length=78)
    with pytest.raises(ConfigError, match="shardformer"):
        HFEmbedder(clip_dir, max_length=77, shardformer=True)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig.from_dict({"hidden_act": "swish"})


def test_manifest_maps_onto_the_full_size_model():
    """Every key of openai/clip-vit-large-patch14's text tower maps by name onto the model built from the official
    config without allocating weights (123 M parameters)."""
    manifest = load_manifest("clip_vit_l14_text")
    official = {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}
    renamed = {new: official[name] for name, new in map_names(official).items()}
    assert renamed == official  # the official names are the MindSpore names
    config = CLIPTextConfig.from_dict({"text_config": manifest["clip_text_config"]})
    assert (config.hidden_size, config.num_hidden_layers, config.eos_token_id) == (768, 12, 2)
    with no_init_parameters():
        shapes = model_shapes(CLIPTextModel(config))
    assert shapes == official
    assert sum(int(np.prod(s)) for s in shapes.values()) == manifest["num_parameters_unique"]
