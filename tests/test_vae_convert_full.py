"""The official Open-Sora 1.2 VAE's full key/shape list (/work/shared/manifests/vae_v1_2.json) against the
MindSpore model and tools/convert_vae.py."""
import json
import os

import numpy as np
import pytest

from opensora.utils.checkpoint import compare_shapes
from tools.convert_vae import detect_type, expected_model_shapes, make_renamer

MANIFEST = os.environ.get("VAE_V1_2_MANIFEST", "/work/shared/manifests/vae_v1_2.json")


def _manifest():
    with open(MANIFEST, encoding="utf-8") as f:
        data = json.load(f)
    return {k: tuple(v["shape"]) for k, v in data["state_dict"].items()}, data


def test_manifest_keys_and_shapes_match_the_model():
    """Every official key maps (by name) onto the full-size model with the same shape (no weights allocated)."""
    shapes, data = _manifest()
    assert len(shapes) == data["num_state_dict_entries"] == 517
    assert detect_type(shapes) == "opensora-1.2"
    rename, _ = make_renamer("opensora-1.2", ldm=False, num_levels=4)
    renamed = {}
    for name, shape in shapes.items():
        for new, _ in rename(name, np.empty((0,))):
            renamed[new] = shape
    report = compare_shapes(renamed, expected_model_shapes("opensora-1.2"))
    assert report.ok, report.format()
    model = expected_model_shapes("opensora-1.2")
    assert sum(int(np.prod(s)) for k, s in model.items() if k not in ("scale", "shift")) == \
        data["num_parameters_unique"]  # buffers (scale, shift) are not counted there


@pytest.mark.full
def test_convert_full_size_random_checkpoint(tmp_path):
    """A random fp16 model.safetensors with exactly the official keys and shapes converts, and the
    result loads into the full-size OpenSoraVAE_V1_2 with every key and shape checked."""
    import mindspore as ms
    from safetensors.numpy import save_file

    from opensora.models.vae import OpenSoraVAE_V1_2
    from tools.convert_vae import convert_vae

    shapes, _ = _manifest()
    rng = np.random.default_rng(0)
    source = tmp_path / "OpenSora-VAE-v1.2"
    source.mkdir()
    save_file({k: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16) for k, s in shapes.items()},
              str(source / "model.safetensors"))
    target = tmp_path / "vae_v1_2.ckpt"
    kind, _, report = convert_vae(str(source), str(target), dtype="fp16")
    assert kind == "opensora-1.2" and report.ok
    params = ms.load_checkpoint(str(target))
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    vae = OpenSoraVAE_V1_2(from_pretrained=str(target))  # strict key/shape check while loading
    assert vae.get_latent_size([51, 240, 426]) == [15, 30, 53]
