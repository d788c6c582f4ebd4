"""Open-Sora 1.0 stage 1 initialisation from a (converted) PixArt-alpha checkpoint, as upstream."""
from __future__ import annotations

import logging

import numpy as np

from opensora.utils.checkpoint import save_checkpoint
from tests.fixtures.tiny_stdit import build_tiny


def _pixart_like_checkpoint(model, path):
    """PixArt-XL-2's key layout for the tiny size: STDiT's spatial keys (a 2-D patch embedding), plus
    PixArt's fixed ``pos_embed`` and a key STDiT does not have; no temporal blocks."""
    rng = np.random.default_rng(0)
    params = {}
    for p in model.get_parameters():
        if "attn_temp" in p.name:
            continue
        shape = tuple(p.shape)
        if p.name == "x_embedder.proj.weight":
            shape = shape[:2] + shape[3:]  # (O, C, 1, p, p) -> PixArt's (O, C, p, p)
        params[p.name] = rng.standard_normal(shape).astype(np.float32)
    params["pos_embed"] = rng.standard_normal((1, 16, 64)).astype(np.float32)
    params["ar_embedder.mlp.0.weight"] = rng.standard_normal((4, 4)).astype(np.float32)
    save_checkpoint(params, path)
    return params


def test_pixart_init_loads_spatial_weights_and_zeroes_temporal_projection(tmp_path, caplog):
    from opensora.training.pixart_init import load_pixart

    model = build_tiny("STDiT", train=True)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    path = str(tmp_path / "PixArt-XL-2-512x512.ckpt")
    src = _pixart_like_checkpoint(model, path)
    with caplog.at_level(logging.INFO):
        report = load_pixart(model, path)
    after = {p.name: p.asnumpy() for p in model.get_parameters()}
    np.testing.assert_array_equal(after["x_embedder.proj.weight"][:, :, 0], src["x_embedder.proj.weight"])
    for name, value in src.items():
        if name in after and name != "x_embedder.proj.weight":
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    temporal = [n for n in after if "attn_temp" in n]
    assert temporal and sorted(report.missing) == sorted(temporal)
    assert report.unexpected == ["ar_embedder.mlp.0.weight"]  # pos_embed is dropped, not reported
    for name in temporal:
        if ".attn_temp.proj." in name:
            assert not after[name].any(), name  # upstream's initialize_temporal
        else:
            np.testing.assert_array_equal(after[name], before[name])  # the qkv keeps its initialisation
    assert "unused checkpoint keys" in caplog.text and "ar_embedder" in caplog.text


def test_pixart_init_refuses_other_shapes(tmp_path):
    """A y_embedding of another length (or any other shape) is an error, as in torch's load_state_dict."""
    import pytest

    from opensora.training.pixart_init import load_pixart
    from opensora.utils.checkpoint import CheckpointError

    model = build_tiny("STDiT", train=True)
    path = str(tmp_path / "PixArt-XL-2-512x512.ckpt")
    params = _pixart_like_checkpoint(model, str(tmp_path / "ok.ckpt"))
    length, channels = params["y_embedder.y_embedding"].shape
    params["y_embedder.y_embedding"] = np.zeros((length + 4, channels), np.float32)
    save_checkpoint(params, path)
    with pytest.raises(CheckpointError, match="y_embedding"):
        load_pixart(model, path)
