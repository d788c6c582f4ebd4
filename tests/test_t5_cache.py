"""scripts/infer_t5.py: the npz text-embedding cache (round trip, skipping, interrupted runs, inputs)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from opensora.datasets.embedding_cache import read_text_embedding
from opensora.models.text_encoder import text_preprocessing
from opensora.errors import RunError
from scripts.infer_t5 import SCHEMA, main, run
from tests.fixtures.tiny_t5 import convert_tiny_t5_dir, make_tiny_t5_dir, torch_reference

PROMPTS = ["A cat flies over <b>the river</b>.", "a", "the dog runs beside an empty road"]
L = 16


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    path = make_tiny_t5_dir(str(tmp_path_factory.mktemp("t5")), weights="bin", num_shards=2)
    convert_tiny_t5_dir(path)
    return path


def _run(t5_dir, out, *extra):
    return main(["--t5_model_dir", t5_dir, "--output_dir", str(out), "--model_max_length", str(L),
                 "--batch_size", "2", *extra])


def _mtimes(out):
    return {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)}


def test_prompts_round_trip_against_transformers(t5_dir, tmp_path):
    out = tmp_path / "out"
    assert _run(t5_dir, out, "--prompt", *PROMPTS) == 0
    assert sorted(os.listdir(out)) == ["0000.npz", "0001.npz", "0002.npz"]  # nothing else in the folder
    for i, prompt in enumerate(PROMPTS):
        cached = read_text_embedding(str(out / f"{i:04d}.npz"))
        assert cached["text"] == text_preprocessing(prompt)  # prompts are cleaned like upstream's inference
        assert cached["text_emb"].shape == (L, 32) and cached["mask"].shape == cached["tokens"].shape == (L,)
        assert cached["mask"].dtype == np.uint8 and cached["tokens"].dtype == np.int32
        reference = torch_reference(t5_dir, cached["tokens"][None], cached["mask"][None])[0]
        valid = cached["mask"].astype(bool)
        assert valid.sum() >= 1
        assert np.abs(cached["text_emb"] - reference)[valid].max() <= 1e-4


def test_rerun_skips_finished_files_and_overwrite_redoes_them(t5_dir, tmp_path):
    out = tmp_path / "out"
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a cat\na dog\n")
    assert _run(t5_dir, out, "--prompt_path", str(prompt_file), "--mode", "pynative") == 0
    for name in os.listdir(out):  # make any rewrite visible whatever the file system's time resolution
        os.utime(out / name, ns=(1_000_000_000, 1_000_000_000))
    first = _mtimes(out)
    assert sorted(first) == ["0000.npz", "0001.npz"]
    assert _run(t5_dir, out, "--prompt_path", str(prompt_file)) == 0
    assert _mtimes(out) == first
    assert _run(t5_dir, out, "--prompt_path", str(prompt_file), "--overwrite") == 0
    assert all(t != first[name] for name, t in _mtimes(out).items())


def test_interrupted_run_leaves_no_partial_file_and_rerun_completes(t5_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_savez = np.savez
    calls = []

    def savez_failing_on_second_file(path, **arrays):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:  # half a file, then the "crash"
                f.write(b"PK\x03\x04 partial")
            raise OSError("disk full (injected)")
        real_savez(path, **arrays)

    monkeypatch.setattr(np, "savez", savez_failing_on_second_file)
    with pytest.raises(RunError, match="injected"):  # a failed write names the file (cli: one line, exit 1)
        run(SCHEMA.parse(["--t5_model_dir", t5_dir, "--output_dir", str(out), "--model_max_length", str(L),
                          "--mode", "pynative", "--prompt", *PROMPTS]))
    monkeypatch.setattr(np, "savez", real_savez)
    assert sorted(os.listdir(out)) == ["0000.npz"]  # the finished file only; no partial or temporary file
    read_text_embedding(str(out / "0000.npz"))
    first = os.stat(out / "0000.npz").st_mtime_ns

    # what a SIGKILL during np.savez leaves: the hidden temporary file of atomic_savez, of a process that is gone
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / f".0001.npz.tmp{gone.pid}.npz").write_bytes(b"PK\x03\x04 half")
    assert _run(t5_dir, out, "--prompt", *PROMPTS) == 0
    assert sorted(os.listdir(out)) == ["0000.npz", "0001.npz", "0002.npz"]
    assert os.stat(out / "0000.npz").st_mtime_ns == first
    for name in os.listdir(out):
        read_text_embedding(str(out / name))


def test_csv_one_file_per_video_named_by_path(t5_dir, tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text('path,text,num_frames\nvideos/clip_a.mp4,"A <b>Cat</b> walks",51\n/data/raw/b.mkv,a dog,17\n')
    out = tmp_path / "cache"
    assert _run(t5_dir, out, "--csv_path", str(csv)) == 0
    a = read_text_embedding(str(out / "videos" / "clip_a.npz"))
    b = read_text_embedding(str(out / "data" / "raw" / "b.npz"))
    assert a["text"] == "A <b>Cat</b> walks" and b["text"] == "a dog"  # training captions are not cleaned
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption\nx.mp4,a bird\n")
    assert _run(t5_dir, out, "--csv_path", str(captions), "--clean_caption", "true") == 0
    assert read_text_embedding(str(out / "x.npz"))["text"] == "a bird"


def test_bad_arguments(t5_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert _run(t5_dir, out, "--prompt", "a", "--csv_path", "x.csv") == 2
    assert "exactly one input" in capsys.readouterr().err
    assert main(["--t5_model_dir", t5_dir, "--prompt", "a"]) == 2
    assert "--output_dir" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,description\na.mp4,x\n")
    assert _run(t5_dir, out, "--csv_path", str(bad_csv)) == 2
    assert "'text'" in capsys.readouterr().err
    assert _run(str(tmp_path / "missing"), out, "--prompt", "a") == 2
    assert "not found" in capsys.readouterr().err
    assert _run(t5_dir, out, "--prompt", "a", "  ") == 2  # an empty prompt (the README: no prompt is an error)
    assert "prompt(s) [1] are empty" in capsys.readouterr().err
    assert not os.path.exists(out) or not os.listdir(out)
