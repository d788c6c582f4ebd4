"""The causal temporal VAE and the Open-Sora 1.2 pipeline against a small PyTorch reference written here
from upstream's behaviour (opensora/v1.2: vae_temporal.py, vae.py), with diffusers' AutoencoderKL as
the spatial reference. Posterior means/stds and decoded outputs are compared (sampling aside)."""
import json

import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.models.registry import VAES
from opensora.models.vae import OpenSoraVAE_V1_2, VAE_Temporal
from tests.fixtures.tiny_vae import TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS, make_opensora_vae_dir
from tests.reference.vae_temporal_torch import VideoVAEPipelineTorch, ref_temporal_decode, ref_temporal_encode

TOL = 1e-4


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
    ref = VideoVAEPipelineTorch(_state(vae), TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS, micro_frame_size)
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
    ref = VideoVAEPipelineTorch(load_file(f"{v12_dir}/model.safetensors"), TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS,
                                17)
    z = np.random.default_rng(5).standard_normal((1, 4, 5, 1, 1)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z), 17).numpy()
    got = vae.decode(ms.Tensor(z), num_frames=17).asnumpy()
    assert got.shape == expected.shape == (1, 3, 17, 8, 8)
    assert np.abs(got - expected).max() <= TOL
