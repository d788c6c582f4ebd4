"""run_scripts/run_sample_3stages.sh for Open-Sora 1.0 and 1.1 (SD VAE, IDDPM) on tiny random-weight configs:
the three processes (T5 -> latents -> VAE decode) write the same video as the one-process script.
(1.2 with the 3D VAE is covered stage by stage in test_inference_e2e.py.)"""
import os
import subprocess
import sys

import numpy as np
import pytest

from opensora.datasets.video_io import read_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.extended  # suite time: the stages' equality is in the default suite (test_inference_e2e, 1.2 and 2.0)
@pytest.mark.parametrize("config", ["sample_v1_0.yaml", "sample_v1_1.yaml"])
def test_three_stage_script_equals_one_process(config, tmp_path):
    config = os.path.join(ROOT, "configs/tiny/inference", config)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks along the river.\n")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    common = ["--random_weights_dir", str(tmp_path / "weights"), "--num_sampling_steps", "3"]
    one = subprocess.run([sys.executable, "scripts/inference.py", "--config", config, "--prompt_path", str(prompts),
                          "--save_dir", str(tmp_path / "one"), *common], cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    three = subprocess.run(["bash", "run_scripts/run_sample_3stages.sh", config, str(prompts), str(tmp_path / "three"),
                            *common], cwd=ROOT, env=env, capture_output=True, text=True)
    assert three.returncode == 0, three.stderr[-2000:]
    a = read_video(str(tmp_path / "one" / "sample_0000.mp4"))[0]
    b = read_video(str(tmp_path / "three" / "sample_0000.mp4"))[0]
    assert a.shape == b.shape == (8, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert a.std() > 0  # a real picture, not a blank frame
