"""Full size (``-m full``, minutes, ~19 GB of disk, a few GB of RAM): convert a random checkpoint with exactly
the official key list and shapes (manifest t5_v1_1_xxl_encoder.json) into the full T5-XXL encoder's layout.

The source is written tensor by tensor as two float16 ``.safetensors`` shards (half the disk of float32),
converted by tools/convert_t5.py, and the result is read back message by message, so neither step holds
more than one tensor in memory.
"""
import json
import struct

import numpy as np
import pytest

from opensora.models.text_encoder.t5 import T5Config, t5_encoder_param_shapes
from tools.convert_t5 import convert_t5
from tests.fixtures.manifests import manifest_path

MANIFEST = manifest_path("t5_v1_1_xxl_encoder")
pytestmark = pytest.mark.full


def _tensor_bytes(name, shape, seed):
    """Random finite float16 values in (-2, 2), generated as raw bits (much faster than normal draws)."""
    bits = np.random.default_rng(seed).integers(0, 1 << 16, int(np.prod(shape)), dtype=np.uint16)
    return (bits & np.uint16(0xBFFF)).tobytes()  # clearing exponent bit 14 keeps every value finite


def write_safetensors_lazily(path, entries, seed_of):
    """A float16 .safetensors written one tensor at a time (header first: offsets from the shapes)."""
    header, offset = {}, 0
    for name, shape in entries:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in entries:
            f.write(_tensor_bytes(name, shape, seed_of(name)))


def iter_ckpt(path):
    """(tag, dims, type, content length) of each message of a MindSpore .ckpt, one message in memory at a time."""
    from mindspore.train.checkpoint_pb2 import Checkpoint

    def varint(f):
        shift = result = 0
        while True:
            byte = f.read(1)[0]
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    with open(path, "rb") as f:
        while True:
            first = f.read(1)
            if not first:
                return
            assert first == b"\x0a"  # Checkpoint.value (field 1), length-delimited
            value = Checkpoint.Value()
            value.ParseFromString(f.read(varint(f)))
            yield value.tag, tuple(value.tensor.dims), value.tensor.tensor_type, value.tensor.tensor_content


def test_full_manifest_checkpoint_converts_to_full_shapes(tmp_path):
    with open(MANIFEST) as f:
        manifest = json.load(f)
    official = [(k, tuple(v["shape"])) for k, v in manifest["state_dict"].items()]
    assert len(official) == manifest["num_state_dict_entries"] == 220
    src = tmp_path / "t5-v1_1-xxl"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**manifest["t5_config"], "architectures": ["T5EncoderModel"]}))
    # the tied embedding: the same bytes under both names, as in the official state dict
    seed_of = {name: i for i, (name, _) in enumerate(official)}
    seed_of["encoder.embed_tokens.weight"] = seed_of["shared.weight"]
    half = len(official) // 2
    write_safetensors_lazily(src / "model-00001-of-00002.safetensors", official[:half], seed_of.get)
    write_safetensors_lazily(src / "model-00002-of-00002.safetensors", official[half:], seed_of.get)

    target = tmp_path / "model.ckpt"
    convert_t5([str(src)], str(target))

    expected = t5_encoder_param_shapes(T5Config.from_json(str(src / "config.json")))
    assert len(expected) == 219
    seen = {}
    for tag, dims, dtype, content in iter_ckpt(str(target)):
        assert dtype == "Float16"
        seen.setdefault(tag, [dims, 0])[1] += len(content)
        if tag in ("encoder.final_layer_norm.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"):
            assert content == _tensor_bytes(tag, dims, seed_of[tag])
    assert {k: tuple(v[0]) for k, v in seen.items()} == expected
    for name, (dims, nbytes) in seen.items():
        assert nbytes == int(np.prod(dims)) * 2, name
