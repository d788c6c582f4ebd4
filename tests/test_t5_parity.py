"""T5 encoder parity with ``transformers.T5EncoderModel`` (PyTorch) on a tiny random T5 v1.1."""
import json
import os

import numpy as np
import pytest

import mindspore as ms

from opensora.models.registry import TEXT_ENCODERS
from opensora.models.text_encoder import T5Encoder, T5EncoderModel
from opensora.models.text_encoder.t5 import (T5_V1_1_XXL, T5Config, relative_position_buckets,
                                             t5_encoder_param_shapes)
from opensora.utils.checkpoint import model_shapes
from tests.fixtures.tiny_t5 import TINY_T5_CONFIG, convert_tiny_t5_dir, make_tiny_t5_dir, torch_reference
from tests.fixtures.manifests import manifest_path

MANIFEST = manifest_path("t5_v1_1_xxl_encoder")
TEXTS = ["a cat flies over the river.", "the dog runs beside an empty road at night in the quiet city " * 2,
         "", "Ünïcödé prompt: 日本語"]
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The same random model (seed 0) saved as 2 .bin shards and as one .safetensors, both converted."""
    dirs = {}
    for fmt, shards in (("bin", 2), ("safetensors", 1)):
        path = make_tiny_t5_dir(str(tmp_path_factory.mktemp(fmt)), weights=fmt, num_shards=shards)
        convert_tiny_t5_dir(path)
        dirs[fmt] = path
    return dirs


def _check_parity(encoder, model_dir):
    ids, mask = encoder.t5.tokenize(TEXTS)
    reference = torch_reference(model_dir, ids, mask)
    results = {}
    for mode in ("pynative", "graph"):
        ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
        out = encoder.encode(TEXTS)
        y, got_mask = out["y"].asnumpy(), out["mask"].asnumpy()
        assert y.shape == (len(TEXTS), 1, MAX_LENGTH, TINY_T5_CONFIG["d_model"])
        np.testing.assert_array_equal(got_mask, mask)
        diff = np.abs(y[:, 0] - reference)[mask.astype(bool)].max()
        assert diff <= 1e-4, f"{mode}: max abs diff {diff}"
        results[mode] = y
    ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(results["graph"], results["pynative"], atol=1e-5)
    return results


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_converted_checkpoint_matches_transformers(tiny_dirs, fmt):
    model_dir = tiny_dirs[fmt]
    assert os.path.isfile(os.path.join(model_dir, "model.ckpt"))
    encoder = T5Encoder(from_pretrained=model_dir, model_max_length=MAX_LENGTH)
    assert encoder.output_dim == TINY_T5_CONFIG["d_model"] and encoder.model_max_length == MAX_LENGTH
    _check_parity(encoder, model_dir)


def test_safetensors_read_directly_and_ckpt_path(tiny_dirs, tmp_path):
    """Without converting: the .safetensors of the directory; and a converted .ckpt given as a file."""
    model_dir = make_tiny_t5_dir(str(tmp_path / "direct"), weights="safetensors")
    assert not os.path.exists(os.path.join(model_dir, "model.ckpt"))
    direct = T5Encoder(from_pretrained=model_dir, model_max_length=MAX_LENGTH)
    _check_parity(direct, model_dir)
    from_file = TEXT_ENCODERS.build({"type": "t5", "from_pretrained": os.path.join(tiny_dirs["bin"], "model.ckpt"),
                                     "model_max_length": MAX_LENGTH})
    np.testing.assert_array_equal(from_file.encode(TEXTS)["y"].asnumpy(), direct.encode(TEXTS)["y"].asnumpy())


def test_float16_runs_close_to_float32(tiny_dirs):
    encoder = T5Encoder(from_pretrained=tiny_dirs["bin"], model_max_length=MAX_LENGTH, dtype="fp16")
    ids, mask = encoder.t5.tokenize(TEXTS)
    reference = torch_reference(tiny_dirs["bin"], ids, mask)
    y = encoder.encode(TEXTS)["y"]
    assert y.dtype == ms.float16
    diff = np.abs(y.asnumpy()[:, 0].astype(np.float32) - reference)[mask.astype(bool)].max()
    assert diff < 5e-2, diff


def test_bfloat16_refused_on_cpu(tiny_dirs):
    with pytest.raises(ValueError, match="bfloat16 needs an Ascend"):
        T5Encoder(from_pretrained=tiny_dirs["bin"], dtype="bf16")


@pytest.mark.parametrize("config", [TINY_T5_CONFIG, T5_V1_1_XXL.to_dict()])
def test_relative_position_buckets_match_transformers(config):
    from transformers.models.t5.modeling_t5 import T5Attention
    import torch

    relative = np.arange(-300, 301)
    expected = T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional=True, num_buckets=config["relative_attention_num_buckets"],
        max_distance=config["relative_attention_max_distance"]).numpy()
    got = relative_position_buckets(relative, config["relative_attention_num_buckets"],
                                    config["relative_attention_max_distance"])
    np.testing.assert_array_equal(got, expected)


def test_param_shapes_match_built_model_and_manifest():
    """The no-allocation shape table equals the built (tiny) model and the official full-size key list."""
    tiny = T5Config.from_dict(TINY_T5_CONFIG)
    assert t5_encoder_param_shapes(tiny) == model_shapes(T5EncoderModel(tiny))
    with open(MANIFEST) as f:
        manifest = json.load(f)
    official = {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}
    assert T5Config.from_dict(manifest["t5_config"]) == T5_V1_1_XXL
    expected = t5_encoder_param_shapes(T5_V1_1_XXL)
    assert official.pop("encoder.embed_tokens.weight") == expected["shared.weight"]
    assert official == expected
