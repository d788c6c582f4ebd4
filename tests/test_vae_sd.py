"""The SD image VAE against diffusers' AutoencoderKL (PyTorch) on a tiny random model saved in diffusers
layout, loaded directly, converted from safetensors, and converted from an LDM-style ``.ckpt``."""
import os

import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.models.registry import VAES
from opensora.models.vae import AutoencoderKL, VideoAutoencoderKL
from opensora.utils.checkpoint import CheckpointError
from tests.fixtures.tiny_vae import TINY_SD_CONFIG, make_sd_vae_dir
from tools.convert_vae import convert_vae

TOL = 1e-4


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_sd_vae_dir(tmp_path_factory.mktemp("sd") / "sd-vae-ft-ema", seed=1)


@pytest.fixture(scope="module")
def torch_vae(sd_dir):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    return TorchAutoencoderKL.from_pretrained(sd_dir).eval()


def _image(shape=(2, 3, 32, 48), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _reference(torch_vae, x, z):
    with torch.no_grad():
        dist = torch_vae.encode(torch.tensor(x)).latent_dist
        out = torch_vae.decode(torch.tensor(z)).sample
    return dist.mean.numpy(), dist.std.numpy(), out.numpy()


def _compare(vae: AutoencoderKL, torch_vae):
    x = _image()
    z = np.random.default_rng(1).standard_normal((2, 4, 4, 6)).astype(np.float32)
    ref_mean, ref_std, ref_out = _reference(torch_vae, x, z)
    mean, std = vae.encode(ms.Tensor(x))
    out = vae.decode(ms.Tensor(z))
    diffs = [np.abs(mean.asnumpy() - ref_mean).max(), np.abs(std.asnumpy() - ref_std).max(),
             np.abs(out.asnumpy() - ref_out).max()]
    assert mean.shape == ref_mean.shape and out.shape == ref_out.shape
    assert max(diffs) <= TOL, f"max abs diff mean/std/decoded: {diffs}"
    print(f"max abs diff vs diffusers: mean {diffs[0]:.2e} std {diffs[1]:.2e} decoded {diffs[2]:.2e}")
    return diffs


def _ldm_name(name: str, num_levels: int) -> str:
    """The test's own diffusers -> LDM table (inverse of the converter's, written independently)."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for part, ldm in attn.items():
        name = name.replace(f"mid_block.attentions.0.{part}.", f"mid.attn_1.{ldm}.")
    name = name.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
    name = name.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    parts = name.split(".")
    if parts[1] == "down_blocks":
        parts[1] = "down"
        parts[3:5] = ["block", parts[4]] if parts[3] == "resnets" else ["downsample"]
    elif parts[1] == "up_blocks":
        parts[1] = "up"
        parts[2] = str(num_levels - 1 - int(parts[2]))
        parts[3:5] = ["block", parts[4]] if parts[3] == "resnets" else ["upsample"]
    return ".".join(parts)


def test_direct_load_from_diffusers_dir(sd_dir, torch_vae):
    vae = VideoAutoencoderKL(from_pretrained=sd_dir)
    _compare(vae.module, torch_vae)


def test_convert_from_safetensors(sd_dir, torch_vae, tmp_path):
    target = tmp_path / "sd.ckpt"
    kind, ldm, _ = convert_vae(sd_dir, str(target))
    assert (kind, ldm) == ("sd", False)
    vae = VideoAutoencoderKL(from_pretrained=str(target), config=os.path.join(sd_dir, "config.json"))
    _compare(vae.module, torch_vae)


def test_convert_from_ldm_ckpt(sd_dir, torch_vae, tmp_path):
    state = torch_vae.state_dict()
    ldm = {}
    for name, value in state.items():
        new = _ldm_name(name, len(TINY_SD_CONFIG["block_out_channels"]))
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2 and "norm" not in new:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        ldm["first_stage_model." + new] = value.clone()
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 2)  # other parts of an SD ckpt
    ldm["cond_stage_model.transformer.x"] = torch.zeros(3)
    assert not any("down_blocks" in k or "to_q" in k for k in ldm)
    source = tmp_path / "sd-v1.ckpt"
    torch.save({"state_dict": ldm, "global_step": 1}, source)
    target = tmp_path / "sd-from-ldm.ckpt"
    kind, is_ldm, _ = convert_vae(str(source), str(target), config=os.path.join(sd_dir, "config.json"))
    assert (kind, is_ldm) == ("sd", True)
    vae = VideoAutoencoderKL(from_pretrained=str(target), config=os.path.join(sd_dir, "config.json"))
    _compare(vae.module, torch_vae)


def test_convert_rejects_mismatch_and_writes_nothing(sd_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(os.path.join(sd_dir, "diffusion_pytorch_model.safetensors"))
    state.pop("decoder.conv_out.bias")
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:, :, :2].contiguous()
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, str(bad / "diffusion_pytorch_model.safetensors"))
    target = tmp_path / "bad.ckpt"
    with pytest.raises(CheckpointError) as err:
        convert_vae(str(bad), str(target), config=os.path.join(sd_dir, "config.json"))
    assert "decoder.conv_out.bias" in str(err.value) and "encoder.conv_in.weight" in str(err.value)
    assert not target.exists() and os.listdir(tmp_path) == ["bad"]


def test_video_vae_frames_and_scaling(sd_dir, torch_vae):
    """VideoAutoencoderKL: frame by frame, micro-batched, x0.18215 (upstream 1.0/1.1)."""
    vae = VAES.build({"type": "VideoAutoencoderKL", "from_pretrained": sd_dir, "micro_batch_size": 3})
    assert vae.out_channels == 4 and vae.patch_size == (1, 8, 8)
    assert vae.get_latent_size([16, 256, 512]) == [16, 32, 64]
    video = np.random.default_rng(2).uniform(-1, 1, (1, 3, 5, 16, 24)).astype(np.float32)
    mean, std = vae.encode_posterior(ms.Tensor(video))
    frames = torch.tensor(video).permute(0, 2, 1, 3, 4).reshape(5, 3, 16, 24)
    with torch.no_grad():
        dist = torch_vae.encode(frames).latent_dist
        ref_mean = (dist.mean * 0.18215).reshape(1, 5, 4, 2, 3).permute(0, 2, 1, 3, 4).numpy()
        ref_std = (dist.std * 0.18215).reshape(1, 5, 4, 2, 3).permute(0, 2, 1, 3, 4).numpy()
        ref_dec = torch_vae.decode(torch.tensor(ref_mean).permute(0, 2, 1, 3, 4).reshape(5, 4, 2, 3) / 0.18215).sample
        ref_dec = ref_dec.reshape(1, 5, 3, 16, 24).permute(0, 2, 1, 3, 4).numpy()
    assert np.abs(mean.asnumpy() - ref_mean).max() <= TOL and np.abs(std.asnumpy() - ref_std).max() <= TOL
    decoded = vae.decode(ms.Tensor(ref_mean))
    assert np.abs(decoded.asnumpy() - ref_dec).max() <= TOL
    sample = vae.encode(ms.Tensor(video)).asnumpy()  # a posterior draw: within a few std of the mean
    assert sample.shape == ref_mean.shape and np.all(np.abs(sample - ref_mean) <= 6 * ref_std + 1e-6)


def test_graph_mode_equals_pynative(sd_dir):
    vae = VideoAutoencoderKL(from_pretrained=sd_dir).module
    x, z = ms.Tensor(_image((1, 3, 16, 24))), ms.Tensor(np.ones((1, 4, 2, 3), np.float32))
    py = [t.asnumpy() for t in vae.encode(x)] + [vae.decode(z).asnumpy()]
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = [t.asnumpy() for t in vae.encode(x)] + [vae.decode(z).asnumpy()]
    for a, b in zip(py, graph):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_unknown_hub_id_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="download the Hugging Face"):
        VideoAutoencoderKL(from_pretrained="stabilityai/sd-vae-ft-ema")
