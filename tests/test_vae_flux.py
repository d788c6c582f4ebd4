"""The Flux image autoencoder (``autoencoder_2d``) against ``diffusers``' ``AutoencoderKL`` with Flux's settings (its
own LDM converter maps upstream's names; upstream's scale/shift applied as upstream does), loading by name with
the key/shape check, and the full-size key/shape manifest of ``flux1-dev-ae.safetensors``."""
import numpy as np
import pytest

import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from opensora.models.layers import forms
from opensora.models.registry import VAES
from opensora.models.vae.autoencoder_2d import AutoEncoder
from opensora.models.vae.geometry import FrameCountError, FramewiseGeometry, geometry_of
from opensora.utils.checkpoint import CheckpointError, model_shapes
from tests.fixtures.manifests import load_manifest
from tests.fixtures.tiny_flux_ae import (TINY_FLUX_AE, diffusers_reference, ms_param_shapes, random_state_dict,
                                        reference_decode, reference_encode, write_safetensors)

TOL = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random upstream-named weights of the tiny config, as a .safetensors file, and the diffusers reference."""
    state = random_state_dict(ms_param_shapes(TINY_FLUX_AE), seed=0)
    path = write_safetensors(state, str(tmp_path_factory.mktemp("flux") / "flux1-dev-ae.safetensors"))
    return path, state, diffusers_reference(state, TINY_FLUX_AE)


@pytest.mark.parametrize("cpu_forms", [True, False])
def test_encode_decode_match_diffusers(weights, cpu_forms):
    """Posterior mean (scaled, shifted) and decode of a (B, C, T, H, W) clip within 1e-4, PyNative and graph; the
    model built with the CPU backend's formulations (forms.py) and with the plain ones (graph mode only)."""
    path, _, reference = weights
    with forms.formulations(cpu=cpu_forms):
        vae = VAES.build({"type": "autoencoder_2d", "from_pretrained": path, **TINY_FLUX_AE, "sample": False})
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 2, 16, 24)).astype(np.float32)
    z = rng.standard_normal((1, 4, 2, 4, 6)).astype(np.float32)
    expected_z, expected_x = reference_encode(reference, x, TINY_FLUX_AE), reference_decode(reference, z, TINY_FLUX_AE)
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE) if cpu_forms else (ms.GRAPH_MODE,):
        ms.set_context(mode=mode)
        got_z = vae.encode(ms.Tensor(x)).asnumpy()
        got_x = vae.decode(ms.Tensor(z)).asnumpy()
        assert got_z.shape == (2, 4, 2, 4, 6) and got_x.shape == (1, 3, 2, 16, 24)
        assert np.abs(got_z - expected_z).max() <= TOL, (mode, np.abs(got_z - expected_z).max())
        assert np.abs(got_x - expected_x).max() <= TOL, (mode, np.abs(got_x - expected_x).max())


def test_sampling_encode_and_interface(weights):
    """encode samples by default (upstream's AutoEncoderConfig.sample): mean + std * noise, scaled like the mean;
    the VAE interface: out_channels and geometry, also from the config without building."""
    path, _, _ = weights
    vae = VAES.build({"type": "autoencoder_2d", "from_pretrained": path, **TINY_FLUX_AE})
    x = ms.Tensor(np.random.default_rng(2).uniform(-1, 1, (1, 3, 1, 16, 16)).astype(np.float32))
    mean, std = (t.asnumpy() for t in vae.encode_posterior(x))
    ms.set_seed(0)
    sample = vae.encode(x).asnumpy()
    noise = (sample - mean) / std
    assert 0.5 < noise.std() < 1.5 and np.abs(noise).max() > 1e-3
    assert vae.out_channels == 4 and vae.geometry == FramewiseGeometry(channels=4, spatial_factor=4)
    assert geometry_of({"type": "autoencoder_2d", "z_channels": 16}) == FramewiseGeometry(16, 8)
    assert vae.get_latent_size([3, 32, 48]) == [3, 8, 12]
    with pytest.raises(FrameCountError, match="one frame per latent frame"):
        vae.decode(ms.Tensor(np.zeros((1, 4, 2, 4, 4), np.float32)), num_frames=5)


def test_bad_checkpoint_refused_with_a_list(weights, tmp_path):
    _, state, _ = weights
    bad = dict(state)
    del bad["decoder.up.1.upsample.conv.bias"]
    bad["encoder.mid.attn_1.extra.weight"] = np.zeros(2, np.float32)
    bad["encoder.mid.attn_1.q.weight"] = bad["encoder.mid.attn_1.q.weight"][:, :, 0, 0]  # a Linear, not a 1x1 conv
    path = write_safetensors(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as err:
        VAES.build({"type": "autoencoder_2d", "from_pretrained": path, **TINY_FLUX_AE})
    message = str(err.value)
    for expected in ("missing", "decoder.up.1.upsample.conv.bias", "not used", "encoder.mid.attn_1.extra.weight",
                     "encoder.mid.attn_1.q.weight: (64, 64) vs (64, 64, 1, 1)"):
        assert expected in message, message
    with pytest.raises(FileNotFoundError, match="flux1-dev-ae.safetensors"):
        VAES.build({"type": "autoencoder_2d", "from_pretrained": str(tmp_path / "nowhere.safetensors")})
    with pytest.raises(ValueError, match="multiples of the 32"):
        AutoEncoder(ch=16, ch_mult=(1, 2))


def test_manifest_maps_onto_the_full_size_model():
    """Every key and shape of flux1-dev-ae.safetensors is a parameter of the default (upstream t2i2v config) model,
    built without allocating weights, and nothing else is."""
    manifest = load_manifest("flux_ae")
    official = {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}
    with no_init_parameters():
        vae = VAES.build({"type": "autoencoder_2d", **manifest["kwargs"]})
    shapes = model_shapes(vae)
    assert shapes == official
    assert sum(int(np.prod(s)) for s in shapes.values()) == manifest["num_parameters_unique"]
    assert (vae.scale_factor, vae.shift_factor, vae.out_channels) == (0.3611, 0.1159, 16)
