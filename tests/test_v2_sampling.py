"""Open-Sora 2.0 sampling pieces against the PyTorch reference (tests/reference/sampling_v2_torch.py, checked
bit for bit against upstream's own sampling.py / inference.py / aspect.py): sizes, frame counts, prompt
suffixes, conditioning masks, the schedule, packing, and both denoising loops (float32 and float16)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.config import ConfigError
from opensora.datasets import aspect_v2
from opensora.inference.v2 import conditions, prompts
from opensora.schedulers import flow_v2
from tests.fixtures.tiny_v2 import StandInFlowNet, stand_in_weights, torch_stand_in
from tests.reference import sampling_v2_torch as ref

COND_TYPES = list(conditions.COND_TYPES)


# ------------------------------------------------------------------ sizes and frames
@pytest.mark.parametrize("resolution", ["256px", "768px"])
@pytest.mark.parametrize("training", [False, True])
def test_size_tables_match_reference(resolution, training):
    expected = ref.get_aspect_ratios_dict(ref.get_num_pexels_from_name(resolution), training)
    assert aspect_v2.aspect_ratio_sizes(resolution, training) == expected
    for ratio, size in expected.items():
        assert aspect_v2.get_image_size(resolution, ratio, training) == size


def test_size_table_values_and_rounding():
    # the figures of upstream's README / the notes (inference table)
    assert aspect_v2.get_image_size("256px", "16:9") == (192, 336)
    assert aspect_v2.get_image_size("256px", "9:16") == (336, 192)
    assert aspect_v2.get_image_size("768px", "16:9") == (576, 1024)
    assert aspect_v2.get_image_size("768px", "2.39:1") == (496, 1184)
    assert len(aspect_v2.aspect_ratio_sizes("256px")) == 15  # 9 ratios + 6 new portrait twins (9:16, 16:9, 1:1 listed)
    assert [aspect_v2.round_up_16(v) for v in (1, 16, 17, 200)] == [16, 16, 32, 208]
    with pytest.raises(ConfigError, match="valid ratios"):
        aspect_v2.get_image_size("256px", "7:3")
    with pytest.raises(ConfigError, match="unknown resolution"):
        aspect_v2.get_image_size("big", "16:9")


def test_num_frames_rule():
    assert [aspect_v2.check_num_frames(n) for n in (1, 5, "33", 129)] == [1, 5, 33, 129]
    for bad, hint in ((16, "nearest: 13 or 17"), (130, "between 1 and 129"), (0, "between"), ("4s", "whole number")):
        with pytest.raises(ConfigError, match=hint):
            aspect_v2.check_num_frames(bad)


# ------------------------------------------------------------------ prompts
def test_prompt_suffixes_match_reference():
    texts = ["raining, sea", "", "a cat. 30 FPS.", "  a dog  ", "ends with period."]
    expected = ref.add_motion_score_to_text(ref.add_fps_info_to_text(texts, 24), "4")
    assert [prompts.add_suffixes(t, 24, "4") for t in texts] == expected
    assert expected[1] == ". 24 FPS. 4 motion score."
    assert prompts.add_suffixes("a", 16, None) == "a. 16 FPS."
    assert prompts.motion_score_text(4) == "4" and prompts.motion_score_text("4.5") == "4.5"
    with pytest.raises(ConfigError, match="online service"):
        prompts.motion_score_text("dynamic")
    with pytest.raises(ConfigError, match="must be a number"):
        prompts.motion_score_text("fast")


# ------------------------------------------------------------------ conditions
@pytest.mark.parametrize("cond_type", COND_TYPES)
def test_condition_masks_match_reference(cond_type):
    rng = np.random.default_rng(0)
    shape = (2, 4, 20, 4, 6)
    cond = conditions.cond_type_of(cond_type)
    # the latents the encoded reference clips give: one frame per image end, 9 or 17 for v2v
    frames = [cond.video_frames // 4 + 1] if cond.video_frames else [1] * (cond.head + cond.tail)
    refs = [[rng.standard_normal((4, f, 4, 6)).astype(np.float32) for f in frames] for _ in range(2)]
    masks, masked = conditions.inference_condition(cond, shape, refs)
    # upstream indexes ref[0] / ref[-1] of each sample's list the same way
    t_masks, t_masked = ref.prepare_inference_condition(torch.zeros(shape), cond_type,
                                                        [[torch.tensor(r) for r in rr] for rr in refs])
    np.testing.assert_array_equal(masks, t_masks.numpy())
    np.testing.assert_array_equal(masked, t_masked.numpy())
    assert masks[:, 0, :, 0, 0].sum(axis=1).tolist() == [cond.head + cond.tail] * 2


def test_reference_frames_per_cond_type():
    clip = np.arange(70, dtype=np.float32).reshape(1, 70, 1, 1) * np.ones((3, 1, 2, 2), np.float32)
    read = {"a.mp4": clip, "b.png": clip[:, :1] + 1000}.__getitem__
    first = lambda cs: [float(c[0, 0, 0, 0]) for c in cs]  # noqa: E731
    assert first(conditions.reference_clips(conditions.COND_TYPES["i2v_loop"], ["a.mp4", "b.png"], read)) == [0, 1000]
    assert first(conditions.reference_clips(conditions.COND_TYPES["i2v_tail"], ["b.png", "a.mp4"], read)) == [69]
    v = conditions.reference_clips(conditions.COND_TYPES["v2v_tail_easy"], ["a.mp4"], read)
    assert v[0].shape[1] == 65 and v[0][0, 0, 0, 0] == 5
    with pytest.raises(ConfigError, match="at least 33 frames"):
        conditions.reference_clips(conditions.COND_TYPES["v2v_head"], ["b.png"], read)
    with pytest.raises(ConfigError, match="unknown cond_type"):
        conditions.cond_type_of("v2v_head_half")  # named in upstream's config comment, unknown to its code


# ------------------------------------------------------------------ schedule, ramp, packing
def test_linspace_is_torch_bitwise():
    for start, end in ((1.0, 0.0), (3.0, 1.0), (1.0, 2.4375), (7.5, 1.0), (1.0, 2.1666667)):
        for n in (1, 2, 3, 5, 7, 8, 13, 17, 33, 51):
            np.testing.assert_array_equal(flow_v2.linspace32(start, end, n), torch.linspace(start, end, n).numpy())


def _same_times(port, expected):
    assert port == expected and port[-1] == 0.0  # bit for bit (the first may be 1 + 1 ulp, as upstream's)


def test_schedule_matches_reference_and_shift_figures():
    for n in (1, 12, 30, 50):
        for tokens, frames in ((252, 33), (2304, 33), (256, 1), (12, 3)):
            _same_times(flow_v2.get_schedule(n, tokens, frames), ref.get_schedule(n, tokens, frames))
        _same_times(flow_v2.get_schedule(n, 252, 33, flow_shift=3.0), ref.get_schedule(n, 252, 33, shift_alpha=3.0))
        _same_times(flow_v2.get_schedule(n, 252, 33, shift=False), ref.get_schedule(n, 252, 33, shift=False))
    # 256px / 768px 16:9 at 129 frames: tokens per latent frame after rounding to 16, 33 latent frames
    h, w = aspect_v2.get_image_size("256px", "16:9")
    assert (h // 16) * (w // 16) == 252
    assert flow_v2.shift_alpha(252, 33) == pytest.approx(5.733, abs=5e-4)
    assert flow_v2.shift_alpha(2304, 33) == pytest.approx(11.87, abs=5e-3)


def test_image_guidance_ramp_and_oscillation():
    n_times, frames = 13, 5
    for step in range(12):
        upper = torch.linspace(3.0, 1.0, n_times)[step]
        np.testing.assert_array_equal(flow_v2.image_guidance_ramp(3.0, step, n_times, frames),
                                      torch.linspace(1.0, upper, frames).numpy())
    assert [flow_v2.oscillation_scale(7.5, i) for i in (0, 9, 10, 11, 12, 13)] == [7.5, 7.5, 7.5, 1.0, 7.5, 1.0]


def test_pack_unpack_ids_match_reference():
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 8, 12)).astype(np.float32)
    packed = flow_v2.pack(x)
    np.testing.assert_array_equal(packed, ref.pack(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(flow_v2.unpack(packed, 3, 8, 12), x)
    np.testing.assert_array_equal(flow_v2.pack(ms.Tensor(x)).asnumpy(), packed)  # the same on tensors
    img_ids, txt_ids = ref.prepare_ids(torch.tensor(x), 7)
    np.testing.assert_array_equal(flow_v2.image_ids(2, 3, 8, 12), img_ids.numpy())
    np.testing.assert_array_equal(flow_v2.text_ids(2, 7), txt_ids.numpy())


# ------------------------------------------------------------------ the denoising loops
B, C, T, H, W = 2, 4, 5, 4, 6
STEPS = 12  # odd steps >= 10 oscillate


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(z=f(B, C, T, H, W), txt=f(B, 6, 12), y=f(B, 8), neg_txt=f(B, 6, 12), neg_y=f(B, 8),
                refs=[[f(C, 1, H, W), f(C, 1, H, W)] for _ in range(B)])


OSCI = dict(text_osci=True, image_osci=True, scale_temporal_osci=True)


def _port_sample(net, inp, cond_type, dtype=ms.float32, distilled=False, **osci):
    """The port's loop with the inputs the pipeline prepares (tripled text for the video sampler)."""
    z, t = inp["z"][:, :, :1] if distilled else inp["z"], 1 if distilled else T
    timesteps = flow_v2.get_schedule(STEPS, (H // 2) * (W // 2), t)
    cast = lambda a: ms.Tensor(a).astype(dtype)  # noqa: E731
    img = flow_v2.pack(cast(z))
    if distilled:
        text = dict(img_ids=cast(flow_v2.image_ids(B, 1, H, W)), txt=cast(inp["txt"]),
                    txt_ids=cast(flow_v2.text_ids(B, 6)), y_vec=cast(inp["y"]))
        x = flow_v2.DistilledDenoiser(4.0).denoise(net, img, timesteps, text, dtype=dtype)
        return flow_v2.unpack(x, 1, H, W).astype(ms.float32).asnumpy()
    cond = conditions.cond_type_of(cond_type)
    masks, masked = conditions.inference_condition(cond, z.shape, inp["refs"])
    txt3 = np.concatenate([inp["txt"], inp["neg_txt"], inp["neg_txt"]])
    y3 = np.concatenate([inp["y"], inp["neg_y"], inp["neg_y"]])
    text = dict(img_ids=cast(flow_v2.image_ids(3 * B, T, H, W)), txt=cast(txt3),
                txt_ids=cast(flow_v2.text_ids(3 * B, 6)), y_vec=cast(y3))
    denoiser = flow_v2.I2VDenoiser(7.5, 3.0, **{**OSCI, **osci})
    cond_in = flow_v2.pack(cast(np.concatenate([masks, masked], axis=1)))
    x = denoiser.denoise(net, img, timesteps, text, cond_in, T, image_ramp=cond.is_i2v, dtype=dtype)
    return flow_v2.unpack(x, T, H, W).astype(ms.float32).asnumpy()


def _reference_sample(net, inp, cond_type, dtype=torch.float32, distilled=False):
    z = torch.tensor(inp["z"][:, :, :1] if distilled else inp["z"]).to(dtype)
    refs = [[torch.tensor(r).to(dtype) for r in rr] for rr in inp["refs"]]
    with torch.no_grad():
        out = ref.sample(net, z, *(torch.tensor(inp[k]) for k in ("txt", "y", "neg_txt", "neg_y")),
                         cond_type=cond_type, references=refs, num_steps=STEPS, guidance=4.0 if distilled else 7.5,
                         distilled=distilled)
    out = out.float().numpy()
    if cond_type in ("i2v_head", "i2v_loop"):  # the reference restores the reference latent in item 0 only
        out[:, :, :1] = np.nan
    return out


def _assert_close(port, expected, atol, rtol=0.0):
    keep = ~np.isnan(expected)
    np.testing.assert_allclose(port[keep], expected[keep], atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def nets():
    w = stand_in_weights(C * 4, (C + 1) * 4, 12, 8)
    w_flux = stand_in_weights(C * 4, (C + 1) * 4, 12, 8, seed=1)
    return dict(video=(StandInFlowNet(w), torch_stand_in(w)),
                flux=(StandInFlowNet(w_flux, cond_embed=False, guidance_embed=True),
                      torch_stand_in(w_flux, cond_embed=False, guidance_embed=True)))


@pytest.mark.parametrize("cond_type", ["t2v", "i2v_head"])
def test_video_sampler_matches_reference_fp32(nets, cond_type):
    ms_net, torch_net = nets["video"]
    inp = _inputs()
    port = _port_sample(ms_net, inp, cond_type)
    expected = _reference_sample(torch_net, inp, cond_type)
    assert np.abs(expected[~np.isnan(expected)]).max() > 0.5  # a real signal, not a collapsed latent
    _assert_close(port, expected, atol=2e-4)


def test_video_sampler_guidance_terms_all_matter(nets):
    """Break each term of the guidance on purpose: the port must move away from the reference."""
    ms_net, torch_net = nets["video"]
    inp = _inputs(3)
    expected = _reference_sample(torch_net, inp, "i2v_head")
    for change in (dict(image_osci=False), dict(text_osci=False), dict(scale_temporal_osci=False)):
        port = _port_sample(ms_net, inp, "i2v_head", **change)
        keep = ~np.isnan(expected)
        assert np.abs(port[keep] - expected[keep]).max() > 5 * 2e-4, change  # beyond the parity tolerance


def test_distilled_sampler_matches_reference_fp32(nets):
    ms_net, torch_net = nets["flux"]
    inp = _inputs(1)
    _assert_close(_port_sample(ms_net, inp, "t2v", distilled=True),
                  _reference_sample(torch_net, inp, "t2v", distilled=True), atol=2e-4)


def test_video_sampler_half_precision_follows_reference(nets):
    """float16 (the CPU's stand-in for bf16): the latent stays in half precision and every elementwise
    step rounds, as upstream's tensors do; float32 would drift further from the half reference."""
    ms_net, torch_net = nets["video"]
    inp = _inputs(2)
    port16 = _port_sample(ms_net, inp, "i2v_head", dtype=ms.float16)
    ref16 = _reference_sample(torch_net, inp, "i2v_head", dtype=torch.float16)
    ref32 = _reference_sample(torch_net, inp, "i2v_head")
    keep = ~np.isnan(ref16)
    err16, err32 = np.abs(port16 - ref16)[keep].max(), np.abs(ref32 - ref16)[keep].max()
    assert err16 < 0.25 * err32, (err16, err32)


def test_video_reference_resize_matches_torch():
    """Video references are resized as upstream's ResizeCrop (F.interpolate bilinear, no antialias) and cropped
    at int(round(excess) / 2): both directions of the cover-resize, odd excesses."""
    from opensora.inference.references import resize_crop_video

    rng = np.random.default_rng(0)
    for (h, w), (th, tw) in (((50, 84), (48, 80)), ((37, 101), (32, 48)), ((90, 60), (48, 80)), ((20, 30), (48, 80))):
        video = rng.random((3, 2, h, w)).astype(np.float32)
        rh, rw = th / h, tw / w
        sh, sw = (th, round(w * rh)) if rh > rw else (round(h * rw), tw)
        resized = torch.nn.functional.interpolate(torch.tensor(video).permute(1, 0, 2, 3), size=(sh, sw),
                                                  mode="bilinear", align_corners=False).permute(1, 0, 2, 3).numpy()
        i, j = (0, int(round(sw - tw) / 2.0)) if rh > rw else (int(round(sh - th) / 2.0), 0)
        np.testing.assert_allclose(resize_crop_video(video, (th, tw)), resized[:, :, i:i + th, j:j + tw],
                                   rtol=0, atol=1e-5)  # float order of the two lerps; one 8-bit step is 4e-3
