"""End to end on the tiny random-weight 1.2 config (PyNative, 2 steps, 32x32): t2v, t2i, i2v, loop
extension, the three-stage split equal to the one-process run, determinism, and bad input."""
import json
import os

import imageio
import numpy as np
import pytest

from tests.fixtures.scripts import ROOT, load_script

CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    weights = str(tmp_path_factory.mktemp("weights"))
    inference = load_script("inference")

    def call(*args, frames=17):
        return inference.main(["--config", CONFIG, "--mode", "pynative", "--image_size", "32", "32",
                               "--num_frames", str(frames), "--num_sampling_steps", "2", "--verbose", "0",
                               "--random_weights_dir", weights, *args])

    call.weights = weights
    return call


def frames_of(path):
    with imageio.get_reader(path) as reader:
        return reader.count_frames()


def test_t2v_deterministic_and_latent_saved(run, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run("--prompt", "a cat walks along the river.", "--save_dir", a, "--save_latent", "true") == 0
    assert run("--prompt", "a cat walks along the river.", "--save_dir", b, "--save_latent", "true") == 0
    assert frames_of(os.path.join(a, "sample_0000.mp4")) == 17
    la = np.load(os.path.join(a, "latents", "sample_0000.npz"))["latent"]
    lb = np.load(os.path.join(b, "latents", "sample_0000.npz"))["latent"]
    assert la.shape == (4, 5, 4, 4)
    np.testing.assert_array_equal(la, lb)


def test_three_stage_latents_equal_one_process(run, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat walks along the river.\na red car drives through a quiet street at night.\n")
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    assert run("--prompt_path", str(prompts), "--save_dir", one, "--save_latent", "true") == 0
    # stage 1: scored prompts -> T5 cache (infer_t5.py cleans them, as the one-process run does)
    assert run("--prompt_path", str(prompts), "--write_prompts", str(tmp_path / "scored.txt")) == 0
    from opensora.inference.components import text_encoder_cfg
    from opensora.inference.options import inference_schema

    cfg = inference_schema().parse(["--config", CONFIG])
    t5_dir = text_encoder_cfg(cfg.text_encoder, run.weights)["from_pretrained"]
    assert load_script("infer_t5").main(["--t5_model_dir", t5_dir, "--model_max_length", "16", "--mode", "pynative",
                                          "--prompt_path", str(tmp_path / "scored.txt"),
                                          "--output_dir", str(tmp_path / "t5")]) == 0
    # stage 2: no T5, no VAE
    assert run("--prompt_path", str(prompts), "--save_dir", three, "--text_embed_folder", str(tmp_path / "t5"),
               "--no_vae_decode", "true") == 0
    assert not os.path.exists(os.path.join(three, "sample_0000.mp4"))
    for name in ("sample_0000", "sample_0001"):
        l1 = np.load(os.path.join(one, "latents", name + ".npz"))["latent"]
        l3 = np.load(os.path.join(three, "latents", name + ".npz"))["latent"]
        np.testing.assert_allclose(l3, l1, rtol=0, atol=1e-5)
    # stage 3 (scripts/infer_vae_decode.py) with the config's own VAE section gives the one-process video's frames
    from opensora.inference.components import vae_cfg

    vae_section = json.dumps(vae_cfg(cfg.vae, run.weights))
    assert load_script("infer_vae_decode").main(["--latent_path", os.path.join(three, "latents"), "--output_dir",
                                                 three, "--vae", vae_section, "--mode", "pynative"]) == 0
    from opensora.datasets.video_io import read_video

    for name in ("sample_0000", "sample_0001"):
        v1 = read_video(os.path.join(one, name + ".mp4"))[0].astype(int)
        v3 = read_video(os.path.join(three, name + ".mp4"))[0].astype(int)
        assert v1.shape == v3.shape == (17, 32, 32, 3)
        assert np.abs(v1 - v3).max() <= 1  # latents equal to 1e-5; at most one 8-bit step after decoding


def test_t2i_png(run, tmp_path):
    out = str(tmp_path / "img")
    assert run("--prompt", "a cat", "--save_dir", out, frames=1) == 0
    from PIL import Image

    with Image.open(os.path.join(out, "sample_0000.png")) as img:
        assert img.size == (32, 32)


def test_i2v_and_loop_extension(run, tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(ref)
    out = str(tmp_path / "i2v")
    prompt = 'a cat{"reference_path": "%s", "mask_strategy": "0"}' % ref
    assert run("--prompt", prompt, "--save_dir", out, "--sample_name", "i2v") == 0
    assert frames_of(os.path.join(out, "i2v_0000.mp4")) == 17
    # two loops of 34 frames, 5 latent (17 pixel) condition frames: 34 + 17 = 51 frames
    assert run("--prompt", "|0|a cat|1|a dog", "--save_dir", out, "--sample_name", "loop", "--loop", "2",
               frames=34) == 0
    assert frames_of(os.path.join(out, "loop_0000.mp4")) == 51


@pytest.mark.parametrize("args, message", [
    (["--prompt", "x", "--resolution", "999p", "--aspect_ratio", "9:16", "--image_size", "null"], "unknown resolution"),
    (["--prompt", "x", "--mask_strategy", "0,a", "--reference_path", "r.png"], "mask strategy group"),
    (["--prompt", 'x{"reference_path": "a.png"'], "JSON"),
    (["--prompt", "x", "--reference_path", "/nonexistent/ref.png"], "reference file not found"),
    (["--prompt", "x", "--reference_path", "https://example.com/a.png"], "is a URL"),
    (["--prompt", "x", "--ckpt_path", "/nonexistent/model.ckpt"], "model weights not found"),
    (["--prompt_path", "null"], "no prompt given"),
])
def test_bad_input_is_a_clear_error(run, tmp_path, capsys, args, message):
    assert run("--save_dir", str(tmp_path), *args) == 2
    assert message in capsys.readouterr().err


def test_a_bad_later_prompt_fails_before_any_work(run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text('a cat\na dog{"mask_strategy": "0,0,0,0,1,7"}\n')
    out = tmp_path / "out"
    assert run("--prompt_path", str(prompts), "--save_dir", str(out), frames=1) == 2
    assert "edit_ratio" in capsys.readouterr().err
    assert not out.exists()  # checked before anything was loaded; the folder made for it is removed again


def test_negative_prompt_replaces_the_null_caption(run, tmp_path):
    """Guidance's unconditional branch: the learned null caption by default, the negative prompt's T5
    embedding and mask with --neg-prompt; and the negative prompt changes the sample."""
    from opensora.inference.options import inference_schema
    from opensora.inference.pipeline import InferencePipeline

    def pipeline(*extra):
        cfg = inference_schema().parse(["--config", CONFIG, "--prompt", "a cat", "--image_size", "32", "32",
                                        "--random_weights_dir", run.weights, "--save_dir", str(tmp_path / "p"),
                                        *extra])
        return InferencePipeline(cfg).load()

    plain = pipeline()
    cond = plain.text_condition(["a cat"], [0])
    null = plain.model.y_embedder.y_embedding.asnumpy()
    np.testing.assert_array_equal(cond.y_null.asnumpy()[0, 0], null)

    negative = pipeline("--neg-prompt", "blurry, low quality")
    cond = negative.text_condition(["a cat"], [0])
    expected = negative.text_encoder.encode([negative.process("blurry, low quality")])
    np.testing.assert_allclose(cond.y_null.asnumpy(), expected["y"].asnumpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cond.mask_null.asnumpy(), expected["mask"].asnumpy())
    assert np.abs(cond.y_null.asnumpy()[0, 0] - null).max() > 1e-3

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run("--prompt", "a cat", "--save_dir", a, "--save_latent", "true") == 0
    assert run("--prompt", "a cat", "--save_dir", b, "--save_latent", "true", "--neg-prompt", "blurry") == 0
    la = np.load(os.path.join(a, "latents", "sample_0000.npz"))["latent"]
    lb = np.load(os.path.join(b, "latents", "sample_0000.npz"))["latent"]
    assert np.abs(la - lb).max() > 1e-4


def test_blockwise_sampling_equals_whole_model(run, tmp_path):
    """--blockwise (one compiled block graph reused for every block, for full-size models on a CPU)
    samples the same latent as calling the whole model."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run("--prompt", "a cat", "--save_dir", a, "--save_latent", "true") == 0
    assert run("--prompt", "a cat", "--save_dir", b, "--save_latent", "true", "--blockwise", "true") == 0
    la = np.load(os.path.join(a, "latents", "sample_0000.npz"))["latent"]
    lb = np.load(os.path.join(b, "latents", "sample_0000.npz"))["latent"]
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-5)
