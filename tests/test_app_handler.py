"""The web app's request handler (opensora/inference/app_handler.py) on the tiny 1.2 and 2.0 configs, without a
browser: the video it writes is the one its displayed command line writes with scripts/inference.py (same frames,
byte for byte), progress runs over the steps and decoding, Cancel stops at the next step and leaves no file, bad
input is refused with the command line's errors before anything runs, and outputs follow the command line's naming
and overwrite rules."""
import importlib.util
import os
import shlex

import imageio
import numpy as np
import pytest

from opensora.config import ConfigError
from opensora.errors import InputError
from opensora.inference.app_handler import (EXTEND_VIDEO, FRAMES_TO_VIDEO, IMAGE_TO_VIDEO, TEXT_TO_IMAGE, Cancelled,
                                             Form, handler_for)
from opensora.utils.outputs import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml")
CONFIG_V2 = os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    out, weights = tmp_path_factory.mktemp("app"), tmp_path_factory.mktemp("weights")
    base = ["--config", CONFIG, "--mode", "pynative", "--image_size", "32", "32", "--num_sampling_steps", "3",
            "--verbose", "0", "--save_dir", str(out), "--random_weights_dir", str(weights)]
    return handler_for(base).load()


@pytest.fixture(scope="module")
def handler_v2(tmp_path_factory):
    out, weights = tmp_path_factory.mktemp("app_v2"), tmp_path_factory.mktemp("weights_v2")
    base = ["--config", CONFIG_V2, "--mode", "pynative", "--verbose", "0", "--save_dir", str(out),
            "--random_weights_dir", str(weights)]
    return handler_for(base).load()


def inference_script():
    spec = importlib.util.spec_from_file_location("inference", os.path.join(ROOT, "scripts", "inference.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def same_frames_as_the_command(argv, app_video, folder, name, shape):
    """``argv`` (the shown command) run by scripts/inference.py into ``folder`` writes ``name`` with the frames of
    ``app_video``, byte for byte."""
    assert inference_script().main(argv[2:] + ["--save_dir", str(folder)]) == 0
    app_frames, cli_frames = frames(app_video), frames(str(folder / name))
    assert app_frames.shape == shape and app_frames.std() > 0
    np.testing.assert_array_equal(app_frames, cli_frames)


def cancelled_at(handler, step: str, form) -> list[str]:
    """Run ``form``, pressing Cancel (as the page's button does, from another request) when progress says
    ``step`` -> the progress texts seen; the run must stop with Cancelled."""
    seen = []

    def progress(fraction, text):
        seen.append(text)
        if text == step:
            assert handler.cancel()
    with pytest.raises(Cancelled, match="sampling"):
        handler.generate(form, progress=progress)
    return seen


def frames(path):
    with imageio.get_reader(path) as reader:
        return np.stack([np.asarray(frame) for frame in reader])


def test_same_video_as_the_command_line(handler, tmp_path):
    events = []
    result = handler.generate(Form(prompt="a cat walks along the river.", seed=7, steps=4, guidance=5.0),
                              progress=lambda fraction, text: events.append((fraction, text)))
    assert os.path.basename(result.path) == "app-0001_0000.mp4"
    argv = shlex.split(result.command)
    assert argv[:2] == ["python", "scripts/inference.py"]
    assert "--seed" in argv and argv[argv.index("--seed") + 1] == "7"
    # progress: every sampling step, then decoding, increasing to 1
    texts = [text for _, text in events]
    assert texts[:4] == [f"sampling step {i}/4" for i in range(1, 5)] and texts[4:] == ["decoding", "decoded"]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the shown command, into another folder: the same frames
    same_frames_as_the_command(argv, result.path, tmp_path, "app-0001_0000.mp4", (17, 32, 32, 3))


def test_cancel_stops_at_the_next_step_and_writes_nothing(handler):
    seen = cancelled_at(handler, "sampling step 1/3", Form(prompt="a cat", seed=1, name="cancelled"))
    assert seen == ["sampling step 1/3"]
    assert not [f for f in os.listdir(handler.base.save_dir) if f.startswith("cancelled")]
    assert not handler.cancel()  # nothing runs now


def test_bad_input_is_refused_before_anything_runs(handler, tmp_path):
    def refused(form, match, error=ConfigError):
        with pytest.raises(error, match=match):
            handler.generate(form, progress=lambda *a: pytest.fail("a refused request must not run"))

    refused(Form(prompt="  "), "prompt is empty")
    refused(Form(prompt="a cat", task=IMAGE_TO_VIDEO), "needs a start frame")
    refused(Form(prompt="a cat", task="i2v_head"), "not available")  # a 2.0 cond type
    refused(Form(prompt="a cat", duration="abc"), "num_frames")  # the command line's own message
    refused(Form(prompt="a cat", steps=0), "num_sampling_steps")
    refused(Form(prompt="a cat", resolution="999p", aspect_ratio="9:16"), "999p")
    text = tmp_path / "not-an-image.png"
    text.write_text("no image")
    refused(Form(prompt="a cat", task=IMAGE_TO_VIDEO, start_image=str(text)), "not-an-image|png|image", InputError)
    # the command line's overwrite rule: an existing output is refused unless overwrite
    taken = os.path.join(handler.base.save_dir, "taken_0000.png")
    open(taken, "wb").close()
    refused(Form(prompt="a cat", task=TEXT_TO_IMAGE, name="taken"), "taken_0000.png", OutputError)
    assert os.path.getsize(taken) == 0


def test_text_to_image_and_names(handler):
    first = handler.next_name()
    result = handler.generate(Form(prompt="a red car", task=TEXT_TO_IMAGE, seed=3))
    assert result.path.endswith(f"{first}_0000.png") and "--num-frames 1" in result.command
    assert handler.next_name() != first


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_extend_a_video_and_start_and_end_frames(handler, tmp_path):
    source = handler.generate(Form(prompt="a cat walks along the river.", seed=5)).path
    image = tmp_path / "frame.png"
    imageio.imwrite(image, frames(source)[0])
    extended = handler.generate(Form(prompt="the cat keeps walking.", task=EXTEND_VIDEO, video=source, seed=5))
    n = handler.base.condition_frame_length  # the last n latent frames of the video start the new one
    assert f"--mask-strategy 0,0,-{n},0,{n}" in extended.command and frames(extended.path).shape[0] == 17
    both = handler.generate(Form(prompt="a cat", task=FRAMES_TO_VIDEO, start_image=str(image), end_image=str(image)))
    assert "--mask-strategy '0;0,1,0,-1,1'" in both.command
    ref = shlex.split(both.command)[shlex.split(both.command).index("--reference-path") + 1].split(";")[0]
    assert os.path.dirname(ref) == os.path.join(handler.base.save_dir, "references")  # the upload is kept


def test_v2_same_video_as_the_command_line(handler_v2, tmp_path):
    """2.0, i2v_head from an upload with the 2.0 controls changed: the frames of the shown command's run."""
    image = tmp_path / "start.png"
    imageio.imwrite(image, (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8))
    events = []
    result = handler_v2.generate(
        Form(prompt="a cat walks along the river.", task="i2v_head", start_image=str(image), seed=7, steps=3,
             guidance=6.0, image_guidance=2.5, motion_score="2", duration="5"),
        progress=lambda fraction, text: events.append((fraction, text)))
    assert result.path == os.path.join(handler_v2.base.save_dir, "video_64px", "app-0001_prompt_0000.mp4")
    argv = shlex.split(result.command)
    for flag, value in (("--cond_type", "i2v_head"), ("--num_frames", "5"), ("--num_steps", "3"), ("--guidance", "6.0"),
                        ("--guidance_img", "2.5"), ("--motion_score", "2"), ("--seed", "7")):
        assert argv[argv.index(flag) + 1] == value, flag
    with open(result.path[:-4] + ".txt") as f:
        assert f.read() == "a cat walks along the river. 8 FPS. 2 motion score."
    assert [text for _, text in events] == [f"sampling step {i}/3" for i in range(1, 4)] + ["decoding", "decoded"]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    same_frames_as_the_command(argv, result.path, tmp_path, "video_64px/app-0001_prompt_0000.mp4", (5, 48, 80, 3))


def test_v2_cancel_removes_the_started_files(handler_v2):
    """t2i2v writes its first frame before the video is sampled: Cancel then leaves neither behind."""
    seen = cancelled_at(handler_v2, "sampling step 1/4", Form(prompt="a cat", task="t2i2v", seed=1, name="stopped"))
    assert seen == [f"first frame step {i}/4" for i in range(1, 5)] + ["sampling step 1/4"]
    left = [name for _, _, names in os.walk(handler_v2.base.save_dir) for name in names if name.startswith("stopped")]
    assert not left, left


def test_v2_bad_input_is_refused_before_anything_runs(handler_v2):
    def refused(form, match):
        with pytest.raises(ConfigError, match=match):
            handler_v2.generate(form, progress=lambda *a: pytest.fail("a refused request must not run"))

    refused(Form(prompt="a cat", task="i2v_loop", start_image=__file__), "needs an end frame")
    refused(Form(prompt="a cat", task="v2v_head"), "needs a video")
    refused(Form(prompt="a cat", duration="8"), "4k\\+1|num_frames")
    refused(Form(prompt="a cat", motion_score="dynamic"), "online service")
    refused(Form(prompt="a cat", task=IMAGE_TO_VIDEO), "not available")  # a 1.x task
