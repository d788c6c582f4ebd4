"""Loading T5 from bad directories or checkpoints: clear errors, nothing half loaded."""
import os
import shutil

import numpy as np
import pytest

import mindspore as ms

from opensora.config import ConfigError
from opensora.models.registry import TEXT_ENCODERS
from opensora.models.text_encoder import T5Encoder
from opensora.models.text_encoder.tokenizer import TokenizerError
from opensora.utils.checkpoint import CheckpointError
from tests.fixtures.tiny_t5 import convert_tiny_t5_dir, make_tiny_t5_dir


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = make_tiny_t5_dir(str(tmp_path_factory.mktemp("good")), weights="safetensors")
    convert_tiny_t5_dir(path)
    return path


def _copy_without(src, dst, *names):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return str(dst)


def test_missing_tokenizer_files(good_dir, tmp_path):
    path = _copy_without(good_dir, tmp_path / "t5", "spiece.model")
    with pytest.raises(TokenizerError, match="spiece.model or tokenizer.json"):
        T5Encoder(from_pretrained=path)


def test_missing_config_and_missing_directory(good_dir, tmp_path):
    path = _copy_without(good_dir, tmp_path / "t5", "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        T5Encoder(from_pretrained=path)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        T5Encoder(from_pretrained="DeepFloyd/t5-v1_1-xxl", cache_dir=str(tmp_path))


def test_repository_id_found_under_cache_dir(good_dir, tmp_path):
    shutil.copytree(good_dir, tmp_path / "t5-v1_1-xxl")
    encoder = T5Encoder(from_pretrained="DeepFloyd/t5-v1_1-xxl", cache_dir=str(tmp_path), model_max_length=8)
    assert encoder.encode(["a cat"])["y"].shape == (1, 1, 8, 32)


def test_bin_only_directory_says_how_to_convert(tmp_path):
    path = make_tiny_t5_dir(str(tmp_path / "t5"), weights="bin")
    with pytest.raises(CheckpointError, match="tools/convert_t5.py"):
        T5Encoder(from_pretrained=path)


def _write_ckpt(good_dir, path, edit):
    params = {k: v.asnumpy() for k, v in ms.load_checkpoint(os.path.join(good_dir, "model.ckpt")).items()}
    edit(params)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], path)
    return path


def test_loader_refuses_missing_key(good_dir, tmp_path):
    name = "encoder.block.1.layer.0.SelfAttention.v.weight"
    ckpt = _write_ckpt(good_dir, str(tmp_path / "missing.ckpt"), lambda p: p.pop(name))
    shutil.copy(os.path.join(good_dir, "config.json"), tmp_path)
    for f in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(good_dir, f), tmp_path)
    with pytest.raises(CheckpointError) as err:
        T5Encoder(from_pretrained=ckpt)
    assert "missing" in str(err.value) and name in str(err.value)


def test_loader_refuses_mis_shaped_key(good_dir, tmp_path):
    path = _copy_without(good_dir, tmp_path / "t5", "model.ckpt", "*.safetensors")

    def shrink(params):
        params["encoder.final_layer_norm.weight"] = np.ones(16, np.float32)

    _write_ckpt(good_dir, os.path.join(path, "model.ckpt"), shrink)
    with pytest.raises(CheckpointError, match=r"encoder.final_layer_norm.weight: \(16,\) vs \(32,\)"):
        T5Encoder(from_pretrained=path)


def test_unknown_dtype_and_kwargs(good_dir):
    with pytest.raises(ValueError, match="unknown dtype"):
        T5Encoder(from_pretrained=good_dir, dtype="int8")
    with pytest.raises(ConfigError, match="model_max_length"):
        TEXT_ENCODERS.build({"type": "t5", "from_pretrained": good_dir, "model_max_lenght": 300})
