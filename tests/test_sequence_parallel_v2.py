"""Sequence parallel for Open-Sora 2.0 (issue 17): ``msrun ... scripts/inference.py --config <2.0 config>
--use_parallel True --sp_size 2`` with two CPU workers.

One msrun launch (this file is the worker: ``python tests/test_sequence_parallel_v2.py worker OUT``) runs, on each
rank, in graph mode:

* the script on the tiny 2.0 config (T5, CLIP, MMDiT, Hunyuan VAE; 64 x 64, 9 frames, 48 image tokens a sample)
  with ``--sp_size 2``: the MMDiT is built split (recorded), rank 0 writes the latent and the video and rank 1
  nothing; the test then runs the same command in one process and compares the latents and frames;
* bad launches refused by the script in one line: ``--sp_size 4`` on 2 workers (does not divide the world) and
  ``--sp_size 1`` on 2 workers (sampling has no data parallel);
* the tiny MMDiT's forward and gradients split over the two ranks against one process, both checkpoint layouts
  (Open_Sora_v2, flux1-dev), and an image token count the ranks cannot split refused (the cases of
  ``tests/test_sequence_parallel.py``, run here in the default suite: 2.0 training is not built, so the
  gradient equality stands for it).

Bad combinations that need no msrun (sp_size without use_parallel, odd token counts, heads) are refused before
any model or output folder exists: the tests at the end.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")
TOL = 1e-5
# 3:2 at 64px is 64 x 64: 4 x 4 patches a latent frame, 3 latent frames -> 48 image tokens; T5 gives 16 text tokens
FLAGS = ["--config", CONFIG, "--prompt", "a red ball", "--aspect_ratio", "3:2", "--save_latent", "true",
         "--verbose", "0", "--mode", "graph"]
SP_FLAGS = ["--use_parallel", "True", "--sp_size", "2"]


def _run_script(argv: list[str]) -> tuple[int, str]:
    """``scripts/inference.py``'s main in this process: (exit status, what it printed to stderr)."""
    from tests.fixtures.scripts import load_script

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = load_script("inference").main(argv)
    return code, err.getvalue()


def _flags(out_dir: str, name: str) -> list[str]:
    return [*FLAGS, "--random_weights_dir", os.path.join(out_dir, "random"), "--save-dir", os.path.join(out_dir, name)]


def _record_built_models(result: dict) -> None:
    """Note each 2.0 model's ``sp_size`` as the pipeline builds it (so a run that did not split is seen)."""
    from opensora.inference.v2 import components

    get = components.Models.get

    def recording_get(self, kind):
        net = get(self, kind)
        result.setdefault("built_sp_size", {})[kind] = int(getattr(net, "sp_size", 1))
        return net

    components.Models.get = recording_get


def _worker(out_dir: str) -> None:
    import mindspore as ms

    from opensora.runtime import current_runtime, set_seed
    from tests.test_sequence_parallel import _mmdit_cases

    result: dict = {}
    for name, flags in (("bad_sp_world", ["--use_parallel", "True", "--sp_size", "4", "--model.num_heads", "4"]),
                        ("bad_no_split", ["--use_parallel", "True", "--sp_size", "1"])):
        result[name] = _run_script([*_flags(out_dir, name), "--random_weights_dir", os.path.join(out_dir, name + "_random"),
                                    *flags])
    _record_built_models(result)
    start = time.time()
    code, err = _run_script([*_flags(out_dir, "sp"), *SP_FLAGS])
    result["sample"] = {"code": code, "stderr": err[-2000:], "seconds": time.time() - start}
    rt = current_runtime()
    result["rank"] = rt.rank_id
    cases = result["mmdit"] = dict(rank=rt.rank_id, world=rt.device_num, sp_size=rt.sp_size)
    start = time.time()
    # the model cases in PyNative (the sampling above ran the split MMDiT in graph mode; compiling the cases' six
    # graphs would take a minute more); the same seed on both ranks, so that their models get the same weights
    ms.set_context(mode=ms.PYNATIVE_MODE)
    set_seed(0)
    _mmdit_cases(rt, cases, "pynative/")
    result["mmdit_seconds"] = time.time() - start
    with open(os.path.join(out_dir, f"rank{rt.rank_id}.json"), "w") as f:
        json.dump(result, f)


def _error_line(code_and_err) -> str:
    """The one ``error:`` line of a refused run (exit 2, no traceback)."""
    code, err = code_and_err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (code, err[-1500:])
    return errors[0]


def _frames(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path), np.float64)


@pytest.mark.msrun
def test_msrun_v2_sampling_and_mmdit_match_one_process(tmp_path):
    from tests.test_sequence_parallel import _check_ranks
    from tests.test_train_parallel import run_msrun

    start = time.time()
    run_msrun([os.path.abspath(__file__), "worker", str(tmp_path)], str(tmp_path / "logs"))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    msrun_s = time.time() - start
    for r in ranks:
        assert "must divide the number of ranks (2)" in _error_line(r["bad_sp_world"])
        assert "--sp_size must equal the number of workers" in _error_line(r["bad_no_split"])
        assert r["sample"]["code"] == 0, r["sample"]["stderr"]
        built = r["built_sp_size"]
        assert built["model"] == 2, built  # the video model ran split
        assert ("ae" in built) == (r["rank"] == 0), built  # rank 1 decodes nothing
    for name in ("bad_sp_world", "bad_no_split"):
        assert not (tmp_path / f"{name}_random").exists()  # refused before any model was made

    lines = _check_ranks([r["mmdit"] for r in ranks], "pynative:mmdit")  # the MMDiT forwards and gradients

    # the same command in one process
    single = _run_script(_flags(str(tmp_path), "single"))
    assert single[0] == 0, single[1][-2000:]
    video_dir = os.path.join("video_64px")
    files = [sorted(os.path.relpath(os.path.join(d, f), tmp_path / name) for d, _, fs in os.walk(tmp_path / name)
                    for f in fs) for name in ("sp", "single")]
    assert files[0] == files[1] and len(files[0]) == 3, files  # rank 0 wrote them all, rank 1 nothing extra
    latents = [np.load(tmp_path / name / video_dir / "latents" / "prompt_0000.npz")["latent"]
               for name in ("sp", "single")]
    z_diff = float(np.abs(latents[0] - latents[1]).max())
    assert latents[1].shape == (4, 3, 8, 8) and np.abs(latents[1]).max() > 0.1
    assert z_diff < TOL, z_diff
    frames = [_frames(tmp_path / name / video_dir / "prompt_0000.mp4") for name in ("sp", "single")]
    v_diff = float(np.abs(frames[0] - frames[1]).max())
    assert frames[0].shape == frames[1].shape and frames[0].std() > 1 and v_diff <= 1, v_diff

    print(f"\n2.0 sequence parallel (2 msrun CPU workers): sampling latent {z_diff:.1e}, video {v_diff:.0f}/255; "
          f"{', '.join(lines)}; worker sampling {ranks[0]['sample']['seconds']:.0f}s, MMDiT cases "
          f"{ranks[0]['mmdit_seconds']:.0f}s, msrun {msrun_s:.0f}s; {time.time() - start:.1f}s")


@pytest.mark.parametrize("flags, message", [
    (["--sp_size", "2"], "--sp_size 2 splits each video across 2 processes: start the script under msrun"),
    (SP_FLAGS + ["--num_frames", "9", "--aspect_ratio", "16:9"],
     "the video model's 45 image tokens (3 latent frames x 3 x 5 patches) do not split into 2 equal parts"),
    (SP_FLAGS + ["--model.num_heads", "3"], "model.num_heads (3) is not divisible by 2"),
    (SP_FLAGS + ["--t5.max_length", "15"], "the 15 text tokens (t5.max_length) do not split into 2 equal parts"),
    (SP_FLAGS + ["--use_t2i2v", "true", "--aspect_ratio", "16:9", "--num_frames", "5"],
     "the text-to-image model's 15 image tokens (3 x 5 patches) do not split into 2 equal parts"),
])
def test_bad_sequence_parallel_flags_refused_before_models(tmp_path, flags, message):
    line = _error_line(_run_script([*_flags(str(tmp_path), "out"), *flags]))
    assert message in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "random").exists()  # nothing built or written


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    sys.path.insert(0, ROOT)
    _worker(sys.argv[2])
