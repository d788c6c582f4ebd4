"""Training data: csv checks, unreadable samples, buckets, samplers (seeded, sharded, resumable), masks, lr."""
from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import pytest

from opensora.config import ConfigError
from opensora.datasets.bucket import Bucket
from opensora.datasets.dataset import VideoTextDataset
from opensora.datasets.embedding_cache import cache_file_for, write_text_embedding, write_video_latent
from opensora.datasets.loader import BatchLoader
from opensora.datasets.sampler import BucketBatchSampler, FixedSizeBatchSampler
from opensora.training.lr_schedule import learning_rate
from opensora.training.mask_generator import MaskGenerator


def write_cached_dataset(root, n=6, header="path,text", latent_shape=(4, 3, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    rows = [header]
    for i in range(n):
        rel = f"part{i % 2}/vid{i}.mp4"
        rows.append(f"{rel},caption number {i}")
        write_text_embedding(cache_file_for(os.path.join(root, "t5"), rel), rng.standard_normal((8, 16)),
                             np.r_[np.ones(5), np.zeros(3)], np.arange(8), f"caption number {i}")
        mean = rng.standard_normal(latent_shape)
        write_video_latent(cache_file_for(os.path.join(root, "lat"), rel), mean, np.full(latent_shape, 0.1), 24,
                           (64, 64), "VideoAutoencoderKL")
    path = os.path.join(root, "data.csv")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return path


def test_csv_without_needed_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,description\na.mp4,x\n")
    with pytest.raises(ConfigError, match="path.*video"):
        VideoTextDataset(str(bad), video_folder=str(tmp_path), text_embed_folder=str(tmp_path))
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("path\na.mp4\n")
    with pytest.raises(ConfigError, match="text.*caption"):
        VideoTextDataset(str(no_text), video_folder=str(tmp_path), text_embed_folder=str(tmp_path))
    ok = tmp_path / "ok.csv"
    ok.write_text("video,caption\na.mp4,x\n")  # the MindSpore README's columns
    with pytest.raises(ConfigError, match="num_frames, height, width"):
        VideoTextDataset(str(ok), video_folder=str(tmp_path), text_embed_folder=str(tmp_path), need_size_columns=True)
    ds = VideoTextDataset(str(ok), video_folder=str(tmp_path), text_embed_folder=str(tmp_path))
    assert ds.paths == ["a.mp4"] and ds.texts == ["x"]


def test_bad_csv_stops_train_script_before_anything_starts(tmp_path, capsys):
    import subprocess
    import sys

    bad = tmp_path / "bad.csv"
    bad.write_text("file,description\na.mp4,x\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "scripts/train.py"), "--config",
                           os.path.join(root, "configs/tiny/train_stdit3.yaml"), "--csv_path", str(bad),
                           "--text_embed_folder", str(tmp_path), "--video_embed_folder", str(tmp_path),
                           "--outputs", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs a column 'path'" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_unreadable_samples_are_logged_counted_and_replaced(tmp_path, caplog):
    csv = write_cached_dataset(str(tmp_path), n=4)
    # one cache file corrupt, one missing
    with open(cache_file_for(str(tmp_path / "lat"), "part1/vid1.mp4"), "wb") as f:
        f.write(b"not an npz")
    os.remove(cache_file_for(str(tmp_path / "lat"), "part0/vid2.mp4"))
    ds = VideoTextDataset(csv, text_embed_folder=str(tmp_path / "t5"), video_embed_folder=str(tmp_path / "lat"))
    sampler = FixedSizeBatchSampler(len(ds), 2, 3, 64, 64, shuffle=False)
    loader = BatchLoader(ds, sampler, seed=0, num_workers=1)
    with caplog.at_level(logging.WARNING):
        batches = [b for _, b in loader.epoch(0)]
    assert len(batches) == 2 and all(b["x"].shape == (2, 4, 3, 8, 8) for b in batches)
    assert set(ds.failures) == {"part1/vid1.mp4", "part0/vid2.mp4"}
    text = caplog.text
    assert "part1/vid1.mp4" in text and "unreadable npz" in text
    assert "part0/vid2.mp4" in text and "not found" in text


def test_cached_latents_are_drawn_anew_each_time(tmp_path):
    csv = write_cached_dataset(str(tmp_path), n=2)
    ds = VideoTextDataset(csv, text_embed_folder=str(tmp_path / "t5"), video_embed_folder=str(tmp_path / "lat"))
    a = ds.load(0, 3, 64, 64, np.random.default_rng(1))["x"]
    b = ds.load(0, 3, 64, 64, np.random.default_rng(2))["x"]
    c = ds.load(0, 3, 64, 64, np.random.default_rng(1))["x"]
    np.testing.assert_array_equal(a, c)
    diff = a - b
    assert 0.05 < diff.std() < 0.3  # std 0.1 * sqrt(2)
    # a latent longer than needed is cut to the requested number of latent frames
    assert ds.load(0, 2, 64, 64, np.random.default_rng(1), latent_frames=2)["x"].shape == (4, 2, 8, 8)


# ---------------------------------------------------------------------------------------- buckets
BUCKETS = {"240p": {16: (1.0, 2), 8: (1.0, 3)}, "144p": {1: (1.0, 4), 16: (1.0, 2), 8: (0.5, 3)}}


def test_bucket_assignment_follows_upstream_rules():
    bucket = Bucket(BUCKETS)
    # 240p needs >= 0.8 * 102240 pixels; a 320x240 clip (76800) does not reach it -> 144p
    assert bucket.get_bucket_id(40, 240, 320, 1, 0)[0] == "144p"
    # 360x640 reaches 240p; 40 frames > 16 -> the 16-frame bucket; ratio 0.56 (9:16 is H:W)
    assert bucket.get_bucket_id(40, 360, 640, 1, 0) == ("240p", 16, "0.56")
    # 12 frames: not > 16, but > 8 -> 8; with frame_interval 2, 12 is not > 16 -> none at 240p... 144p 8 is p=.5
    assert bucket.get_bucket_id(12, 360, 640, 1, 0)[1] == 8
    assert bucket.get_bucket_id(12, 360, 640, 2, 0) is None or bucket.get_bucket_id(12, 360, 640, 2, 0)[0] == "144p"
    # images go to the image bucket of the first resolution that has one
    assert bucket.get_bucket_id(1, 360, 640, 1, 0) == ("144p", 1, "0.56")
    assert bucket.get_thw(("240p", 16, "0.56")) == (16, 240, 426)
    assert bucket.get_batch_size(("240p", 8, "1.00")) == 3
    with pytest.raises(ConfigError, match="unknown resolution"):
        Bucket({"241p": {1: (1.0, 1)}})


def _infos(n=60, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(360, 640), (640, 360), (480, 480), (240, 320), (720, 1280)]
    return [(int(rng.choice([1, 10, 20, 40])), *sizes[int(rng.integers(len(sizes)))]) for _ in range(n)]


def test_bucket_sampler_is_seeded_sharded_and_resumable():
    infos = _infos()
    make = lambda rank, seed=3: BucketBatchSampler(infos, BUCKETS, 1, world=2, rank=rank, seed=seed)  # noqa: E731
    r0, r1 = list(make(0).batches(0)), list(make(1).batches(0))
    assert r0 == list(make(0).batches(0))  # same seed, same batches
    assert r0 != list(make(0, seed=4).batches(0)) and r0 != list(make(0).batches(1))  # new seed / epoch: new order
    assert len(r0) == len(r1) == make(0).num_batches(0)
    bucket = Bucket(BUCKETS)
    for batch in r0 + r1:  # one bucket per batch, its batch size, every clip long and large enough
        t, h, w = batch[0][1:]
        assert all(s[1:] == (t, h, w) for s in batch)
        res = next(r for r in BUCKETS if (t, h, w) in [bucket.get_thw((r, tt, ar)) for tt in BUCKETS[r]
                                                       for ar in bucket.ar_criteria[r]])
        assert len(batch) == BUCKETS[res][t][1]
        for idx, *_ in batch:
            T, H, W = infos[idx]
            assert (T == 1) if t == 1 else T > t
            assert H * W >= 0.8 * h * w * 0.9
    # the two ranks see (almost) disjoint data: only padding repeats samples
    seen0, seen1 = Counter(i for b in r0 for i, *_ in b), Counter(i for b in r1 for i, *_ in b)
    overlap = sum((seen0 & seen1).values())
    assert overlap <= 3 * len(BUCKETS) * 2
    # resume: starting at batch k gives exactly the remaining batches
    assert list(make(1).batches(0, start=2)) == r1[2:]


def test_fixed_size_sampler_shards_and_pads():
    s = [FixedSizeBatchSampler(7, 2, 4, 32, 32, world=2, rank=r, seed=1) for r in range(2)]
    b0, b1 = list(s[0].batches(0)), list(s[1].batches(0))
    assert len(b0) == len(b1) == 2  # 7 padded to 8 = 2 steps x 2 ranks x 2
    ids = [i for b in b0 + b1 for i, *_ in b]
    assert set(ids) == set(range(7)) and len(ids) == 8
    assert list(s[0].batches(0, start=1)) == b0[1:]


# ---------------------------------------------------------------------------------------- masks, lr
def test_mask_generator_types():
    rng = np.random.default_rng(0)
    for name, check in {
        "image_head": lambda m: (~m).tolist() == [True] + [False] * 7,
        "image_tail": lambda m: (~m).tolist() == [False] * 7 + [True],
        "image_head_tail": lambda m: (~m).tolist() == [True] + [False] * 6 + [True],
        "quarter_head": lambda m: 1 <= (~m).sum() <= 2 and not m[0] and m[-1] and (~m[: (~m).sum()]).all(),
        "quarter_tail": lambda m: 1 <= (~m).sum() <= 2 and not m[-1] and m[0],
        "intepolate": lambda m: (~m).tolist() in ([True, False] * 4, [False, True] * 4),
        "random": lambda m: m.any(),
        "identity": lambda m: m.all(),
    }.items():
        gen = MaskGenerator({name: 1.0} if name != "identity" else {})
        for _ in range(20):
            assert check(gen.get_mask(8, rng)), name
    gen = MaskGenerator({"image_head": 0.3, "random": 0.2})
    picks = Counter(gen.pick(rng) for _ in range(4000))
    assert abs(picks["image_head"] / 4000 - 0.3) < 0.03 and abs(picks["identity"] / 4000 - 0.5) < 0.03
    assert MaskGenerator({"image_head": 1.0}).get_mask(1, rng).tolist() == [True]  # one frame: nothing masked
    with pytest.raises(ConfigError, match="unknown mask type"):
        MaskGenerator({"interpolate": 0.1})
    with pytest.raises(ConfigError, match="sum"):
        MaskGenerator({"random": 0.7, "image_head": 0.6})


def test_learning_rate_warmup_and_decay():
    assert learning_rate(0, 1e-3, warmup_steps=3) == pytest.approx(1e-3 / 4)
    assert learning_rate(2, 1e-3, warmup_steps=3) == pytest.approx(3e-3 / 4)
    assert learning_rate(3, 1e-3, warmup_steps=3) == 1e-3
    assert learning_rate(10 ** 6, 1e-3) == 1e-3
    assert learning_rate(100, 1e-3, 0, "cosine", 100) == pytest.approx(0.0)
    assert learning_rate(50, 1e-3, 0, "cosine", 100) == pytest.approx(5e-4)


def test_shipped_train_configs_parse_and_their_buckets_and_masks_build():
    import glob

    from opensora.training.options import train_schema
    from opensora.training.setup import TRAIN_SCHEDULER_DEFAULTS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(glob.glob(os.path.join(root, "configs/opensora*/train/*.yaml")))
    names = {os.path.relpath(p, root) for p in paths}
    for expected in ("configs/opensora/train/stdit_256x256x16.yaml", "configs/opensora/train/stdit_512x512x64_ms.yaml",
                     "configs/opensora-v1-1/train/stage3.yaml", "configs/opensora-v1-2/train/stage1.yaml"):
        assert expected in names
    for path in paths + glob.glob(os.path.join(root, "configs/tiny/train_*.yaml")):
        cfg = train_schema().parse(["--config", path])
        assert cfg.model["type"] in ("STDiT-XL/2", "STDiT2-XL/2", "STDiT3-XL/2"), path
        assert cfg.scheduler["type"] in TRAIN_SCHEDULER_DEFAULTS, path
        if cfg.bucket_config:
            assert len(Bucket(cfg.bucket_config)) > 0
        if cfg.mask_ratios:
            assert 0.0 <= MaskGenerator(cfg.mask_ratios).mask_ratios["identity"] < 1.0
    v12 = train_schema().parse(["--config", os.path.join(root, "configs/opensora-v1-2/train/stage1.yaml")])
    assert v12.bucket_config["144p"][102] == [[1.0, 0.33], 27] and v12.adam_eps == 1e-15
