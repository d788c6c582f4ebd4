"""The training loop end to end on a tiny STDiT3 in graph mode: the loss falls (cached latents and raw
videos), and a run stopped and resumed from a checkpoint repeats the uninterrupted run exactly."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import mindspore as ms

from opensora.runtime import Runtime
from opensora.training.options import train_schema
from opensora.training.setup import build_trainer
from opensora.training.step_log import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs/tiny/train_stdit3.yaml")
# smaller than the tiny config's model: compile time dominates these tests
SMALL_MODEL = ["--model.depth", "1", "--model.hidden_size", "32", "--model.num_heads", "2"]


def trainer_for(argv):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = train_schema().parse(["--config", TINY_CONFIG, "--progress_bar", "false", *SMALL_MODEL, *argv])
    return build_trainer(cfg, Runtime("CPU", "graph", "O0"))


def _frames(t, h, w, seed):
    """Smooth moving colour gradients (survive H.264; a pattern a tiny model can learn)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.asarray([np.stack([(xx * 4 + 12 * i + 60 * seed) % 256, (yy * 4 + 30 * seed) % 256,
                                 np.full_like(xx, (20 * i + 70 * seed) % 256)], -1) for i in range(t)], np.uint8)


@pytest.fixture(scope="module")
def made_data(tmp_path_factory):
    """A few small mp4 files, a broken one and a missing one, captions, and both caches made by the
    caching scripts (scripts/infer_t5.py with a tiny T5, scripts/infer_vae.py with a tiny SD VAE)."""
    import sys

    from opensora.datasets.video_io import save_video
    from tests.fixtures.tiny_t5 import make_tiny_t5_dir
    from tests.fixtures.tiny_vae import make_sd_vae_dir

    root = tmp_path_factory.mktemp("train_data")
    rows = ["path,text"]
    for i in range(4):
        save_video(_frames(10, 64, 64, i), str(root / "videos" / "part0" / f"clip{i}.mp4"), fps=24)
        rows.append(f"part0/clip{i}.mp4,a colourful pattern number {i} moving")
    (root / "videos" / "part0" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    rows += ["part0/broken.mp4,a broken file", "part0/missing.mp4,a missing file"]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    t5_dir = make_tiny_t5_dir(str(root / "t5-tiny"))
    vae_dir = make_sd_vae_dir(root / "sd-vae-tiny")
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import infer_t5
    import infer_vae

    assert infer_t5.main(["--csv_path", str(root / "data.csv"), "--t5_model_dir", t5_dir, "--output_dir",
                          str(root / "t5_cache"), "--model_max_length", "8", "--mode", "pynative"]) in (0, None)
    infer_vae.main(["--csv_path", str(root / "data.csv"), "--video_folder", str(root / "videos"), "--output_dir",
                    str(root / "vae_cache"), "--vae_type", "sd", "--vae_checkpoint", vae_dir, "--image_size", "64",
                    "--mode", "pynative"])
    assert os.path.isfile(root / "vae_cache" / "part0" / "clip0.npz")
    data = ["--csv_path", str(root / "data.csv"), "--text_embed_folder", str(root / "t5_cache"),
            "--model.caption_channels", "32"]
    return {"cached": [*data, "--video_embed_folder", str(root / "vae_cache")],
            "raw": [*data, "--video_folder", str(root / "videos"), "--vae.from_pretrained", vae_dir]}


def _state(trainer):
    params = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    opt = {p.name: p.asnumpy() for p in trainer.optimizer.state_parameters()}
    ema = {p.name: p.asnumpy() for p in trainer.ema.ema}
    return params, opt, ema


def test_cached_latents_loss_falls_and_resume_is_exact(made_data, tmp_path):
    steps, stop = 30, 12
    common = [*made_data["cached"], "--max_steps", str(steps), "--ckpt_every", str(stop), "--lr", "3e-3",
              "--batch_size", "2", "--seed", "5", "--ckpt_max_keep", "5"]
    full = trainer_for([*common, "--outputs", str(tmp_path / "full")])
    losses = full.fit()
    assert len(losses) == steps and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    print(f"\ncached latents: loss first 5 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last < 0.7 * first, f"loss did not fall clearly: first 5 {first:.3f}, last 10 {last:.3f}: {losses}"
    ref_params, ref_opt, ref_ema = _state(full)

    # a run stopped at `stop`: its checkpoint, copied into a fresh output folder, resumed there
    resumed_dir = tmp_path / "resumed"
    os.makedirs(resumed_dir / "checkpoints")
    shutil.copytree(tmp_path / "full" / "checkpoints" / f"step_{stop:08d}",
                    resumed_dir / "checkpoints" / f"step_{stop:08d}")
    resumed = trainer_for([*common, "--outputs", str(resumed_dir)])
    assert resumed.resume("latest") and resumed.global_step == stop
    tail = resumed.fit()
    # float32 on the CPU, same host randomness and data order: exactly equal
    assert tail == losses[stop:]
    params, opt, ema = _state(resumed)
    for name in ref_params:
        np.testing.assert_array_equal(params[name], ref_params[name], err_msg=name)
    for name in ref_opt:
        np.testing.assert_array_equal(opt[name], ref_opt[name], err_msg=name)
    for name in ref_ema:
        np.testing.assert_array_equal(ema[name], ref_ema[name], err_msg=name)
    # the step log of the full run: one row per step with every column
    rows = read_log(str(tmp_path / "full" / "train_log.csv"))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert float(rows[0]["samples_per_s"]) > 0 and float(rows[0]["loss_scale"]) == 1.0
    np.testing.assert_allclose([float(r["loss"]) for r in rows], losses, rtol=1e-6)
    # the saved model loads into a fresh model with plain parameter names (what inference loads)
    from opensora.models.registry import MODELS
    from opensora.utils.checkpoint import load_checkpoint

    ckpt = os.path.join(full.ckpt.latest(), "model.ckpt")
    fresh = MODELS.build({"type": "STDiT3-XL/2", **_tiny_model_kwargs()})
    assert load_checkpoint(fresh, ckpt, strict=True).ok
    for p in fresh.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), ref_params[p.name])


def _tiny_model_kwargs():
    import yaml

    with open(TINY_CONFIG) as f:
        kw = dict(yaml.safe_load(f)["model"])
    kw.pop("type")
    kw.update(depth=1, hidden_size=32, num_heads=2, caption_channels=32)
    return kw


def test_raw_videos_loss_falls_and_bad_videos_are_replaced(made_data, tmp_path, caplog):
    trainer = trainer_for([*made_data["raw"], "--max_steps", "24", "--ckpt_every", "100", "--lr", "3e-3",
                           "--batch_size", "2", "--outputs", str(tmp_path / "raw")])
    losses = trainer.fit()
    first, last = np.mean(losses[:5]), np.mean(losses[-8:])
    print(f"\nraw videos: loss first 5 steps {first:.3f}, last 8 steps {last:.3f}")
    assert last < 0.7 * first, f"loss did not fall clearly: {losses}"
    failures = trainer.loader.dataset.failures
    assert set(failures) == {"part0/broken.mp4", "part0/missing.mp4"}, failures
    assert "part0/broken.mp4" in caplog.text and "cannot decode" in caplog.text
    assert "file not found" in caplog.text
