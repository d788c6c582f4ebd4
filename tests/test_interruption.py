"""Interruption: SIGINT and SIGKILL during sampling, caching and a checkpoint write, through the scripts'
real entry points in their own processes.

Each script is started by a small driver that patches one function so that the process signals itself at
an exact point (inside the sampler call of the 2nd sample; after a temporary file is complete but before
it is renamed), then runs the script as ``python scripts/X.py`` would (``run_main``: signal handlers, exit
status). Checked: SIGINT exits 130 (or 143, see assert_interrupted) with one line, finished outputs intact and no temporary left; SIGKILL
leaves at most a temporary of the project's naming, which the next run removes; a rerun of the same
command finishes the job, and the outputs equal those of an uninterrupted run.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = """
import os, signal, sys
sys.path.insert(0, {root!r})
SIG = {sig}
{patch}
import importlib
from opensora.utils.cli import run_main
sys.argv = [{module!r}, *{argv!r}]
run_main(importlib.import_module({module!r}).main)
"""

# signal on the Nth call of a function (owner "module" or "module:Class"), before it runs ("before") or after
# ("after": its file is written)
PATCH = """
import importlib as _importlib
_module, _, _attr = {owner!r}.partition(":")
_owner = _importlib.import_module(_module)
if _attr:
    _owner = getattr(_owner, _attr)
_real, _calls = getattr(_owner, {name!r}), []
def _patched(*args, **kwargs):
    _calls.append(1)
    if {when!r} == "before" and len(_calls) == {nth} and SIG:
        os.kill(os.getpid(), SIG)
    out = _real(*args, **kwargs)
    if {when!r} == "after" and len(_calls) == {nth} and SIG:
        os.kill(os.getpid(), SIG)
    return out
setattr(_owner, {name!r}, _patched)
"""


def run_script(module, argv, owner=None, name=None, nth=1, when="after", sig=None):
    patch = PATCH.format(owner=owner, name=name, nth=nth, when=when) if owner else ""
    code = DRIVER.format(root=ROOT, sig=f"signal.{sig}" if sig else "None", patch=patch, module=module,
                         argv=[str(a) for a in argv])
    env = dict(os.environ, GLOG_v="3")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def temporaries(folder):
    from opensora.utils.files import is_temporary

    return [f for f in files_under(folder) if is_temporary(f)]


def assert_interrupted(proc):
    """Ctrl-C: 130 "interrupted", or 143 "terminated" where MindSpore's own SIGINT handler (installed again by
    every graph run) turned it into SIGTERM; either way one line, no traceback, the same clean-up."""
    last = proc.stderr.strip().splitlines()[-1]
    assert (proc.returncode, last.split(" (")[0]) in ((130, "interrupted"), (143, "terminated")), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def assert_killed(proc):
    assert proc.returncode == -9, proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------------- sampling
@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_sampling(tmp_path):
    from opensora.datasets.video_io import read_video

    weights = tmp_path / "weights"
    argv = lambda out: ["--config", "configs/tiny/inference/sample_t2v.yaml", "--random_weights_dir", weights,
                        "--mode", "pynative", "--verbose", "0", "--image_size", "32", "32", "--num_frames", "5",
                        "--num_sampling_steps", "2", "--save_latent", "true", "--skip-existing", "true",
                        "--prompt", "a cat", "a dog", "a bird", "--save_dir", out]
    ref, out = tmp_path / "ref", tmp_path / "out"
    proc = run_script("scripts.inference", argv(ref))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = ["latents/sample_0000.npz", "latents/sample_0001.npz", "latents/sample_0002.npz",
                "sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    assert files_under(ref) == expected

    # Ctrl-C while the 2nd sample is being sampled: the 1st stays, nothing else
    proc = run_script("scripts.inference", argv(out), "opensora.inference.pipeline:InferencePipeline", "sample",
                      nth=2, when="before", sig="SIGINT")
    assert_interrupted(proc)
    assert files_under(out) == ["latents/sample_0000.npz", "sample_0000.mp4"]
    # SIGKILL just after the next video was written to its temporary file (the rerun skips sample 0)
    proc = run_script("scripts.inference", argv(out), "imageio", "mimwrite", nth=1, sig="SIGKILL")
    assert_killed(proc)
    assert len(temporaries(out)) == 1 and "sample_0001.mp4" not in files_under(out)
    # the same command again: the stale temporary goes, the job finishes
    proc = run_script("scripts.inference", argv(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files_under(out) == expected
    for name in expected:
        if name.endswith(".npz"):
            np.testing.assert_array_equal(np.load(out / name)["latent"], np.load(ref / name)["latent"])
        else:
            np.testing.assert_array_equal(read_video(str(out / name))[0], read_video(str(ref / name))[0])


# --------------------------------------------------------------------------------------------------- caching
@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_caching(tmp_path):
    from opensora.datasets.embedding_cache import read_text_embedding
    from opensora.inference.components import text_encoder_cfg

    t5_dir = text_encoder_cfg({"type": "t5", "from_pretrained": None, "random_init_from": "assets/tiny_t5"},
                              str(tmp_path / "weights"))["from_pretrained"]
    argv = lambda out: ["--t5_model_dir", t5_dir, "--model_max_length", "16", "--batch_size", "1", "--mode",
                        "pynative", "--prompt", "a cat", "a dog", "a bird", "a boat", "--output_dir", out]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_script("scripts.infer_t5", argv(ref)).returncode == 0
    expected = ["0000.npz", "0001.npz", "0002.npz", "0003.npz"]
    assert files_under(ref) == expected

    proc = run_script("scripts.infer_t5", argv(out), "numpy", "savez", nth=2, sig="SIGINT")  # 2nd file half done
    assert_interrupted(proc)
    assert files_under(out) == ["0000.npz"]
    proc = run_script("scripts.infer_t5", argv(out), "numpy", "savez", nth=1, sig="SIGKILL")
    assert_killed(proc)
    assert len(temporaries(out)) == 1 and files_under(out)[-1] == "0000.npz"
    proc = run_script("scripts.infer_t5", argv(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files_under(out) == expected
    for name in expected:
        a, b = read_text_embedding(str(out / name)), read_text_embedding(str(ref / name))
        assert a["text"] == b["text"]
        for key in ("text_emb", "mask", "tokens"):
            np.testing.assert_array_equal(a[key], b[key])


# --------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """Caches written directly (random arrays): 4 clips of 4 latent frames at 64x64, captions of 8 x 16."""
    from opensora.datasets.embedding_cache import write_text_embedding, write_video_latent

    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    rows = ["path,text"]
    for i in range(4):
        rows.append(f"clip{i}.mp4,caption {i}")
        write_text_embedding(str(root / "t5" / f"clip{i}.npz"), rng.standard_normal((8, 16)).astype(np.float32),
                             np.ones(8), np.arange(8), f"caption {i}")
        write_video_latent(str(root / "latents" / f"clip{i}.npz"), rng.standard_normal((4, 4, 8, 8)).astype(np.float32),
                           np.full((4, 4, 8, 8), 0.1, np.float32), 24.0, (64, 64), "VideoAutoencoderKL")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_checkpoint_write(train_data, tmp_path):
    import mindspore as ms

    argv = lambda out, *extra: ["--config", "configs/tiny/train_stdit3.yaml", "--csv_path", train_data / "data.csv",
                                "--text_embed_folder", train_data / "t5", "--video_embed_folder",
                                train_data / "latents", "--model.depth", "1", "--model.hidden_size", "32",
                                "--model.num_heads", "2", "--max_steps", "6", "--ckpt_every", "2", "--ckpt_max_keep",
                                "3", "--mode", "pynative", "--progress_bar", "false", "--num_workers", "1",
                                "--outputs", out, *extra]
    ref, out = tmp_path / "ref", tmp_path / "out"
    proc = run_script("scripts.train", argv(ref))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saver = "opensora.training.checkpoint_manager"
    # Ctrl-C while the step-4 checkpoint is being written (its model.ckpt done): step 2 stays the latest
    proc = run_script("scripts.train", argv(out), saver, "save_checkpoint", nth=4, sig="SIGINT")
    assert_interrupted(proc)
    assert os.listdir(out / "checkpoints") == ["step_00000002"]
    # resumed, then killed in the same place: a half checkpoint directory stays, never offered as a checkpoint
    proc = run_script("scripts.train", argv(out, "--resume"), saver, "save_checkpoint", nth=1, sig="SIGKILL")
    assert_killed(proc)
    assert sorted(os.listdir(out / "checkpoints")) == [".step_00000004.tmp", "step_00000002"]
    proc = run_script("scripts.train", argv(out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["step_00000002", "step_00000004", "step_00000006"]
    assert sorted(os.listdir(out / "checkpoints")) == sorted(os.listdir(ref / "checkpoints")) == names
    for name in ("model.ckpt", "ema.ckpt"):
        a = ms.load_checkpoint(str(out / "checkpoints" / names[-1] / name))
        b = ms.load_checkpoint(str(ref / "checkpoints" / names[-1] / name))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy(), err_msg=key)
    from opensora.training.step_log import read_log

    assert [r["loss"] for r in read_log(str(out / "train_log.csv"))] == \
           [r["loss"] for r in read_log(str(ref / "train_log.csv"))]


def test_sigterm_exits_143_and_cleans_up(tmp_path):
    """SIGTERM (what schedulers and msrun send) unwinds like Ctrl-C: temporaries removed, exit 143."""
    from opensora.inference.components import text_encoder_cfg

    t5_dir = text_encoder_cfg({"type": "t5", "from_pretrained": None, "random_init_from": "assets/tiny_t5"},
                              str(tmp_path / "weights"))["from_pretrained"]
    out = tmp_path / "out"
    proc = run_script("scripts.infer_t5", ["--t5_model_dir", t5_dir, "--model_max_length", "16", "--batch_size", "1",
                                           "--mode", "pynative", "--prompt", "a", "b", "--output_dir", out],
                      "numpy", "savez", nth=1, sig="SIGTERM")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM;")
    assert files_under(out) == []
