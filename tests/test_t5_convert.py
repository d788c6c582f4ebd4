"""tools/convert_t5.py: the name table, dtype casts, incremental writing, and refusing bad checkpoints."""
import os

import numpy as np
import pytest

import mindspore as ms

from opensora.utils.checkpoint import CheckpointError
from tests.fixtures.tiny_t5 import official_state_dict, build_torch_t5, make_tiny_t5_dir, write_weights
from tools.convert_t5 import convert_t5, main


@pytest.fixture(scope="module")
def state():
    """The official-style state dict of the tiny model (torch tensors)."""
    return official_state_dict(build_torch_t5(seed=1))


@pytest.fixture
def model_dir(tmp_path):
    """config.json + tokenizer, no weights: each test writes the weights it needs."""
    return make_tiny_t5_dir(str(tmp_path / "t5"), weights="none", seed=1)


def _files(path):
    return sorted(os.listdir(path))


def _refused(model_dir, state, fmt="safetensors"):
    write_weights(model_dir, state, fmt)
    before = _files(model_dir)
    target = os.path.join(model_dir, "model.ckpt")
    with pytest.raises(CheckpointError) as err:
        convert_t5([model_dir], target)
    assert _files(model_dir) == before  # nothing written, no temporary left behind
    return str(err.value)


def test_values_names_and_dtypes(model_dir, state, tmp_path):
    write_weights(model_dir, state, "bin", num_shards=3)
    for dtype, np_dtype, tol in ((None, np.float32, 0), ("float16", np.float16, 1e-3)):
        target = str(tmp_path / f"t5_{dtype}.ckpt")
        convert_t5([model_dir], target, dtype=dtype)
        params = ms.load_checkpoint(target)
        assert "encoder.embed_tokens.weight" not in params and len(params) == len(state) - 1
        for name, value in params.items():
            source = state[name].numpy()
            assert value.dtype == ms.float32 if dtype is None else value.dtype == ms.float16
            np.testing.assert_allclose(value.asnumpy(), source.astype(np_dtype), rtol=tol, atol=tol)
    target = str(tmp_path / "t5_bf16.ckpt")
    convert_t5([model_dir], target, dtype="bfloat16")
    q = ms.load_checkpoint(target)["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert q.dtype == ms.bfloat16
    np.testing.assert_array_equal(q.astype(ms.float32).asnumpy(),
                                  state["encoder.block.0.layer.0.SelfAttention.q.weight"].bfloat16().float().numpy())


def test_embedding_alias_and_decoder_keys(model_dir, state, tmp_path):
    import torch

    only_alias = {k: v for k, v in state.items() if k != "shared.weight"}
    only_alias["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(32, 32)  # a full T5 checkpoint
    only_alias["lm_head.weight"] = torch.zeros(256, 32)
    write_weights(model_dir, only_alias, "safetensors")
    target = str(tmp_path / "t5.ckpt")
    convert_t5([model_dir], target)
    params = ms.load_checkpoint(target)
    np.testing.assert_array_equal(params["shared.weight"].asnumpy(), state["shared.weight"].numpy())
    assert not any(k.startswith("decoder") or k == "lm_head.weight" for k in params)


def test_refuses_missing_key(model_dir, state):
    name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    message = _refused(model_dir, {k: v for k, v in state.items() if k != name})
    assert "missing" in message and name in message


def test_refuses_mis_shaped_and_unexpected_keys(model_dir, state):
    import torch

    bad = dict(state)
    bad["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(16, 32)
    bad["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2)
    message = _refused(model_dir, bad, "bin")
    assert "encoder.block.0.layer.0.SelfAttention.q.weight: (16, 32) vs (32, 32)" in message
    assert "encoder.block.0.layer.0.SelfAttention.extra.weight" in message


def test_refuses_untied_embeddings(model_dir, state):
    bad = dict(state)
    bad["encoder.embed_tokens.weight"] = state["shared.weight"] + 1
    assert "differ" in _refused(model_dir, bad)


def test_command_line(model_dir, state, capsys):
    write_weights(model_dir, {k: v for k, v in state.items() if "final_layer_norm" not in k}, "safetensors")
    target = os.path.join(model_dir, "model.ckpt")
    assert main(["--src", model_dir, "--target", target]) == 2
    assert "encoder.final_layer_norm.weight" in capsys.readouterr().err and not os.path.exists(target)
    write_weights(model_dir, state, "safetensors")
    assert main(["--src", os.path.join(model_dir, "model.safetensors"), "--target", target, "--dtype", "fp16"]) == 0
    assert ms.load_checkpoint(target)["shared.weight"].dtype == ms.float16


def test_safetensors_target_streams_and_loads(model_dir, state, tmp_path):
    """A .safetensors target (read lazily by MindSpore: the better choice for the 19 GB XXL encoder)."""
    from safetensors.numpy import load_file

    from opensora.models.text_encoder import T5Encoder
    from tests.fixtures.tiny_t5 import torch_reference

    write_weights(model_dir, state, "bin", num_shards=2)
    target = os.path.join(model_dir, "model.safetensors")
    convert_t5([os.path.join(model_dir, n) for n in _files(model_dir) if n.endswith(".bin")], target)
    written = load_file(target)  # the reference reader accepts the streamed file
    assert sorted(written) == sorted(k for k in state if k != "encoder.embed_tokens.weight")
    for name, value in written.items():
        np.testing.assert_array_equal(value, state[name].numpy())
    encoder = T5Encoder(from_pretrained=model_dir, model_max_length=8)
    ids, mask = encoder.t5.tokenize(["a cat", "the dog"])
    reference = torch_reference(model_dir, ids, mask)
    assert np.abs(encoder.encode(["a cat", "the dog"])["y"].asnumpy()[:, 0] - reference)[mask.astype(bool)].max() <= 1e-4
    half = str(tmp_path / "t5_bf16.safetensors")
    convert_t5([model_dir], half, dtype="bf16", config=os.path.join(model_dir, "config.json"))
    wo = ms.load_checkpoint(half, format="safetensors")["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    assert wo.dtype == ms.bfloat16
    np.testing.assert_array_equal(wo.astype(ms.float32).asnumpy(),
                                  state["encoder.block.1.layer.1.DenseReluDense.wo.weight"].bfloat16().float().numpy())
