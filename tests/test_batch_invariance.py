"""A sample does not depend on the batch it is drawn in: the same prompts with batch size 1 and 3 give the
same latents, for every sampler (rectified flow with a mask strategy that re-noises a reference frame,
IDDPM with its per-step noise, DPM-solver). Each sample's noise, also the noise the samplers draw inside
their loop, comes from a generator seeded with (seed, prompt index, sample, loop)."""
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a cat walks along the river.", "a red car drives through a quiet street at night.", "two birds fly."]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return str(tmp_path_factory.mktemp("weights"))


def _latents(folder, n):
    return np.stack([np.load(os.path.join(folder, "latents", f"sample_{i:04d}.npz"))["latent"] for i in range(n)])


def _pipeline(weights, config, *extra):
    from opensora.inference.options import inference_schema
    from opensora.inference.pipeline import InferencePipeline

    cfg = inference_schema().parse(["--config", os.path.join(ROOT, config), "--mode", "pynative", "--verbose", "0",
                                    "--random_weights_dir", weights, "--save_dir", os.path.join(weights, "out"),
                                    "--overwrite", "true", "--prompt", *PROMPTS, *extra])
    return InferencePipeline(cfg).load()


def _batch_sizes_agree(pipe, tmp_path):
    """Run the loaded pipeline with batch size 1, then 3 (the plan is made again on each run)."""
    got = {}
    for bs in (1, 3):
        pipe.cfg.batch_size, pipe.cfg.save_dir = bs, str(tmp_path / f"bs{bs}")
        pipe.run()
        got[bs] = _latents(pipe.cfg.save_dir, len(PROMPTS))
    assert np.abs(got[1] - got[3]).max() <= 1e-5  # measured: 0 (rflow, iddpm), <= 2e-7 (dpm-solver)
    assert np.abs(got[1][0] - got[1][1]).max() > 1e-2  # the samples differ from each other
    return got


def test_per_sample_generators_draw_each_row_alone():
    from opensora.schedulers.noise import make_rng, randn

    rows = randn(make_rng([np.random.default_rng([7, i]) for i in range(3)]), (3, 2, 4)).asnumpy()
    for i in range(3):
        np.testing.assert_array_equal(rows[i], np.random.default_rng([7, i]).standard_normal((2, 4), np.float32))


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_rflow_with_renoised_reference(weights, tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(ref)
    # the reference (VAE-encoded: a posterior draw) lands on latent frame 0 with edit ratio 0.5: re-noised
    # half-way through the sampling loop
    pipe = _pipeline(weights, "configs/tiny/inference/sample_t2v.yaml", "--image_size", "32", "32",
                     "--num_frames", "5", "--num_sampling_steps", "4", "--save_latent", "true",
                     "--reference_path", str(ref), "--mask_strategy", "0,0,0,0,1,0.5")
    _batch_sizes_agree(pipe, tmp_path)


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
@pytest.mark.parametrize("scheduler", ["{type: iddpm, num_sampling_steps: 3, cfg_scale: 7.0}",
                                       "{type: dpm-solver, num_sampling_steps: 3, cfg_scale: 7.0}"])
def test_iddpm_and_dpm_solver(weights, tmp_path, scheduler):
    pipe = _pipeline(weights, "configs/tiny/inference/sample_v1_0.yaml", "--image_size", "32", "32",
                     "--num_frames", "4", "--no_vae_decode", "true", "--scheduler", scheduler)
    _batch_sizes_agree(pipe, tmp_path)
