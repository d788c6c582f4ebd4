"""Open-Sora 2.0's Hunyuan causal 3D VAE against the PyTorch reference of tests/reference/hunyuan_vae_torch.py
(itself checked against upstream's own code, see the README): posterior mean/std and samples with injected
noise within 1e-4, decoded videos within 2e-4, untiled and with upstream's spatial and temporal tiling;
graph mode against PyNative; the official key/shape manifest; refused checkpoints; the latent geometry."""
import json

import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Tensor

from opensora.config import ConfigError
from opensora.models.registry import VAES
from opensora.models.vae.geometry import CausalGeometry, FrameCountError, geometry_of
from opensora.utils.checkpoint import CheckpointError, compare_shapes
from tests.fixtures.manifests import load_manifest
from tests.fixtures.tiny_hunyuan_vae import TINY_HUNYUAN, tiny_hunyuan_vae
from tests.reference.hunyuan_vae_torch import AutoencoderKLCausal3D as RefVAE
from tests.reference.hunyuan_vae_torch import posterior

ENCODE_TOL, DECODE_TOL = 1e-4, 2e-4
# tile sizes at which upstream's tiling keeps the size: a 32-pixel tile = 4 latents, step 3 latents / 24 pixels,
# blend 1 latent / 8 pixels; a 16-frame temporal tile = 4 latent frames, step 3 latents / 12 frames
SPATIAL_TILING = dict(use_spatial_tiling=True, sample_size=32)
TEMPORAL_TILING = dict(use_temporal_tiling=True, sample_tsize=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch reference, its hunyuan_vae.safetensors)."""
    return tiny_hunyuan_vae(tmp_path_factory.mktemp("hunyuan_vae"))


def build(path, **kwargs):
    return VAES.build({"type": "hunyuan_vae", "from_pretrained": path, **TINY_HUNYUAN, **kwargs})


def reference(ref, **kwargs):
    """The fixture's reference weights in a reference built with other (tiling) keywords."""
    other = RefVAE(**TINY_HUNYUAN, **kwargs).eval()
    other.load_state_dict(ref.state_dict())
    return other


def uniform(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ref_encode_posterior(ref, x):
    """Upstream's scaled posterior: mean = scale * (mu - shift), std = scale * sigma."""
    with torch.no_grad():
        mean, std = posterior(ref.moments(torch.from_numpy(x)))
    return (ref.scale_factor * (mean - ref.shift_factor)).numpy(), (ref.scale_factor * std).numpy()


def ref_decode(ref, z):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(z)).numpy()


def max_diff(a, b):
    a = a.asnumpy() if isinstance(a, Tensor) else a
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_untiled_encode_and_decode_match_the_reference(tiny):
    ref, path = tiny
    vae = build(path)
    x = uniform((1, 3, 9, 32, 32), 0)
    mean, std = vae.encode_posterior(Tensor(x))
    ref_mean, ref_std = ref_encode_posterior(ref, x)
    assert max_diff(mean, ref_mean) <= ENCODE_TOL
    assert max_diff(std, ref_std) <= ENCODE_TOL
    assert np.abs(ref_mean).max() > 0.3 and ref_std.min() > 0  # nothing trivially zero

    noise = normal(ref_mean.shape, 1)
    with torch.no_grad():
        ref_sample = ref.encode(torch.from_numpy(x), noise=torch.from_numpy(noise)).numpy()
    assert max_diff(vae.encode(Tensor(x), noise=noise), ref_sample) <= ENCODE_TOL
    assert max_diff(vae.encode(Tensor(x), sample_posterior=False), ref_mean) <= ENCODE_TOL

    z = normal((1, 4, 3, 4, 4), 2)
    out = vae.decode(Tensor(z))
    ref_out = ref_decode(ref, z)
    assert max_diff(out, ref_out) <= DECODE_TOL
    assert np.abs(ref_out).std() > 0.3

    # the geometry agrees with the shapes the model gives; decode(num_frames) is the pipeline's crop
    geometry = vae.geometry
    assert list(mean.shape[2:]) == geometry.latent_size([9, 32, 32]) and mean.shape[1] == geometry.channels
    assert out.shape[2] == geometry.pixel_frames(3) == 9 and list(out.shape[3:]) == [32, 32]
    cropped = vae.decode(Tensor(z), num_frames=6)
    assert cropped.shape[2] == 6 and max_diff(cropped, out.asnumpy()[:, :, :6]) == 0
    with pytest.raises(FrameCountError, match="decode to 9 frames"):
        vae.decode(Tensor(z), num_frames=10)


TILING_CASES = {
    # 2 x 3 tiles both ways, the last column 8 pixels / 1 latent wide: upstream's blending, in-place order, crops
    "spatial": (SPATIAL_TILING, (1, 3, 5, 48, 56), (1, 4, 2, 6, 7)),
    # 25 frames -> 7 latents from tiles of 17, 13 and 1 frames; 7 latents -> 25 frames from tiles of 5, 4 and 1
    # latents (17 frames would not do: the second tile's one kept latent gets blend weight 0)
    "temporal": (TEMPORAL_TILING, (1, 3, 25, 16, 16), (1, 4, 7, 2, 2)),
}


@pytest.mark.parametrize("case", sorted(TILING_CASES))
def test_tiling_matches_the_reference_and_differs_from_untiled(tiny, case):
    """Tiled encode and decode against the tiled reference; tiled and untiled results differ by O(1), far
    beyond the tolerances, so the tiling itself is compared."""
    tiling, video_shape, latent_shape = TILING_CASES[case]
    ref, path = tiny
    vae = build(path, **tiling)
    tiled_ref, untiled_ref = reference(ref, **tiling), reference(ref)
    x = uniform(video_shape, 3)
    mean, std = vae.encode_posterior(Tensor(x))
    ref_mean, ref_std = ref_encode_posterior(tiled_ref, x)
    assert ref_mean.shape == latent_shape
    assert max_diff(mean, ref_mean) <= ENCODE_TOL and max_diff(std, ref_std) <= ENCODE_TOL
    assert max_diff(mean, ref_encode_posterior(untiled_ref, x)[0]) > 100 * ENCODE_TOL

    z = normal(latent_shape, 4)
    out = vae.decode(Tensor(z))
    ref_out = ref_decode(tiled_ref, z)
    assert ref_out.shape == video_shape
    assert max_diff(out, ref_out) <= DECODE_TOL
    assert max_diff(out, ref_decode(untiled_ref, z)) > 100 * DECODE_TOL


def test_tile_sizes_upstream_gets_wrong_give_upstreams_sizes(tiny):
    """A 16-pixel tile (2 latents, step 1 latent / 12 pixels, crop 12 pixels / 2 latents): upstream decodes a
    3x3 latent to 32x32 pixels and encodes a 24x24 frame to 4x4 latents; so does the port (notes 6.3),
    with the same numbers."""
    ref, path = tiny
    vae = build(path, use_spatial_tiling=True, sample_size=16)
    tiled_ref = reference(ref, use_spatial_tiling=True, sample_size=16)
    z = normal((1, 4, 1, 3, 3), 7)
    ref_out = ref_decode(tiled_ref, z)
    assert ref_out.shape == (1, 3, 1, 32, 32)
    assert max_diff(vae.decode(Tensor(z)), ref_out) <= DECODE_TOL
    x = uniform((1, 3, 1, 24, 24), 8)
    ref_mean, _ = ref_encode_posterior(tiled_ref, x)
    assert ref_mean.shape == (1, 4, 1, 4, 4)
    assert max_diff(vae.encode_posterior(Tensor(x))[0], ref_mean) <= ENCODE_TOL


@pytest.mark.parametrize("cpu_forms", [True, False])
def test_each_formulation_matches_the_reference(tiny, cpu_forms):
    """The layers' two formulations (``layers/forms.py``): the CPU backend's with every convolution by kernel
    taps (as the full-size layers run here, strided ones included), and the native operators used elsewhere."""
    from opensora.models.layers import forms

    ref, path = tiny
    with forms.formulations(cpu=cpu_forms):
        vae = build(path)
    if cpu_forms:
        for cell in vae.cells_and_names():
            if hasattr(cell[1], "taps_min_macs"):
                cell[1].taps_min_macs = 0
    x, z = uniform((1, 3, 5, 16, 16), 11), normal((1, 4, 2, 2, 2), 12)
    assert max_diff(vae.encode_posterior(Tensor(x))[0], ref_encode_posterior(ref, x)[0]) <= ENCODE_TOL
    assert max_diff(vae.decode(Tensor(z)), ref_decode(ref, z)) <= DECODE_TOL


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_graph_mode_equals_pynative(tiny):
    _, path = tiny
    vae = build(path)
    x, z = Tensor(uniform((1, 3, 9, 32, 32), 9)), Tensor(normal((1, 4, 3, 4, 4), 10))
    eager = [vae.encode_posterior(x)[0].asnumpy(), vae.decode(z).asnumpy()]
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = [vae.encode_posterior(x)[0].asnumpy(), vae.decode(z).asnumpy()]
    assert max_diff(graph[0], eager[0]) <= 1e-5
    assert max_diff(graph[1], eager[1]) <= 1e-5


def test_full_size_manifest_maps_onto_the_model():
    """Every official key and shape (hunyuan_vae.safetensors, 248 tensors) onto the model built without
    allocating weights, in bf16 as upstream builds it."""
    from mindspore.nn.utils import no_init_parameters

    from opensora.models.hunyuan_vae import AutoencoderKLCausal3D
    from tools.convert_vae import detect_type

    manifest = load_manifest("hunyuan_vae_v2")
    shapes = {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}
    assert detect_type(shapes) == "hunyuan"
    with no_init_parameters():
        net = AutoencoderKLCausal3D(**manifest["kwargs"], dtype="bf16")
    params = {p.name: p for p in net.get_parameters()}
    report = compare_shapes(shapes, {k: tuple(p.shape) for k, p in params.items()})
    assert report.ok, report.format()
    assert len(params) == manifest["num_state_dict_entries"] == 248
    assert sum(int(np.prod(p.shape)) for p in params.values()) == manifest["num_parameters_unique"]
    assert {p.dtype for p in params.values()} == {ms.bfloat16}


def test_checkpoint_with_missing_extra_and_misshaped_keys_is_refused(tiny, tmp_path):
    from safetensors.numpy import save_file

    _, path = tiny
    params = {k: v.asnumpy() for k, v in ms.load_checkpoint(path, format="safetensors").items()}
    del params["decoder.conv_out.conv.bias"]
    params["encoder.mid_block.attentions.0.to_q.scale"] = np.ones(1, np.float32)
    params["quant_conv.weight"] = params["quant_conv.weight"][:4]
    bad = str(tmp_path / "bad.safetensors")
    save_file(params, bad)
    with pytest.raises(CheckpointError) as err:
        build(bad)
    message = str(err.value)
    for name in ("decoder.conv_out.conv.bias", "encoder.mid_block.attentions.0.to_q.scale", "quant_conv.weight"):
        assert name in message


def test_bf16_weights_stay_bf16_and_a_pth_converts_by_name(tiny, tmp_path):
    from tools.convert_vae import convert_vae

    ref, path = tiny
    _, bf16_path = tiny_hunyuan_vae(tmp_path, dtype=torch.bfloat16)
    vae = build(bf16_path, torch_dtype="bf16")
    assert vae.dtype == ms.bfloat16 and {p.dtype for p in vae.get_parameters()} == {ms.bfloat16}
    expected = ref.state_dict()["encoder.conv_in.conv.weight"].to(torch.bfloat16).float().numpy()
    assert np.array_equal(vae.encoder.conv_in.conv.weight.astype(ms.float32).asnumpy(), expected)

    pth = tmp_path / "hunyuan_vae.pth"
    torch.save(ref.state_dict(), str(pth))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"type": "hunyuan_vae", **TINY_HUNYUAN}))
    kind, _, report = convert_vae(str(pth), str(tmp_path / "hunyuan_vae.ckpt"), config=str(config))
    assert kind == "hunyuan" and report.ok
    converted = build(str(tmp_path / "hunyuan_vae.ckpt"))
    for name, value in ref.state_dict().items():
        assert np.array_equal(converted.parameters_dict()[name].asnumpy(), value.numpy()), name


def test_geometry_from_the_config_equals_the_built_vae():
    manifest = load_manifest("hunyuan_vae_v2")
    assert geometry_of({"type": "hunyuan_vae", **manifest["kwargs"]}) == \
        CausalGeometry(channels=16, spatial_factor=8, time_factor=4)
    tiny_cfg = {"type": "hunyuan_vae", **TINY_HUNYUAN}
    assert geometry_of(tiny_cfg) == VAES.build(tiny_cfg).geometry == CausalGeometry(4, 8, 4)
    assert geometry_of({"type": "hunyuan_vae", "block_out_channels": (8, 16), "latent_channels": 2}) == \
        CausalGeometry(2, 4, 2)  # fewer blocks resample less, as upstream's plan says
    with pytest.raises(ConfigError, match="latent_channels"):
        geometry_of({"type": "hunyuan_vae", "latent_channel": 4})
