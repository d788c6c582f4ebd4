"""Bad input through the scripts' real entry points: the exit status, a message naming the option or file, and
output folders holding exactly what they should (nothing half-written, nothing outside, nothing overwritten).

Most cases fail before any model is loaded, so one process runs them all through each script's ``main(argv)``
(what ``python scripts/X.py ...`` runs, minus the interpreter start); a few real subprocesses check the exit
status of the command lines themselves and the traceback-plus-bug-line of a program error. The classes are
those of issue 14: a run that did not do its job exits non-zero (1), outputs never overwrite, merge or escape
(2), checks come before the expensive part (3), user mistakes get one line and bugs a traceback (5).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml")
TINY_V1_0 = os.path.join(ROOT, "configs/tiny/inference/sample_v1_0.yaml")
TINY_V1_1 = os.path.join(ROOT, "configs/tiny/inference/sample_v1_1.yaml")
TRAIN = os.path.join(ROOT, "configs/tiny/train_stdit3.yaml")
TINY_V2 = os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")


def _main(name):
    import importlib

    return importlib.import_module(name).main


@pytest.fixture
def call(capsys):
    """``call("scripts.inference", *argv)`` -> (exit status, stderr) of the script's entry point."""

    def run(module, *argv):
        try:
            code = _main(module)([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.err

    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small input files of every kind (text, csv, npz, images, pickles); nothing here needs a model."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "blank.txt").write_text("\n  \n\n")
    (root / "gap.txt").write_text("a cat\n\na dog\n")
    (root / "latin1.txt").write_bytes("a caf\xe9\n".encode("latin-1"))
    (root / "dup.txt").write_text("a cat\na cat\n")
    (root / "punct.txt").write_text("a cat?\na cat!\n")
    (root / "bad.yaml").write_text("image_size: [64, 64\nnum_frames: 17\n")
    (root / "afile").write_text("not a folder")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "escape.csv").write_text("path,text\n../../escaped.mp4,a cat\n")
    (root / "twice.csv").write_text("path,text\nclip0.mp4,a cat\nclip0.mp4,a dog\n")
    (root / "exts.csv").write_text("path,text\nclip0.mp4,a cat\nclip0.avi,a dog\n")
    (root / "nocaption.csv").write_text("path,text\nclip0.mp4,\n")
    (root / "data.csv").write_text("path,text\nclip0.mp4,a cat\nclip1.mp4,a dog\n")
    (root / "missing.csv").write_text("path,text\ngone0.mp4,a cat\ngone1.mp4,a dog\n")
    videos = root / "videos"
    videos.mkdir()
    for name in ("clip0.mp4", "clip0.avi", "clip1.mp4"):
        (videos / name).write_bytes(b"video")  # only their existence is checked before a model loads
    for folder in ("t5", "latents"):  # caches: existence is what is checked before training builds
        (root / folder).mkdir()
        for name in ("clip0", "clip1"):
            (root / folder / f"{name}.npz").write_bytes(b"npz")
    np.savez(root / "nan.npz", latent=np.full((4, 5, 4, 4), np.nan, np.float32), num_frames=np.int32(17))
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    both = root / "both"
    both.mkdir()
    np.save(both / "a.npy", np.zeros((4, 5, 4, 4), np.float32))
    np.savez(both / "a.npz", latent=np.zeros((4, 5, 4, 4), np.float32))
    import torch

    torch.save({"w": torch.zeros(2), "code": _Evil()}, root / "evil.pth")
    (root / "corrupt.pth").write_bytes(b"not a pickle at all")
    torch.save({"w": torch.zeros(2)}, root / "plain.pth")
    (root / "exists.ckpt").write_bytes(b"keep me")
    return root


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def _inference(files, out, *extra):
    return ("scripts.inference", "--config", TINY, "--random_weights_dir", files / "weights", "--save_dir", out,
            "--mode", "pynative", "--verbose", "0", *extra)


# ---------------------------------------------------------------------------------------------- inference
INFERENCE_CASES = [
    # (id, argv after the common ones, message)           -- class 1: numbers that cannot do the job
    ("loop0", ["--prompt", "a", "--loop", "0"], "loop"),
    ("batch-1", ["--prompt", "a", "--batch-size", "-1"], "batch_size"),
    ("num-sample0", ["--prompt", "a", "--num-sample", "0"], "num_sample"),
    ("cfg-nan", ["--prompt", "a", "--cfg-scale", "nan"], "cfg_scale"),
    ("scheduler-cfg-inf", ["--prompt", "a", "--scheduler.cfg_scale", "inf"], "scheduler.cfg_scale"),
    ("steps0", ["--prompt", "a", "--num-sampling-steps", "0"], "num_sampling_steps"),
    ("frames0", ["--prompt", "a", "--num-frames", "0"], "num_frames"),
    ("fps0", ["--prompt", "a", "--fps", "0"], "fps"),
    ("seed-neg", ["--prompt", "a", "--seed", "-5"], "seed"),
    ("seed-huge", ["--prompt", "a", "--seed", "99999999999999999999"], "seed"),
    ("image-too-small", ["--prompt", "a", "--image-size", "7", "9"], "image_size 7x9"),
    ("empty-prompt", ["--prompt", "  "], "no text"),
    ("edit-ratio", ["--prompt", 'a{"mask_strategy": "0,0,0,0,1,7"}'], "edit_ratio"),
    # class 3: sizes that cannot fit are refused with an estimate, before loading
    ("huge-frames", ["--prompt", "a", "--num-frames", "100000"], "GB"),
    # class 5: user mistakes are one line naming the option or file
    ("unknown-flag", ["--prompt", "a", "--num-frame", "5"], "num_frames"),
    ("device-gpu", ["--prompt", "a", "--device-target", "GPU"], "device_target GPU"),
    ("ckpt-missing", ["--prompt", "a", "--ckpt_path", "/nonexistent/model.ckpt"], "--ckpt_path"),
    ("url-reference", ["--prompt", "a", "--reference_path", "https://example.com/a.png"], "URL"),
    ("text-cache-missing", ["--prompt", "a", "--text_embed_folder", "/nonexistent/t5"], "--text_embed_folder"),
    ("neg-without-t5", ["--prompt", "a", "--neg-prompt", "b", "--text_embed_folder", "/tmp"], "--neg-prompt"),
    ("overwrite-and-skip", ["--prompt", "a", "--overwrite", "true", "--skip-existing", "true"], "contradict"),
    ("mask-missing-ref", ["--prompt", "a", "--mask_strategy", "0,1"], "reference 1"),
    ("mask-later-loop", ["--prompt", "a", "--mask_strategy", "2"], "--loop is 1"),
    ("vae-yaml", ["--prompt", "a", "--vae", "{type: [a"], "not valid YAML"),
]


@pytest.mark.parametrize("case, argv, message", INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES])
def test_inference_refuses_before_loading(call, files, tmp_path, case, argv, message):
    out = tmp_path / "out"
    code, err = call(*_inference(files, out, *argv))
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # one line (MindSpore's own log lines may precede it)
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not out.exists()  # nothing created, or the empty folder made for the run removed again


@pytest.mark.parametrize("name, message", [("blank.txt", "no prompt in the file"), ("gap.txt", "line 2"),
                                           ("latin1.txt", "not UTF-8")])
def test_prompt_files_name_the_file_and_line(call, files, tmp_path, name, message):
    code, err = call(*_inference(files, tmp_path / "out", "--prompt-path", files / name))
    assert code == 2 and message in err and name in err


def test_yaml_syntax_error_names_file_and_line(call, files):
    code, err = call("scripts.inference", "--config", files / "bad.yaml", "--prompt", "a")
    assert code == 2 and "bad.yaml" in err and "line 2" in err and "Traceback" not in err


def test_output_names_stay_inside_and_apart(call, files, tmp_path):
    out = tmp_path / "a" / "b"
    code, err = call(*_inference(files, out, "--prompt", "a", "--sample-name", "../../escape"))
    assert code == 2 and "outside" in err and not (tmp_path / "escape_0000.mp4").exists()
    for name in ("dup.txt", "punct.txt"):  # two prompts -> one file name
        code, err = call(*_inference(files, out, "--prompt-path", files / name, "--prompt-as-path", "true"))
        assert code == 2 and "more than one sample" in err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("save_dir, message", [("afile", "not a folder"), ("/proc/opensora-test", "cannot create")])
def test_unusable_save_dir_is_found_first(call, files, save_dir, message):
    target = files / save_dir if not save_dir.startswith("/") else save_dir
    code, err = call(*_inference(files, target, "--prompt", "a"))
    assert code == 2 and "--save-dir" in err and message in err


def test_existing_outputs_are_not_overwritten_silently(call, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_0000.mp4").write_bytes(b"an earlier video")
    code, err = call(*_inference(files, out, "--prompt", "a"))
    assert code == 2 and "--overwrite" in err and "--skip-existing" in err
    assert (out / "sample_0000.mp4").read_bytes() == b"an earlier video"
    # --skip-existing keeps it and, having nothing left to do, loads nothing and succeeds
    code, err = call(*_inference(files, out, "--prompt", "a", "--skip-existing", "true"))
    assert code == 0 and (out / "sample_0000.mp4").read_bytes() == b"an earlier video"
    assert sorted(os.listdir(out)) == ["sample_0000.mp4"]


def test_damaged_reference_is_found_before_loading(call, files, tmp_path):
    code, err = call(*_inference(files, tmp_path / "out", "--prompt", "a", "--reference_path", files / "broken.png"))
    assert code == 2 and "broken.png" in err


@pytest.mark.parametrize("config, extra, message", [
    (TINY_V1_0, ["--mask_strategy", "0", "--reference_path", "REF"], "STDiT2"),
    (TINY_V1_1, ["--blockwise", "true"], "--blockwise"),
    (TINY, ["--loop", "2", "--scheduler", "{type: dpm-solver}"], "dpm-solver"),
    (TINY, ["--loop", "2", "--no_vae_decode", "true"], "--no_vae_decode"),
    (TINY, ["--loop", "2", "--condition_frame_length", "3"], "condition_frame_length 3"),
], ids=["mask-on-1.0", "blockwise-on-1.1", "loop-dpm", "loop-no-vae", "loop-condition-length"])
def test_conditioning_the_model_cannot_do(call, files, tmp_path, config, extra, message):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ref)
    extra = [str(ref) if a == "REF" else a for a in extra]
    code, err = call("scripts.inference", "--config", config, "--random_weights_dir", files / "weights", "--save_dir",
                     tmp_path / "out", "--prompt", "a", "--num-frames", "34", *extra)
    assert code == 2 and message in err, err


# ---------------------------------------------------------------------------------------------- inference 2.0
def _inference_v2(files, out, *extra, weights=None):
    """Random weights go to ``files/weights_v2`` (checked to stay absent: nothing was built) unless ``weights``."""
    return ("scripts.inference", "--config", TINY_V2, "--random_weights_dir", weights or files / "weights_v2",
            "--save_dir", out, "--mode", "pynative", "--verbose", "0", *extra)


V2_CASES = [
    # (id, argv after the common ones, message): every numeric option and sampling_option entry has a range
    ("steps0", ["--prompt", "a", "--num-steps", "0"], "num_steps"),
    ("steps-entry0", ["--prompt", "a", "--sampling_option.num_steps", "0"], "sampling_option.num_steps"),
    ("guidance-nan", ["--prompt", "a", "--guidance", "nan"], "guidance"),
    ("guidance-entry-inf", ["--prompt", "a", "--sampling_option.guidance", "inf"], "sampling_option.guidance"),
    ("guidance-img-neg", ["--prompt", "a", "--guidance-img", "-1"], "guidance_img"),
    ("guidance-img-nan", ["--prompt", "a", "--sampling_option.guidance_img", "nan"], "sampling_option.guidance_img"),
    ("motion-huge", ["--prompt", "a", "--motion-score", "1e9"], "motion_score"),
    ("motion-nan", ["--prompt", "a", "--motion-score", "nan"], "motion_score"),
    ("frames-over", ["--prompt", "a", "--num_frames", "133"], "num_frames"),
    ("frames0", ["--prompt", "a", "--num_frames", "0"], "num_frames"),
    ("seed-neg", ["--prompt", "a", "--seed", "-1"], "seed"),
    ("seed-entry-huge", ["--prompt", "a", "--sampling_option.seed", str(2**40)], "sampling_option.seed"),
    ("batch0", ["--prompt", "a", "--batch-size", "0"], "batch_size"),
    ("num-sample0", ["--prompt", "a", "--num-sample", "0"], "num_sample"),
    ("fps0", ["--prompt", "a", "--fps_save", "0"], "fps_save"),
    ("flow-shift0", ["--prompt", "a", "--sampling_option.flow_shift", "0"], "sampling_option.flow_shift"),
    ("start-neg", ["--prompt", "a", "--start_index", "-1"], "start_index"),
    ("ckpt-missing", ["--prompt", "a", "--ckpt_path", "/nonexistent/mmdit.safetensors"],
     "model weights not found: /nonexistent/mmdit.safetensors"),
    # outputs: names stay inside save_dir, samples apart, the policy flags do not contradict
    ("prefix-escape", ["--prompt", "a", "--save-prefix", "../../escape"], "outside"),
    ("overwrite-and-skip", ["--prompt", "a", "--overwrite", "true", "--skip-existing", "true"], "contradict"),
]


@pytest.mark.parametrize("case, argv, message", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_inference_refuses_before_loading(call, files, tmp_path, case, argv, message):
    out = tmp_path / "out"
    code, err = call(*_inference_v2(files, out, *argv))
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "escape_0000.mp4").exists()
    assert not (files / "weights_v2").exists()  # no model was built


def test_v2_name_column_stays_inside_and_apart(call, files, tmp_path):
    out = tmp_path / "a" / "b"
    csv = tmp_path / "names.csv"
    csv.write_text("text,name\na cat,../../../escape\n")
    code, err = call(*_inference_v2(files, out, "--dataset.data-path", csv))
    assert code == 2 and "outside" in err and "name of prompt 0" in err, err
    csv.write_text("text,name\na cat,clip\na dog,sub/../clip\n")  # two rows, one file
    code, err = call(*_inference_v2(files, out, "--csv", csv))
    assert code == 2 and "more than one sample" in err and "prompt 0 ('a cat') and prompt 1 ('a dog')" in err, err
    code, err = call(*_inference_v2(files, out, "--prompt", "a cat", "A cat", "--prompt-as-path", "true"))
    assert code == 2 and "more than one sample" in err and "a cat-0.mp4" in err, err  # compared without case
    code, err = call(*_inference_v2(files, out, "--csv", csv, "--use_t2i2v", "true", "--num_sample", "2",
                                    "--overwrite", "true"))  # the first frames clash too; no flag lets it through
    assert code == 2 and "generated_condition" in err, err
    assert not (tmp_path / "a").exists() and not (files / "weights_v2").exists()


def test_v2_existing_outputs_are_not_overwritten_silently(call, files, tmp_path):
    out = tmp_path / "out"
    (out / "video_64px").mkdir(parents=True)
    (out / "video_64px" / "prompt_0000.mp4").write_bytes(b"an earlier video")
    code, err = call(*_inference_v2(files, out, "--prompt", "a"))
    assert code == 2 and "--overwrite" in err and "--skip-existing" in err and "prompt_0000.mp4" in err, err
    assert (out / "video_64px" / "prompt_0000.mp4").read_bytes() == b"an earlier video"
    # --skip-existing: the sample is finished only with its prompt .txt too; then nothing is loaded, exit 0
    (out / "video_64px" / "prompt_0000.txt").write_text("a. 8 FPS. 4 motion score.")
    code, err = call(*_inference_v2(files, out, "--prompt", "a", "--skip-existing", "true"))
    assert code == 0, err
    assert sorted(os.listdir(out / "video_64px")) == ["prompt_0000.mp4", "prompt_0000.txt"]
    assert (out / "video_64px" / "prompt_0000.mp4").read_bytes() == b"an earlier video"
    assert not (files / "weights_v2").exists()


def test_v2_fewer_outputs_than_planned_fail_the_run(call, files, tmp_path, monkeypatch):
    """Stages that write nothing (here: none run) do not give a successful run: exit 1 naming the files."""
    from opensora.inference.v2.pipeline import PipelineV2

    monkeypatch.setattr(PipelineV2, "stages", lambda self: [("decode", (), lambda batch: None)])
    code, err = call(*_inference_v2(files, tmp_path / "out", "--prompt", "a cat", "a dog"))
    assert code == 1 and "4 planned output file(s) were not written" in err, err  # two videos, two .txt
    assert "prompt_0000.mp4" in err and "prompt_0001.txt" in err


def test_v2_nan_from_the_sampler_names_prompt_and_sample(call, files, tmp_path, monkeypatch):
    """The one real 2.0 run of this file (tiny T5, CLIP and MMDiT, one step; no VAE is reached): the video model
    returns NaN for the second prompt of the batch; the run stops at step 1 naming prompt 1 and sample 0 and the
    likely cause, exit 1, no output file."""
    import mindspore as ms

    from opensora.inference.v2.components import Models

    real = Models.get

    class NaNForRow1:
        def __init__(self, model):
            self.model = model

        def prepare_conditioning(self, **kwargs):
            return self.model.prepare_conditioning(**kwargs)

        def __call__(self, x, **kwargs):
            out = self.model(x, **kwargs)
            b = out.shape[0] // 3  # [prompts; negatives; negatives without image]
            scale = np.ones((out.shape[0], 1, 1), np.float32)
            scale[[1, b + 1, 2 * b + 1]] = np.nan
            return out * ms.Tensor(scale).astype(out.dtype)

    monkeypatch.setattr(Models, "get", lambda self, kind: NaNForRow1(real(self, kind)) if kind == "model"
                        else real(self, kind))
    out = tmp_path / "out"
    code, err = call(*_inference_v2(files, out, "--prompt", "a cat", "a dog", "--batch_size", "2", "--num-steps", "1",
                                    weights=tmp_path / "w"))
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert "video model" in last and "step 1 of 1" in last and "prompt(s) [1], sample 0" in last, last
    assert "weights holding NaN" in last
    assert not [f for _, _, names in os.walk(out) for f in names]


# ---------------------------------------------------------------------------------------------- caches
def _t5(files, out, *extra):
    return ("scripts.infer_t5", "--t5_model_dir", files, "--output_dir", out, *extra)


@pytest.mark.parametrize("csv, message", [("escape.csv", "outside"), ("twice.csv", "different values"),
                                          ("exts.csv", "more than one row"), ("nocaption.csv", "empty caption")])
def test_t5_cache_rows(call, files, tmp_path, csv, message):
    out = tmp_path / "t5" / "cache"
    code, err = call(*_t5(files, out, "--csv_path", files / csv))
    assert code == 2 and message in err
    assert not (tmp_path / "t5").exists() and not (tmp_path / "escaped.npz").exists()


def test_t5_cache_arguments(call, files, tmp_path):
    code, err = call(*_t5(files, tmp_path / "o", "--prompt_path", files / "blank.txt"))
    assert code == 2 and "blank.txt" in err
    code, err = call(*_t5(files, tmp_path / "o", "--prompt", "a", "--batch_size", "0"))
    assert code == 2 and "batch_size" in err
    code, err = call(*_t5(files, files / "afile", "--prompt", "a"))
    assert code == 2 and "--output_dir" in err


def test_t5_cache_of_another_caption_is_not_kept_silently(call, files, tmp_path):
    from opensora.datasets.embedding_cache import write_text_embedding

    out = tmp_path / "t5"
    write_text_embedding(str(out / "0000.npz"), np.zeros((4, 8), np.float32), np.ones(4), np.ones(4), "a dog")
    code, err = call(*_t5(files, out, "--prompt", "a cat", "--clean_caption", "false"))
    assert code == 2 and "another caption" in err and "0000.npz" in err and "--overwrite" in err


@pytest.mark.parametrize("csv, extra, message", [
    ("escape.csv", [], "outside"), ("exts.csv", [], "more than one row"), ("missing.csv", [], "none of the 2"),
    ("data.csv", ["--frame_stride", "0"], "frame_stride"), ("data.csv", ["--image_size", "4"], "image_size"),
])
def test_latent_cache_rows_and_arguments(call, files, tmp_path, csv, extra, message):
    out = tmp_path / "vae"
    code, err = call("scripts.infer_vae", "--csv_path", files / csv, "--video_folder", files / "videos",
                     "--output_dir", out, "--vae_checkpoint", files, "--image_size", "16", *extra)
    assert code == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("latent, extra, message", [
    ("nan.npz", [], "NaN"), ("corrupt.npz", [], "corrupt.npz"), ("both", [], "more than one latent"),
    ("nan.npz", ["--fps", "0"], "fps"),
])
def test_decode_checks_every_latent_first(call, files, tmp_path, latent, extra, message):
    out = tmp_path / "videos"
    code, err = call("scripts.infer_vae_decode", "--latent_path", files / latent, "--output_dir", out,
                     "--vae_checkpoint", files, "--vae_type", "sd", *extra)
    assert code == 2 and message in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- training
def _train(files, out, *extra):
    return ("scripts.train", "--config", TRAIN, "--csv_path", files / "data.csv", "--text_embed_folder", files / "t5",
            "--video_embed_folder", files / "latents", "--outputs", out, *extra)


@pytest.mark.parametrize("extra, message", [
    (["--max_steps", "0"], "max_steps"), (["--batch_size", "0"], "batch_size"), (["--lr", "nan"], "lr"),
    (["--ema_decay", "2"], "ema_decay"), (["--csv_path", "MISSING_CSV"], "missing.csv"),
])
def test_training_arguments(call, files, tmp_path, extra, message):
    extra = [str(files / "missing.csv") if a == "MISSING_CSV" else a for a in extra]
    out = tmp_path / "run"
    code, err = call(*_train(files, out, *extra))
    assert code == 2 and message in err, err
    assert not out.exists()


def test_training_into_another_run_is_refused(call, files, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000010").mkdir(parents=True)
    (out / "train_log.csv").write_text("step,loss\n")
    code, err = call(*_train(files, out))
    assert code == 2 and "--resume" in err and "already holds a run" in err
    other = tmp_path / "other" / "checkpoints" / "step_00000004"
    code, err = call(*_train(files, out, "--resume", other))
    assert code == 2 and "mix" in err
    assert sorted(os.listdir(out)) == ["checkpoints", "train_log.csv"]
    code, err = call(*_train(files, files / "afile"))
    assert code == 2 and "--outputs" in err


# ---------------------------------------------------------------------------------------------- converters
def test_converters_refuse_unsafe_damaged_and_existing(call, files, tmp_path):
    target = tmp_path / "out.ckpt"
    code, err = call("tools.convert_pt2ms", "--src", files / "evil.pth", "--target", target)
    assert code == 2 and "evil.pth" in err and "refused" in err and "weights_only=False" not in err
    code, err = call("tools.convert_pt2ms", "--src", files / "corrupt.pth", "--target", target)
    assert code == 2 and "corrupt.pth" in err
    code, err = call("tools.convert_pt2ms", "--src", files / "plain.pth", "--target", files / "exists.ckpt")
    assert code == 2 and "--overwrite" in err and (files / "exists.ckpt").read_bytes() == b"keep me"
    code, err = call("tools.convert_vae", "--source", files / "plain.pth", "--target", files / "plain.pth")
    assert code == 2 and "also the source" in err
    assert not target.exists()


# ---------------------------------------------------------------------------------------------- coverage
def test_every_numeric_option_has_a_range():
    """The one mechanism (Option's min/max/above) covers every numeric flag of every script."""
    from opensora.config import is_numeric
    from opensora.inference.options import inference_schema
    from opensora.inference.v2.options import SAMPLING_OPTIONS, v2_schema
    from opensora.training.options import train_schema
    from scripts.infer_t5 import SCHEMA as T5
    from scripts.infer_vae import SCHEMA as VAE
    from scripts.infer_vae_decode import SCHEMA as DECODE

    options = [(where, opt) for where, schema in (("inference", inference_schema()), ("inference 2.0", v2_schema()),
                                                  ("train", train_schema()), ("infer_t5", T5), ("infer_vae", VAE),
                                                  ("infer_vae_decode", DECODE))
               for opt in schema.options.values()]
    options += [("sampling_option", opt) for opt in SAMPLING_OPTIONS]
    unchecked = [f"{where}: {opt.name}" for where, opt in options
                 if is_numeric(opt.type) and opt.choices is None and opt.min is None and opt.max is None
                 and opt.above is None]
    assert len(options) > 150 and not unchecked


# ---------------------------------------------------------------------------------------------- run failures
def test_nan_from_the_sampler_names_step_and_prompt(call, files, tmp_path):
    """Weights holding NaN: the sampler stops at its first step, naming it, the prompt and the likely cause;
    exit 1 (the run failed; the input was well-formed) and no output file."""
    import mindspore as ms

    from opensora.inference.components import build_model

    weights = str(tmp_path / "w")
    model = build_model({"type": "STDiT3-XL/2", "from_pretrained": None, "depth": 1, "hidden_size": 64,
                         "num_heads": 4, "qk_norm": True, "input_sq_size": 64}, weights,
                        input_size=(1, 4, 4), in_channels=4, caption_channels=32, model_max_length=16)
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    params["final_layer.linear.bias"][:] = np.nan
    bad = str(tmp_path / "nan.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], bad)
    out = tmp_path / "out"
    code, err = call("scripts.inference", "--config", TINY, "--random_weights_dir", weights, "--save_dir", out,
                     "--mode", "pynative", "--verbose", "0", "--prompt", "a cat", "a dog", "--num-frames", "1",
                     "--image-size", "32", "32", "--num_sampling_steps", "2", "--model.depth", "1", "--ckpt_path", bad,
                     "--no_vae_decode", "true")
    assert code == 1, err
    assert "step 1 of 2" in err and "prompt(s) [0]" in err and "weights holding NaN" in err
    assert not [f for _, _, names in os.walk(out) for f in names]


def test_fewer_outputs_than_planned_fail_the_run(call, files, tmp_path, monkeypatch):
    """A writer that silently drops a sample (here: the latent of prompt 1 is never written) does not give a
    successful run: exit 1 naming the missing file, the written one kept."""
    import opensora.inference.pipeline as pipeline

    real = pipeline.save_latent

    def drops_prompt_1(latent, path, *args):
        return path if path.endswith("sample_0001.npz") else real(latent, path, *args)

    monkeypatch.setattr(pipeline, "save_latent", drops_prompt_1)
    out = tmp_path / "out"
    code, err = call("scripts.inference", "--config", TINY, "--random_weights_dir", tmp_path / "w", "--save_dir", out,
                     "--mode", "pynative", "--verbose", "0", "--prompt", "a cat", "a dog", "--num-frames", "1",
                     "--image-size", "32", "32", "--num_sampling_steps", "1", "--model.depth", "1",
                     "--no_vae_decode", "true")
    assert code == 1, err
    assert "not written" in err and "sample_0001.npz" in err
    assert [f for _, _, names in os.walk(out) for f in names] == ["sample_0000.npz"]


def test_a_bug_keeps_its_traceback(call, files, tmp_path, monkeypatch):
    """The other way round: an error that is not an input error (here a KeyError inside the package) is not
    reported as a user mistake: traceback, a line saying it is a bug, exit 1."""
    import opensora.inference.request as request

    def broken(*args, **kwargs):
        raise KeyError("a key the program forgot")

    monkeypatch.setattr(request, "plan_outputs", broken)
    code, err = call(*_inference(files, tmp_path / "out", "--prompt", "a"))
    assert code == 1 and "Traceback" in err and "KeyError" in err and "bug" in err


# ---------------------------------------------------------------------------------------------- command lines
@pytest.mark.parametrize("argv, status, message", [
    (["scripts/inference.py", "--config", TINY, "--prompt", "a", "--loop", "0"], 2, "loop"),
    (["scripts/train.py", "--config", TRAIN, "--max_steps", "-1"], 2, "max_steps"),
    (["scripts/infer_t5.py", "--no-such-flag"], 2, "no_such_flag"),
])
def test_command_line_exit_status(tmp_path, argv, status, message):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
