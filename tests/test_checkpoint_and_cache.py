"""Checkpoint key/shape checks, atomic checkpoint writing, and the two npz caches' one writer/reader."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from opensora.datasets.embedding_cache import (
    CacheError, cache_file_for, read_text_embedding, read_video_latent, sample_latent, write_text_embedding,
    write_video_latent,
)
from opensora.models.layers.nn import LayerNorm, Linear
from opensora.utils.checkpoint import CheckpointError, compare_shapes, load_checkpoint, save_checkpoint


class Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = Linear(4, 3)
        self.norm = LayerNorm(3)

    def construct(self, x):
        return self.norm(self.proj(x))


def test_parameter_names_are_pytorch_names():
    assert sorted(p.name for p in Tiny().get_parameters()) == ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]


def test_compare_shapes_lists_every_problem():
    report = compare_shapes({"a": (2,), "b": (3, 4), "x": (1,)}, {"a": (2,), "b": (4, 3), "c": (5,)})
    assert report.missing == ["c"] and report.unexpected == ["x"] and report.mismatched == [("b", (3, 4), (4, 3))]
    text = report.format()
    assert "c" in text and "x" in text and "(3, 4) vs (4, 3)" in text


def test_round_trip_and_strict_refusal(tmp_path):
    src, dst = Tiny(), Tiny()
    path = str(tmp_path / "tiny.ckpt")
    save_checkpoint(src, path)
    load_checkpoint(dst, path)
    for a, b in zip(src.get_parameters(), dst.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())

    params = {p.name: p.asnumpy() for p in src.get_parameters()}
    del params["norm.bias"]
    params["proj.weight"] = np.zeros((4, 3), np.float32)
    params["extra.weight"] = np.zeros((1,), np.float32)
    bad = str(tmp_path / "bad.ckpt")
    save_checkpoint(params, bad)
    before = dst.proj.weight.asnumpy().copy()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, bad)
    message = str(err.value)
    assert "norm.bias" in message and "extra.weight" in message and "proj.weight: (4, 3) vs (3, 4)" in message
    np.testing.assert_array_equal(dst.proj.weight.asnumpy(), before)  # nothing loaded


def test_unsupported_or_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(Tiny(), str(tmp_path / "none.ckpt"))
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="tools/"):
        load_checkpoint(Tiny(), str(tmp_path / "w.pth"))


def test_text_cache_round_trip(tmp_path):
    path = cache_file_for(str(tmp_path), "part01/vid001.mp4")
    assert path.endswith(os.path.join("part01", "vid001.npz"))
    emb = np.random.randn(6, 8).astype(np.float32)
    write_text_embedding(path, emb, [1, 1, 1, 0, 0, 0], np.arange(6), "un café, s'il vous plaît")
    out = read_text_embedding(path)
    np.testing.assert_array_equal(out["text_emb"], emb)
    assert out["mask"].dtype == np.uint8 and out["mask"].tolist() == [1, 1, 1, 0, 0, 0]
    assert out["tokens"].dtype == np.int32 and out["text"] == "un café, s'il vous plaît"
    assert os.listdir(os.path.dirname(path)) == ["vid001.npz"]  # no temporary file left


def test_latent_cache_round_trip_and_sampling(tmp_path):
    path = str(tmp_path / "v.npz")
    mean, std = np.random.randn(4, 5, 6, 8).astype(np.float32), np.full((4, 5, 6, 8), 0.5, np.float32)
    write_video_latent(path, mean, std, fps=24, ori_size=(480, 854), vae_type="OpenSoraVAE_V1_2")
    out = read_video_latent(path)
    np.testing.assert_array_equal(out["latent_mean"], mean)
    assert out["fps"] == 24 and out["ori_size"] == (480, 854) and out["vae_type"] == "OpenSoraVAE_V1_2"
    draw = sample_latent(out, np.random.default_rng(0))
    noise = np.random.default_rng(0).standard_normal(mean.shape).astype(np.float32)
    np.testing.assert_allclose(draw, mean + 0.5 * noise, rtol=0, atol=1e-6)


def test_cache_shape_and_file_errors(tmp_path):
    with pytest.raises(CacheError, match="shapes"):
        write_text_embedding(str(tmp_path / "a.npz"), np.zeros((3, 2)), np.zeros(4), np.zeros(4), "x")
    with pytest.raises(CacheError, match="not found"):
        read_text_embedding(str(tmp_path / "missing.npz"))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CacheError, match="broken.npz"):
        read_video_latent(str(tmp_path / "broken.npz"))
    np.savez(tmp_path / "wrong.npz", latent_mean=np.zeros((1, 1, 1, 1)))
    with pytest.raises(CacheError, match="latent_std"):
        read_video_latent(str(tmp_path / "wrong.npz"))


def test_killed_writer_leaves_no_file(tmp_path):
    """A process killed in the middle of a cache write leaves neither a half file nor a final one."""
    target = tmp_path / "big.npz"
    code = (
        "import os, signal, numpy as np\n"
        "import opensora.datasets.embedding_cache as c\n"
        "real = np.savez\n"
        "def dying(path, **kw):\n"
        "    with open(path, 'wb') as f: f.write(b'PK partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.np.savez = dying\n"
        f"c.write_text_embedding({str(target)!r}, np.zeros((4, 2)), np.ones(4), np.arange(4), 't')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode != 0
    assert not target.exists()  # a rerun would not trust anything: the file is simply absent
