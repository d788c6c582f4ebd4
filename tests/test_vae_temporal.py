"""The causal temporal VAE and the Open-Sora 1.2 pipeline against a small PyTorch reference written here
from upstream's behaviour (opensora/v1.2: vae_temporal.py, vae.py), with diffusers' AutoencoderKL as
the spatial reference. Posterior means/stds and decoded outputs are compared (sampling aside)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms

from opensora.models.registry import VAES
from opensora.models.vae import OpenSoraVAE_V1_2, VAE_Temporal
from tests.fixtures.tiny_vae import TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS, make_opensora_vae_dir

TOL = 1e-4


# ---------------------------------------------------------------- PyTorch reference (upstream behaviour)
def ref_causal_conv(x, sd, name, stride_t=1):
    """Zero-pad (kt-1)+(1-stride) frames in front, spatial 'same' padding, then conv3d."""
    w = sd[f"{name}.conv.weight"]
    b = sd.get(f"{name}.conv.bias")
    kt, kh, kw = w.shape[2:]
    time_pad = (kt - 1) + (1 - stride_t)
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, time_pad, 0))
    return F.conv3d(x, w, b, stride=(stride_t, 1, 1))


def ref_resblock(x, sd, name, groups):
    h = F.silu(F.group_norm(x, groups, sd[f"{name}.norm1.weight"], sd[f"{name}.norm1.bias"], 1e-5))
    h = ref_causal_conv(h, sd, f"{name}.conv1")
    h = F.silu(F.group_norm(h, groups, sd[f"{name}.norm2.weight"], sd[f"{name}.norm2.bias"], 1e-5))
    h = ref_causal_conv(h, sd, f"{name}.conv2")
    if f"{name}.conv3.conv.weight" in sd:
        x = ref_causal_conv(x, sd, f"{name}.conv3")
    return x + h


def ref_temporal_encode(x, sd, kw):
    """-> (mean, std) of the temporal posterior; x (B, 4, T, H, W)."""
    g, levels, nres = kw["num_groups"], len(kw["channel_multipliers"]), kw["num_res_blocks"]
    factor = 2 ** sum(kw["temporal_downsample"])
    pad = (factor - x.shape[2] % factor) % factor
    x = F.pad(x, (0, 0, 0, 0, pad, 0))
    h = ref_causal_conv(x, sd, "encoder.conv_in")
    for i in range(levels):
        for j in range(nres):
            h = ref_resblock(h, sd, f"encoder.block_res_blocks.{i}.{j}", g)
        if i < levels - 1 and kw["temporal_downsample"][i]:
            h = ref_causal_conv(h, sd, f"encoder.conv_blocks.{i}", stride_t=2)
    for j in range(nres):
        h = ref_resblock(h, sd, f"encoder.res_blocks.{j}", g)
    h = F.silu(F.group_norm(h, g, sd["encoder.norm1.weight"], sd["encoder.norm1.bias"], 1e-5))
    moments = ref_causal_conv(ref_causal_conv(h, sd, "encoder.conv2"), sd, "quant_conv")
    mean, logvar = moments.chunk(2, dim=1)
    return mean, torch.exp(0.5 * logvar.clamp(-30, 20))


def ref_temporal_decode(z, sd, kw, num_frames):
    g, levels, nres = kw["num_groups"], len(kw["channel_multipliers"]), kw["num_res_blocks"]
    factor = 2 ** sum(kw["temporal_downsample"])
    h = ref_causal_conv(ref_causal_conv(z, sd, "post_quant_conv"), sd, "decoder.conv1")
    for j in range(nres):
        h = ref_resblock(h, sd, f"decoder.res_blocks.{j}", g)
    for i in reversed(range(levels)):
        for j in range(nres):
            h = ref_resblock(h, sd, f"decoder.block_res_blocks.{i}.{j}", g)
        if i > 0 and kw["temporal_downsample"][i - 1]:
            h = ref_causal_conv(h, sd, f"decoder.conv_blocks.{i - 1}")
            b, c, t, hh, ww = h.shape  # "B (C ts) T H W -> B C (T ts) H W"
            h = h.reshape(b, c // 2, 2, t, hh, ww).permute(0, 1, 3, 2, 4, 5).reshape(b, c // 2, t * 2, hh, ww)
    h = F.silu(F.group_norm(h, g, sd["decoder.norm1.weight"], sd["decoder.norm1.bias"], 1e-5))
    out = ref_causal_conv(h, sd, "decoder.conv_out")
    return out[:, :, (factor - num_frames % factor) % factor:]


class RefPipeline:
    """Upstream's VideoAutoencoderPipeline with posterior means instead of samples."""

    def __init__(self, state, micro_frame_size):
        from diffusers import AutoencoderKL

        cfg = {k: v for k, v in TINY_SD_CONFIG.items() if not k.startswith("_")}
        self.spatial = AutoencoderKL(**cfg).eval()
        prefix = "spatial_vae.module."
        self.spatial.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.temporal = {k[len("temporal_vae."):]: v for k, v in state.items() if k.startswith("temporal_vae.")}
        self.shift, self.scale = state["shift"], state["scale"]
        self.mfs = micro_frame_size
        self.mzs = (micro_frame_size + (4 - micro_frame_size % 4) % 4) // 4

    def encode_mean_std(self, x):
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x_z = self.spatial.encode(frames).latent_dist.mean * 0.18215
        x_z = x_z.reshape(b, t, 4, h // 8, w // 8).permute(0, 2, 1, 3, 4)
        pieces = [ref_temporal_encode(x_z[:, :, i:i + self.mfs], self.temporal, TINY_TEMPORAL_KWARGS)
                  for i in range(0, t, self.mfs)]
        mean = torch.cat([p[0] for p in pieces], 2)
        std = torch.cat([p[1] for p in pieces], 2)
        return (mean - self.shift) / self.scale, std / self.scale

    def decode(self, z, num_frames):
        z = z * self.scale + self.shift
        pieces = []
        for i in range(0, z.shape[2], self.mzs):
            pieces.append(ref_temporal_decode(z[:, :, i:i + self.mzs], self.temporal, TINY_TEMPORAL_KWARGS,
                                              min(self.mfs, num_frames)))
            num_frames -= self.mfs
        x_z = torch.cat(pieces, 2)
        b, c, t, h, w = x_z.shape
        out = self.spatial.decode(x_z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / 0.18215).sample
        return out.reshape(b, t, 3, h * 8, w * 8).permute(0, 2, 1, 3, 4)


# ---------------------------------------------------------------- tests
def _state(net):
    return {p.name: torch.tensor(p.asnumpy()) for p in net.get_parameters()}


@pytest.fixture(scope="module")
def temporal():
    ms.set_seed(0)
    net = VAE_Temporal(**TINY_TEMPORAL_KWARGS)
    rng = np.random.default_rng(3)
    for p in net.get_parameters():  # non-trivial norms
        if "norm" in p.name:
            p.set_data(ms.Tensor(p.asnumpy() + 0.1 * rng.standard_normal(p.shape).astype(np.float32)))
    return net


@pytest.mark.parametrize("frames", [9, 17, 51])
def test_temporal_vae_matches_reference(temporal, frames):
    sd = _state(temporal)
    x = np.random.default_rng(frames).standard_normal((1, 4, frames, 4, 6)).astype(np.float32)
    mean, std = temporal.encode(ms.Tensor(x))
    with torch.no_grad():
        ref_mean, ref_std = ref_temporal_encode(torch.tensor(x), sd, TINY_TEMPORAL_KWARGS)
    assert mean.shape == ref_mean.shape == (1, 4, (frames + 3) // 4, 4, 6)
    assert temporal.get_latent_size([frames, 4, 6]) == list(ref_mean.shape[2:])
    assert np.abs(mean.asnumpy() - ref_mean.numpy()).max() <= TOL
    assert np.abs(std.asnumpy() - ref_std.numpy()).max() <= TOL
    decoded = temporal.decode(mean, num_frames=frames)
    with torch.no_grad():
        ref_decoded = ref_temporal_decode(ref_mean, sd, TINY_TEMPORAL_KWARGS, frames)
    assert decoded.shape == ref_decoded.shape == (1, 4, frames, 4, 6)
    assert np.abs(decoded.asnumpy() - ref_decoded.numpy()).max() <= TOL
    print(f"temporal T={frames}: mean {np.abs(mean.asnumpy() - ref_mean.numpy()).max():.2e} "
          f"std {np.abs(std.asnumpy() - ref_std.numpy()).max():.2e} "
          f"decoded {np.abs(decoded.asnumpy() - ref_decoded.numpy()).max():.2e}")


def test_causal_padding_never_looks_ahead():
    """CausalConv3d: output frame t sees input frames <= t (stride 1), <= 2t+1 (stride 2, the frame pair
    it summarises). Note: upstream's GroupNorms pool statistics over all frames of a chunk, so the
    whole temporal encoder is causal only chunk by chunk (tested below), exactly as upstream."""
    from opensora.models.vae.vae_temporal import CausalConv3d

    rng = np.random.default_rng(5)
    for stride, kernel in [(1, (3, 3, 3)), (2, (3, 3, 3)), (1, (1, 1, 1))]:
        conv = CausalConv3d(2, 3, kernel, strides=(stride, 1, 1))
        x = rng.standard_normal((1, 2, 8, 5, 5)).astype(np.float32)
        base = conv(ms.Tensor(x)).asnumpy()
        assert base.shape[2] == 8 // stride
        for t in range(base.shape[2]):
            y = x.copy()
            y[:, :, stride * t + stride:] += 1.0  # change every frame after the ones output t covers
            out = conv(ms.Tensor(y)).asnumpy()
            assert np.array_equal(out[:, :, :t + 1], base[:, :, :t + 1])


def test_chunks_are_causal(v12_dir):
    """With micro_frame_size 17, the first chunk's latents ignore later frames, and its decoded
    frames ignore later latents."""
    vae = VAES.build({"type": "OpenSoraVAE_V1_2", "from_pretrained": v12_dir, "micro_batch_size": None})
    x = np.random.default_rng(7).uniform(-1, 1, (1, 3, 34, 8, 8)).astype(np.float32)
    y = x.copy()
    y[:, :, 17:] = -y[:, :, 17:]
    mx, _ = vae.encode_posterior(ms.Tensor(x))
    my, _ = vae.encode_posterior(ms.Tensor(y))
    assert np.array_equal(mx.asnumpy()[:, :, :5], my.asnumpy()[:, :, :5])
    assert np.abs(mx.asnumpy()[:, :, 5:] - my.asnumpy()[:, :, 5:]).max() > 1e-4
    first, _ = vae.encode_posterior(ms.Tensor(x[:, :, :17]))
    np.testing.assert_allclose(first.asnumpy(), mx.asnumpy()[:, :, :5], atol=1e-6)
    zb = mx.asnumpy().copy()
    zb[:, :, 5:] += 1.0
    da = vae.decode(mx, num_frames=34).asnumpy()
    db = vae.decode(ms.Tensor(zb), num_frames=34).asnumpy()
    assert np.array_equal(da[:, :, :17], db[:, :, :17]) and np.abs(da - db).max() > 1e-4


@pytest.fixture(scope="module")
def v12_dir(tmp_path_factory):
    return make_opensora_vae_dir(tmp_path_factory.mktemp("v12") / "OpenSora-VAE-v1.2", seed=4)


@pytest.mark.parametrize("micro_frame_size,frames,micro_batch_size", [(17, 17, 7), (17, 51, None), (8, 17, None)])
def test_pipeline_matches_reference(v12_dir, micro_frame_size, frames, micro_batch_size):
    vae = VAES.build({"type": "OpenSoraVAE_V1_2", "from_pretrained": v12_dir, "micro_frame_size": micro_frame_size,
                      "micro_batch_size": micro_batch_size})
    ref = RefPipeline(_state(vae), micro_frame_size)
    size = 16 if micro_batch_size is None and frames == 17 else 8
    x = np.random.default_rng(frames).uniform(-1, 1, (1, 3, frames, size, size)).astype(np.float32)
    mean, std = vae.encode_posterior(ms.Tensor(x))
    with torch.no_grad():
        ref_mean, ref_std = ref.encode_mean_std(torch.tensor(x))
    expected_t = {17: 5, 51: 15}[frames]
    assert mean.shape == ref_mean.shape == (1, 4, expected_t, size // 8, size // 8)
    assert vae.get_latent_size([frames, size, size]) == [expected_t, size // 8, size // 8]
    assert np.abs(mean.asnumpy() - ref_mean.numpy()).max() <= TOL
    assert np.abs(std.asnumpy() - ref_std.numpy()).max() <= TOL
    decoded = vae.decode(mean, num_frames=frames)
    with torch.no_grad():
        ref_decoded = ref.decode(ref_mean, frames)
    assert decoded.shape == ref_decoded.shape == (1, 3, frames, size, size)
    assert np.abs(decoded.asnumpy() - ref_decoded.numpy()).max() <= TOL
    print(f"pipeline mfs={micro_frame_size} T={frames}: mean {np.abs(mean.asnumpy() - ref_mean.numpy()).max():.2e} "
          f"std {np.abs(std.asnumpy() - ref_std.numpy()).max():.2e} "
          f"decoded {np.abs(decoded.asnumpy() - ref_decoded.numpy()).max():.2e}")
    if frames == 17 and micro_frame_size == 17:
        z = vae.encode(ms.Tensor(x)).asnumpy()  # a sample of the same posterior
        assert z.shape == mean.shape and np.all(np.abs(z - mean.asnumpy()) <= 6 * std.asnumpy() + 1e-5)


def test_pipeline_latent_sizes_and_registry():
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():
        vae = OpenSoraVAE_V1_2()  # full size, weights not allocated
    assert vae.out_channels == 4 and vae.patch_size == (4, 8, 8) and vae.micro_frame_size == 17
    for frames, latent in [(1, 1), (17, 5), (34, 10), (51, 15), (102, 30), (20, 6)]:
        assert vae.get_latent_size([frames, 720, 1280]) == [latent, 90, 160]
    assert vae.get_latent_size([None, 240, 424]) == [None, 30, 53]
    assert np.allclose(vae.scale.asnumpy().ravel(), [3.85, 2.32, 2.33, 3.06])
    assert {"VideoAutoencoderKL", "VAE_Temporal_SD", "OpenSoraVAE_V1_2", "VideoAutoencoderPipeline"} <= set(VAES.names())


def test_pipeline_dir_config_is_read(v12_dir):
    with open(f"{v12_dir}/config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["micro_frame_size"] == 17 and cfg["vae_temporal"]["filters"] == TINY_TEMPORAL_KWARGS["filters"]


def test_graph_mode_equals_pynative(temporal):
    x = ms.Tensor(np.random.default_rng(9).standard_normal((1, 4, 9, 4, 4)).astype(np.float32))
    mean_py, std_py = temporal.encode(x)
    dec_py = temporal.decode(mean_py, num_frames=9)
    ms.set_context(mode=ms.GRAPH_MODE)
    mean_g, std_g = temporal.encode(x)
    dec_g = temporal.decode(mean_py, num_frames=9)
    for a, b in ((mean_py, mean_g), (std_py, std_g), (dec_py, dec_g)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-5, rtol=1e-5)


def test_parts_load_from_the_pipeline_checkpoint(v12_dir):
    """The temporal VAE alone and the 2D VAE alone load their part of a 1.2 checkpoint by name."""
    from opensora.models.vae import VideoAutoencoderKL
    from opensora.models.vae.loading import load_vae_weights
    from opensora.utils.checkpoint import CheckpointError

    full = VAES.build({"type": "OpenSoraVAE_V1_2", "from_pretrained": v12_dir})
    part = VAE_Temporal(**TINY_TEMPORAL_KWARGS)
    load_vae_weights(part, v12_dir)
    np.testing.assert_array_equal(part.decoder.conv_out.conv.weight.asnumpy(),
                                  full.temporal_vae.decoder.conv_out.conv.weight.asnumpy())
    spatial = VideoAutoencoderKL(config=TINY_SD_CONFIG)
    load_vae_weights(spatial, v12_dir)
    np.testing.assert_array_equal(spatial.module.decoder.conv_out.weight.asnumpy(),
                                  full.spatial_vae.module.decoder.conv_out.weight.asnumpy())
    wrong = VAE_Temporal(**dict(TINY_TEMPORAL_KWARGS, filters=16))
    with pytest.raises(CheckpointError, match="different shape"):
        load_vae_weights(wrong, v12_dir)


def test_decode_is_chunked(v12_dir, monkeypatch):
    """Decoding 15 latent frames (51 pixel frames) never hands more than one 5-frame chunk to the
    temporal VAE nor more than micro_batch_size (16) frames to the image VAE (bounded activations)."""
    vae = VAES.build({"type": "OpenSoraVAE_V1_2", "from_pretrained": v12_dir, "micro_batch_size": 16})
    seen_t, seen_2d = [], []
    temporal_decode, image_decode = vae.temporal_vae.decode, vae.spatial_vae.module.decode

    def spy_temporal(z, num_frames=None):
        seen_t.append((z.shape[2], num_frames))
        return temporal_decode(z, num_frames=num_frames)

    def spy_image(z):
        seen_2d.append(z.shape[0])
        return image_decode(z)

    monkeypatch.setattr(vae.temporal_vae, "decode", spy_temporal)
    monkeypatch.setattr(vae.spatial_vae.module, "decode", spy_image)
    z = ms.Tensor(np.random.default_rng(0).standard_normal((1, 4, 15, 1, 1)).astype(np.float32))
    out = vae.decode(z, num_frames=51)
    assert out.shape == (1, 3, 51, 8, 8)
    assert seen_t == [(5, 17), (5, 17), (5, 17)]
    assert seen_2d == [16, 16, 16, 3]


def test_folder_converts_without_flags_and_matches_reference(v12_dir, tmp_path):
    """A Hugging Face-style folder of a non-official 1.2 VAE (its config.json names VAE_Temporal with other
    sizes and a small 2D VAE) converts with no flags: the converter reads the folder's config.json, as
    from_pretrained does. The converted weights, in a pipeline of the folder's architecture, decode like the
    reference built from the folder's safetensors."""
    from safetensors.torch import load_file

    from opensora.models.vae import VideoAutoencoderPipeline
    from opensora.models.vae.video_vae import v1_2_pipeline_kwargs
    from tools.convert_vae import main

    target = str(tmp_path / "vae.ckpt")
    assert main(["--source", v12_dir, "--target", target]) == 0
    vae = VideoAutoencoderPipeline(**v1_2_pipeline_kwargs(from_pretrained=v12_dir), from_pretrained=target)
    vae.set_train(False)
    ref = RefPipeline(load_file(f"{v12_dir}/model.safetensors"), 17)
    z = np.random.default_rng(5).standard_normal((1, 4, 5, 1, 1)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z), 17).numpy()
    got = vae.decode(ms.Tensor(z), num_frames=17).asnumpy()
    assert got.shape == expected.shape == (1, 3, 17, 8, 8)
    assert np.abs(got - expected).max() <= TOL
