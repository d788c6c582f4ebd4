"""scripts/infer_vae.py (latent cache) and scripts/infer_vae_decode.py on small generated videos,
plus opensora.datasets.video_io and transforms (against torch's interpolate)."""
import os
import sys

import numpy as np
import pytest
import torch

from opensora.datasets.embedding_cache import read_video_latent
from opensora.datasets.transforms import center_crop_video, get_transform, resize_crop_video
from opensora.datasets.video_io import VideoReadError, read_video, save_video
from tests.fixtures.tiny_vae import make_opensora_vae_dir, make_sd_vae_dir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import infer_vae  # noqa: E402
import infer_vae_decode  # noqa: E402


def _frames(t, h, w, seed=0):
    """Smooth moving gradients (compress well, survive H.264 roughly)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = [np.stack([(xx * 255 // max(w - 1, 1) + 9 * i) % 256, (yy * 255 // max(h - 1, 1)) % 256,
                     np.full_like(xx, (40 * i + seed * 50) % 256)], -1) for i in range(t)]
    return np.asarray(out, np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    os.makedirs(root / "part01")
    save_video(_frames(20, 24, 32), str(root / "part01" / "a.mp4"), fps=24)
    save_video(_frames(18, 32, 24, seed=1), str(root / "part01" / "b.mp4"), fps=12)
    (root / "part01" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    save_video(_frames(1, 20, 20), str(root / "img.png"))
    csv = root / "videos.csv"
    csv.write_text("path,text\npart01/a.mp4,a\npart01/b.mp4,b\npart01/broken.mp4,c\n", encoding="utf-8")
    return root


def test_read_video_and_errors(videos, tmp_path):
    frames, info = read_video(str(videos / "part01" / "a.mp4"))
    assert frames.shape == (20, 24, 32, 3) and frames.dtype == np.uint8 and abs(info["fps"] - 24) < 1e-3
    some, _ = read_video(str(videos / "part01" / "a.mp4"), num_frames=4, frame_interval=3)
    np.testing.assert_array_equal(some, frames[[0, 3, 6, 9]])
    via_imageio, _ = read_video(str(videos / "part01" / "a.mp4"), num_frames=4, frame_interval=3, backend="imageio")
    assert np.abs(via_imageio.astype(int) - some.astype(int)).max() <= 3  # same decoder, maybe other colour path
    assert np.abs(frames.astype(int) - _frames(20, 24, 32).astype(int)).mean() < 8  # H.264 is lossy
    image, _ = read_video(str(videos / "img.png"))
    assert image.shape == (1, 20, 20, 3)
    broken = str(videos / "part01" / "broken.mp4")
    with pytest.raises(VideoReadError) as err:
        read_video(broken)
    assert broken in str(err.value) and "cannot decode" in err.value.reason
    with pytest.raises(VideoReadError, match="needs 39 frames"):
        read_video(str(videos / "part01" / "a.mp4"), num_frames=20, frame_interval=2)
    with pytest.raises(VideoReadError, match="not found"):
        read_video(str(tmp_path / "missing.mp4"))


def test_save_video_single_frame_is_png_and_float_input(tmp_path):
    path = save_video(np.zeros((3, 1, 8, 8), np.float32), str(tmp_path / "one.mp4"))
    assert path.endswith("one.png") and os.path.isfile(path)
    video = np.linspace(-1, 1, 3 * 5 * 16 * 16, dtype=np.float32).reshape(3, 5, 16, 16)
    path = save_video(video, str(tmp_path / "five"), fps=8, layout="cthw")
    frames, info = read_video(path)
    assert frames.shape == (5, 16, 16, 3) and abs(info["fps"] - 8) < 1e-3


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (20, 12)])
def test_transforms_match_torch_interpolate(size):
    frames = np.random.default_rng(0).integers(0, 256, (2, 30, 44, 3), dtype=np.uint8)
    clip = torch.tensor(frames).permute(0, 3, 1, 2).float() / 255.0  # ToTensorVideo: (T, C, H, W)
    # resize_crop: cover the target, crop the middle of the long side (upstream's resize_crop_to_fill)
    th, tw = size
    rh, rw = th / 30, tw / 44
    if rh > rw:
        sh, sw = th, round(44 * rh)
        i, j = 0, int(round(sw - tw) / 2.0)
    else:
        sh, sw = round(30 * rw), tw
        i, j = int(round(sh - th) / 2.0), 0
    ref = torch.nn.functional.interpolate(clip, size=(sh, sw), mode="bilinear", align_corners=False)
    ref = (ref[..., i:i + th, j:j + tw] - 0.5) / 0.5
    np.testing.assert_allclose(resize_crop_video(frames, size), ref.permute(1, 0, 2, 3).numpy(), atol=1e-5)
    # center: short edge -> th by scale_factor, then center crop (UCFCenterCropVideo)
    if tw <= round(44 * th / 30):
        ref = torch.nn.functional.interpolate(clip, scale_factor=th / 30, mode="bilinear", align_corners=False)
        i, j = int(round((ref.shape[-2] - th) / 2.0)), int(round((ref.shape[-1] - tw) / 2.0))
        ref = (ref[..., i:i + th, j:j + tw] - 0.5) / 0.5
        np.testing.assert_allclose(center_crop_video(frames, size), ref.permute(1, 0, 2, 3).numpy(), atol=1e-5)
    else:
        with pytest.raises(ValueError, match="resize_crop"):
            center_crop_video(frames, size)
    assert get_transform("resize-crop") is resize_crop_video


def _run_infer(args, capsys):
    code = infer_vae.main(args)
    return code, capsys.readouterr().out


def test_infer_vae_sd_cache_and_rerun(videos, tmp_path, capsys):
    sd_dir = make_sd_vae_dir(tmp_path / "sd")
    out = tmp_path / "cache"
    args = ["--csv_path", str(videos / "videos.csv"), "--video_folder", str(videos), "--output_dir", str(out),
            "--vae_type", "sd", "--vae_checkpoint", sd_dir, "--image_size", "16", "16", "--num_frames", "4",
            "--frame_stride", "2", "--mode", "pynative", "--vae_micro_batch_size", "4"]
    code, text = _run_infer(args, capsys)
    assert code == 1  # the others are cached, but the run did not encode everything: it says which
    assert "2 encoded, 0 already cached, 1 failed" in text and "broken.mp4" in text
    cached = read_video_latent(str(out / "part01" / "a.npz"))
    assert cached["latent_mean"].shape == (4, 4, 2, 2) == cached["latent_std"].shape
    assert np.all(cached["latent_std"] > 0) and np.isfinite(cached["latent_mean"]).all()
    assert abs(cached["fps"] - 12.0) < 1e-3 and cached["ori_size"] == (24, 32)
    assert cached["vae_type"] == "VideoAutoencoderKL"
    b = read_video_latent(str(out / "part01" / "b.npz"))
    assert b["ori_size"] == (32, 24) and abs(b["fps"] - 6.0) < 1e-3
    assert not os.path.exists(out / "part01" / "broken.npz")
    stamp = os.path.getmtime(out / "part01" / "a.npz")
    code, text = _run_infer(args, capsys)
    assert code == 1 and "0 encoded, 2 already cached, 1 failed" in text
    assert os.path.getmtime(out / "part01" / "a.npz") == stamp
    assert not [f for f in os.listdir(out / "part01") if f.startswith(".")]


def test_infer_vae_opensora_and_decode(videos, tmp_path, capsys):
    v12 = make_opensora_vae_dir(tmp_path / "vae12")
    out = tmp_path / "cache12"
    code, text = _run_infer(["--csv_path", str(videos / "videos.csv"), "--output_dir", str(out),
                             "--vae_type", "opensora-1.2", "--vae_checkpoint", v12, "--image_size", "16",
                             "--num_frames", "17", "--transform", "resize_crop", "--mode", "pynative",
                             "--vae_micro_batch_size", "None"], capsys)
    assert "2 encoded, 0 already cached, 1 failed" in text
    cached = read_video_latent(str(out / "part01" / "a.npz"))
    assert cached["latent_mean"].shape == (4, 5, 2, 2) and cached["vae_type"] == "OpenSoraVAE_V1_2"
    assert np.all(cached["latent_std"] > 0)

    # decode: an inference-style npz (key "latent", (B, C, T, H, W)) and a cache file
    latents = tmp_path / "latents"
    latents.mkdir()
    np.savez(latents / "sample_0000.npz", latent=cached["latent_mean"][None], fps=np.float32(12))
    videos_out = tmp_path / "decoded"
    code = infer_vae_decode.main(["--latent_path", str(latents), "--output_dir", str(videos_out),
                                  "--vae_type", "opensora-1.2", "--vae_checkpoint", v12, "--num_frames", "17",
                                  "--mode", "pynative", "--vae_micro_batch_size", "None"])
    assert code == 0
    frames, info = read_video(str(videos_out / "sample_0000.mp4"))
    assert frames.shape == (17, 16, 16, 3) and abs(info["fps"] - 12) < 1e-3
    # without --num_frames: 5 latent frames -> 17 pixel frames
    code = infer_vae_decode.main(["--latent_path", str(out / "part01" / "b.npz"), "--output_dir", str(videos_out),
                                  "--vae_type", "opensora-1.2", "--vae_checkpoint", v12, "--mode", "pynative"])
    assert read_video(str(videos_out / "b.mp4"))[0].shape == (17, 16, 16, 3)


def test_infer_vae_bad_arguments_are_clear(videos, tmp_path, capsys):
    assert infer_vae.main(["--csv_path", str(videos / "videos.csv"), "--output_dir", str(tmp_path)]) == 2
    assert "--image_size" in capsys.readouterr().err
    assert infer_vae.main(["--csv_path", str(videos / "videos.csv"), "--output_dir", str(tmp_path), "--image_size",
                           "16", "--vae_type", "sdxl3d", "--vae_checkpoint", "x"]) == 2
    assert "vae_type" in capsys.readouterr().err
