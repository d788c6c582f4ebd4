"""The Open-Sora 2.0 pipeline (scripts/inference.py) equals an independent composition in PyTorch.

Real tiny components with perturbed random weights, saved as upstream distributes them and loaded by the
pipeline from those files: the MMDiT in both layouts (tests/reference/mmdit_torch.py; the video model and
Flux-dev), the Hunyuan VAE (tests/reference/hunyuan_vae_torch.py), T5 and CLIP (``transformers``, called as
upstream's ``HFEmbedder``: tests/reference/text_embedder_torch.py) and the Flux AE (``diffusers``'
``AutoencoderKL``). The test composes the same run in PyTorch: the prompts with upstream's suffixes
(tests/reference/sampling_v2_torch.py), their embeddings, the reference image encoded with the same
posterior draw, upstream's sampling loop (12 steps, so the guidance oscillation acts) driving the
reference MMDiT, and the decode; it compares the sampled latents and the decoded frames the pipeline
hands to the writer (before their rounding to uint8). Inputs the pipeline defines rather than computes
are taken from it: the per-sample seeded noise (``seeded_noise``: upstream draws torch's RNG) and, for
text-to-image-to-video, the first frame as the pipeline wrote it to PNG (checked against the reference
decode first).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

from tests.fixtures.scripts import ROOT, load_script
from tests.fixtures.tiny_clip import make_tiny_clip_dir
from tests.fixtures.tiny_flux_ae import (TINY_FLUX_AE, diffusers_reference, ms_param_shapes, random_state_dict,
                                         reference_decode, write_safetensors)
from tests.fixtures.tiny_hunyuan_vae import TINY_HUNYUAN, tiny_hunyuan_vae
from tests.fixtures.tiny_mmdit import reference_model, save_reference, tiny_kwargs
from tests.fixtures.tiny_t5 import make_tiny_t5_dir
from tests.reference import sampling_v2_torch as ref
from tests.reference.text_embedder_torch import HFEmbedderReference

STEPS = 12
SEED = 42
FLUX_AE = {**TINY_FLUX_AE, "ch_mult": [1, 1, 1, 1]}  # 8x down: the first frame's latent is the video's size
LATENT_TOL, PIXEL_TOL = 2e-4, 2e-4


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2_composition")
    t5_dir = make_tiny_t5_dir(str(root / "t5"))
    clip_dir = make_tiny_clip_dir(str(root / "clip"))
    video_model = reference_model("v2", seed=0)
    flux = reference_model("flux_dev", seed=1)
    vae, vae_path = tiny_hunyuan_vae(root)
    ae_state = random_state_dict(ms_param_shapes(FLUX_AE), seed=2)
    with open(os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg.update(
        model={"type": "flux", **tiny_kwargs("v2"),
               "from_pretrained": save_reference(video_model, str(root / "video_model.safetensors"))},
        img_flux={"type": "flux", **tiny_kwargs("flux_dev"),
                  "from_pretrained": save_reference(flux, str(root / "flux_dev.safetensors"))},
        ae={"type": "hunyuan_vae", **TINY_HUNYUAN, "block_out_channels": list(TINY_HUNYUAN["block_out_channels"]),
            "from_pretrained": vae_path},
        img_flux_ae={"type": "autoencoder_2d", **FLUX_AE,
                     "from_pretrained": write_safetensors(ae_state, str(root / "flux_ae.safetensors"))},
        t5={"type": "text_embedder", "from_pretrained": t5_dir, "max_length": 16},
        clip={"type": "text_embedder", "from_pretrained": clip_dir, "is_clip": True, "max_length": 16},
    )
    config = str(root / "tiny_v2_files.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    image = str(root / "ref.png")  # the video size: its resize-crop is the identity
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(image)
    return dict(config=config, image=image, video_model=video_model, flux=flux, vae=vae,
                flux_ae=diffusers_reference(ae_state, FLUX_AE),
                t5=HFEmbedderReference(t5_dir, 16, is_clip=False), clip=HFEmbedderReference(clip_dir, 16, is_clip=True))


def run_pipeline(parts, out, monkeypatch, *args, mode="pynative"):
    """scripts/inference.py on the files' config -> {output path without extension: frames in [-1, 1]}."""
    from opensora.inference.v2 import pipeline

    written = {}

    def save_sample(video, path, fps):
        written[path] = np.array(video, np.float32)
        return original(video, path, fps)

    original = pipeline.save_sample
    monkeypatch.setattr(pipeline, "save_sample", save_sample)
    assert load_script("inference").main(["--config", parts["config"], "--mode", mode, "--verbose", "0",
                                          "--num-steps", str(STEPS), "--save-dir", out, "--save_latent", "true",
                                          *args]) == 0
    return written


def read_image(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None, :, None].copy())  # (1, 3, 1, H, W)


def noise(index: int, stream: int, shape) -> torch.Tensor:
    from opensora.inference.v2.pipeline import seeded_noise

    return torch.from_numpy(seeded_noise(SEED, index, 0, stream, shape))


def reference_video(parts, prompts, images, num_frames=9):
    """Upstream's api_fn for i2v_head (t2v without images) in PyTorch -> (latent, decoded frames)."""
    from opensora.inference.v2.pipeline import REFERENCE_STREAM, VIDEO_STREAM

    texts = ref.add_motion_score_to_text(ref.add_fps_info_to_text(prompts, 8), "4")
    negs = [""] * len(prompts)
    embed = [torch.from_numpy(parts[k](t)) for t in (texts, negs) for k in ("t5", "clip")]
    with torch.no_grad():
        refs = None
        if images:
            refs = [[parts["vae"].encode(read_image(img), noise=noise(j, REFERENCE_STREAM, (1, 4, 1, 6, 10)))[0]]
                    for j, img in enumerate(images)]
        z = torch.stack([noise(j, VIDEO_STREAM, (4, 3, 6, 10)) for j in range(len(prompts))])
        latent = ref.sample(parts["video_model"], z, *embed, cond_type="i2v_head" if images else "t2v",
                            references=refs, num_steps=STEPS, guidance=7.5, guidance_img=3.0, copy_back_all=True)
        frames = parts["vae"].decode(latent)[:, :, :num_frames]
    return latent.numpy(), frames.numpy()


def assert_close(actual, expected, atol, what):
    diff = float(np.abs(np.asarray(actual) - np.asarray(expected)).max())
    print(f"{what}: max |diff| {diff:.2e} (scale {float(np.abs(expected).max()):.2f})")
    assert actual.shape == expected.shape and diff <= atol, (what, diff)


def saved_latent(out, name):
    return np.load(os.path.join(out, "video_64px", "latents", name + ".npz"))["latent"]


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_i2v_head_batch_in_graph_mode_equals_reference_composition(parts, tmp_path, monkeypatch):
    """A batch of two prompts, graph mode; both samples get their reference latent back (upstream: item 0 only)."""
    out = str(tmp_path / "i2v")
    prompts = ["a cat walks", "the river at dawn"]
    written = run_pipeline(parts, out, monkeypatch, "--prompt", *prompts, "--batch_size", "2",
                           "--cond_type", "i2v_head", "--ref", parts["image"], mode="graph")
    latent, frames = reference_video(parts, prompts, [parts["image"]] * 2)
    for j in range(2):
        name = f"prompt_{j:04d}"
        assert_close(saved_latent(out, name), latent[j], LATENT_TOL, f"i2v_head latent {j}")
        assert_close(written[os.path.join(out, "video_64px", name)], frames[j], PIXEL_TOL, f"i2v_head frames {j}")
    assert np.abs(latent[0, :, 1:] - latent[1, :, 1:]).max() > 1e-2  # the prompts matter


def test_t2i2v_with_offload_from_csv_equals_reference_composition(parts, tmp_path, monkeypatch):
    """Text-to-image-to-video, stage by stage with every model released after its stage (offload), prompts and
    output names from a csv."""
    from opensora.inference.v2.pipeline import IMAGE_STREAM, T2I_GUIDANCE

    out = str(tmp_path / "t2i2v")
    csv = tmp_path / "prompts.csv"
    csv.write_text('text,name\n"a red kite",kite\n')
    written = run_pipeline(parts, out, monkeypatch, "--dataset.data-path", str(csv), "--use_t2i2v", "true",
                           "--offload", "true")
    # the first frame: Flux-dev's distilled loop on the prompt as given, then the Flux AE
    text = [torch.from_numpy(parts[k](["a red kite"])) for k in ("t5", "clip")]
    with torch.no_grad():  # (no negative prompt: the distilled loop has no CFG)
        image_latent = ref.sample(parts["flux"], noise(0, IMAGE_STREAM, (4, 1, 6, 10))[None], *text, *text,
                                  num_steps=STEPS, guidance=T2I_GUIDANCE, distilled=True)
    image = reference_decode(parts["flux_ae"], image_latent.numpy(), FLUX_AE)
    first = os.path.join(out, "video_64px", "generated_condition", "kite")
    assert_close(written[first], image[0], PIXEL_TOL, "t2i first frame")
    with open(first + ".txt") as f:
        assert f.read() == "a red kite"
    # the video from that frame as written (PNG), as upstream reads it back
    latent, frames = reference_video(parts, ["a red kite"], [first + ".png"])
    assert_close(saved_latent(out, "kite"), latent[0], LATENT_TOL, "t2i2v latent")
    assert_close(written[os.path.join(out, "video_64px", "kite")], frames[0], PIXEL_TOL, "t2i2v frames")
    with open(os.path.join(out, "video_64px", "kite.txt")) as f:
        assert f.read() == "a red kite. 8 FPS. 4 motion score."
