"""Open-Sora 2.0 through scripts/inference.py end to end on the tiny config configs/tiny/inference/sample_v2.yaml:
the real components (MMDiT, Hunyuan VAE, T5, CLIP) with random weights, PyNative but the t2v run in graph mode,
4 steps, 48 x 80, 9 frames. t2v, i2v_head, i2v_loop and v2v_head write real videos; batches equal one-by-one
runs; the three-stage split equals the one-process run; bad inputs stop with one line before any model is
built. (That the numbers are upstream's, and t2i2v with offload from a csv: test_v2_pipeline_composition.py.)"""
from __future__ import annotations

import os

import imageio
import numpy as np
import pytest

from tests.fixtures.scripts import ROOT, load_script

CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    rng = np.random.default_rng(0)
    from PIL import Image

    image = str(root / "ref.png")
    Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8)).save(image)
    video = str(root / "ref.mp4")
    imageio.mimwrite(video, [(rng.random((50, 84, 3)) * 255).astype(np.uint8) for _ in range(40)], fps=8,
                     macro_block_size=2)
    inference = load_script("inference")
    weights = str(root / "weights")

    def run(*args, mode="pynative"):
        return inference.main(["--config", CONFIG, "--mode", mode, "--verbose", "0", "--random_weights_dir", weights,
                               *args])

    return dict(run=run, root=root, image=image, video=video, weights=weights)


def _latent(save_dir, name="prompt_0000"):
    return np.load(os.path.join(save_dir, "video_64px", "latents", name + ".npz"))["latent"]


def _frames(path):
    with imageio.get_reader(path) as reader:
        return reader.count_frames()


def test_t2v_graph_mode(env, tmp_path):
    """(Graph mode's numbers against the reference composition: test_v2_pipeline_composition.py, i2v_head.)"""
    out = str(tmp_path / "t2v")
    assert env["run"]("--prompt", "a cat walks", "--save-dir", out, "--save_latent", "true", mode="graph") == 0
    video = os.path.join(out, "video_64px", "prompt_0000.mp4")
    assert _frames(video) == 9
    with imageio.get_reader(video) as reader:
        assert reader.get_data(0).shape == (48, 80, 3)
    with open(os.path.join(out, "video_64px", "prompt_0000.txt")) as f:
        assert f.read() == "a cat walks. 8 FPS. 4 motion score."
    assert _latent(out).shape == (4, 3, 6, 10)


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_batch_equals_one_by_one(env, tmp_path):
    """i2v_head over two prompts: batch 2 == batch 1 (each sample's noise and posterior draw are its own; that
    both samples get their reference latent back is checked in test_v2_pipeline_composition.py)."""
    args = ("--prompt", "a cat", "a dog runs", "--cond_type", "i2v_head", "--ref", env["image"],
            "--save_latent", "true")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert env["run"](*args, "--save-dir", one, "--batch_size", "1") == 0
    assert env["run"](*args, "--save-dir", two, "--batch_size", "2") == 0
    for name in ("prompt_0000", "prompt_0001"):
        np.testing.assert_allclose(_latent(two, name), _latent(one, name), rtol=0, atol=1e-5)
        assert _frames(os.path.join(two, "video_64px", name + ".mp4")) == 9
    assert np.abs(_latent(two, "prompt_0000")[:, 1] - _latent(two, "prompt_0001")[:, 1]).max() > 1e-3


def test_i2v_loop_and_v2v_head(env, tmp_path):
    loop = str(tmp_path / "loop")
    assert env["run"]("--prompt", "a loop", "--cond_type", "i2v_loop", "--ref", f"{env['image']};{env['video']}",
                      "--save-dir", loop) == 0
    assert _frames(os.path.join(loop, "video_64px", "prompt_0000.mp4")) == 9
    v2v = str(tmp_path / "v2v")  # 9 latent frames are conditioned: 37 frames (10 latent frames)
    assert env["run"]("--prompt", "extend it", "--cond_type", "v2v_head", "--ref", env["video"], "--num_frames", "37",
                      "--save-dir", v2v) == 0
    assert _frames(os.path.join(v2v, "video_64px", "prompt_0000.mp4")) == 37


def test_three_stage_equals_one_process(env, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat walks\na red car\n")
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    assert env["run"]("--prompt-path", str(prompts), "--save-dir", one, "--save_latent", "true") == 0
    assert env["run"]("--prompt-path", str(prompts), "--write_prompts", str(tmp_path / "scored.txt")) == 0
    assert (tmp_path / "scored.txt").read_text() == ("a cat walks. 8 FPS. 4 motion score.\n"
                                                     "a red car. 8 FPS. 4 motion score.\n")
    from opensora.inference.v2.components import resolved_section
    from opensora.inference.v2.options import parse_v2

    cfg = parse_v2(["--config", CONFIG])
    sections = [f"--{k}={__import__('json').dumps(resolved_section(k, cfg[k], env['weights'], 'float32'))}"
                for k in ("t5", "clip")]
    infer_t5 = load_script("infer_t5")
    for src, dst, empty in (("scored.txt", "t5", "false"), ("scored.neg.txt", "t5/neg", "true")):  # negatives: ""
        assert infer_t5.main([*sections, "--mode", "pynative", "--batch_size", "2", "--prompt_path",
                              str(tmp_path / src), "--output_dir", str(tmp_path / dst), "--empty_prompts", empty]) == 0
    assert env["run"]("--prompt-path", str(prompts), "--save-dir", three, "--text_embed_folder", str(tmp_path / "t5"),
                      "--no_vae_decode", "true") == 0
    assert not os.path.exists(os.path.join(three, "video_64px", "p_0000.mp4"))
    for name in ("p_0000", "p_0001"):
        np.testing.assert_allclose(_latent(three, name), _latent(one, name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (("--num_frames", "16"), "num_frames must be 4k+1"),
    (("--cond_type", "i2v_middle"), "unknown cond_type"),
    (("--cond_type", "i2v_head"), "needs a reference for every prompt"),
    (("--cond_type", "i2v_head", "--ref", "missing.png"), "reference file not found"),
    (("--motion-score", "dynamic"), "online service"),
    (("--cond_type", "v2v_head", "--ref", "REF_VIDEO"), "generate at least 33 frames"),
    (("--aspect_ratio", "7:3"), "valid ratios"),
    (("--sampling_option.sampler", "euler"), "unknown key 'sampler' in sampling_option"),
])
def test_bad_input_one_line_before_models(env, tmp_path, capsys, args, message):
    weights = str(tmp_path / "no-weights")
    args = tuple(env["video"] if a == "REF_VIDEO" else a for a in args)
    code = load_script("inference").main(["--config", CONFIG, "--prompt", "a cat", "--save-dir", str(tmp_path),
                                          "--random_weights_dir", weights, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "".join(err), err
    assert not os.path.exists(weights)  # nothing was built
