"""Sequence parallel (``opensora/parallel/sequence.py``) under msrun with two CPU workers: a tiny STDiT3 whose
frames' patches are split across the two ranks gives the forward and the gradients of the same model in one
process (built on each worker beside it, same weights), with and without a text mask, with ``x_mask``, with
precomputed caption keys/values, for a cropped latent, and refuses a patch count the ranks cannot split.

This file is also the msrun worker: ``python tests/test_sequence_parallel.py worker OUT PARTS`` (one launch per
test, to pay the start-up once). The default test is one launch in graph mode: the STDiT3 forwards and gradients,
sampling and 3 training steps; PyNative and the 2.0 MMDiT are ``extended``.

Training is compared with ``--adam_eps 1e-5`` (both runs): the key half of cross attention's ``kv_linear.bias``
has an analytically zero gradient (softmax does not change when every key score of a query moves by the same
``q . b_k``), so its computed gradient is float rounding (~1e-9), and AdamW's ``g / (|g| + eps)`` turns rounding
noise into steps of up to ``lr``: with the default eps 1e-8 that parameter alone differs (2.6e-4 after 3 steps;
one process in graph mode against PyNative: 2.3e-4, any change of summation order does it) while the two trained models give the same outputs within 1.2e-6. An eps
well above the rounding keeps every parameter comparable (upstream 1.2 trains with eps 1e-15: that bias moves by
about ``lr`` a step, at random, without effect).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _one_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in PyNative mode (the one-process reference: no graph to compile per input shape;
    graph mode == PyNative for STDiT3 is tested elsewhere), then the mode as it was."""
    import mindspore as ms

    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        return fn(*args, **kwargs)
    finally:
        ms.set_context(mode=mode)


def _models(mode: str):
    """(one-process model, sequence-parallel model) with the same perturbed weights."""
    from tests.fixtures.tiny_stdit import build_tiny, perturb

    single = build_tiny("STDiT3")
    perturb(single, seed=3)
    split = build_tiny("STDiT3", enable_sequence_parallelism=True)
    _copy_weights(single, split)
    return single, split


def _forward_cases(single, split, result: dict, prefix: str) -> None:
    import mindspore as ms

    from opensora.parallel.sequence import current_groups
    from tests.fixtures.tiny_stdit import tiny_inputs

    cases = {
        "text_mask": dict(text_mask=True),
        "no_text_mask": dict(text_mask=False),
        "x_mask": dict(text_mask=True, x_mask=True),
        "cropped_latent": dict(text_mask=True, x_mask=True, latent=(2, 7, 9)),  # 4 x 5 patches, output cropped
    }
    # each data-parallel group its own samples (seeded by the group), so that a rank reading another group's
    # part of an exchange fails the comparison (only with more than one group: test_msrun_two_groups_of_two)
    seed = current_groups().dp_rank
    for name, kw in cases.items():
        inputs = tiny_inputs("STDiT3", seed=seed, **kw)
        expected = _one_process(single, **inputs).asnumpy()
        got = split(**inputs).asnumpy()
        result[f"{prefix}{name}"] = {"diff": _max_diff(got, expected), "scale": float(np.abs(expected).max())}
    # the sampler's path: caption keys/values prepared once, mask cut to the attended positions
    inputs = tiny_inputs("STDiT3", text_mask=True)
    y, mask = inputs.pop("y"), inputs.pop("mask")
    cond_1, cond_2 = _one_process(single.prepare_conditioning, y, mask), split.prepare_conditioning(y, mask)
    expected = _one_process(single, **inputs, **cond_1).asnumpy()
    got = split(**inputs, **cond_2).asnumpy()
    result[f"{prefix}y_kv"] = {"diff": _max_diff(got, expected), "scale": float(np.abs(expected).max())}
    try:  # 3 x 3 patches per frame: two ranks cannot split them
        split(**tiny_inputs("STDiT3", latent=(2, 6, 6)))
        result[f"{prefix}odd_error"] = None
    except ValueError as e:  # SequenceParallelError, raised while the graph compiles
        result[f"{prefix}odd_error"] = str(e)
    del ms


def _grads(net, inputs, target):
    import mindspore as ms
    from mindspore import nn

    class Loss(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def construct(self, x, timestep, y, mask, x_mask, fps, height, width, target, keep):
            # keep: force_drop_ids of zeros, so that training mode drops no caption at random
            out = self.model(x, timestep, y, mask=mask, x_mask=x_mask, fps=fps, height=height, width=width,
                             force_drop_ids=keep)
            return ((out - target) ** 2).mean()

    loss_net = Loss(net)
    params = net.trainable_params()
    fn = ms.value_and_grad(loss_net, None, params)
    loss, grads = fn(inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"], inputs["x_mask"],
                     inputs["fps"], inputs["height"], inputs["width"], target,
                     ms.Tensor(np.zeros(inputs["x"].shape[0], np.int32)))
    return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}


def _gradient_case(single, split, rt, result: dict, prefix: str) -> None:
    """Each rank's gradients averaged over the ranks (what training's GradAverager does) == one process's."""
    import mindspore as ms
    from mindspore import ops

    from tests.fixtures.tiny_stdit import tiny_inputs

    single.set_train(True)
    split.set_train(True)
    inputs = tiny_inputs("STDiT3", text_mask=True, x_mask=True)
    target = ms.Tensor(np.random.default_rng(5).standard_normal((2, 8, 3, 8, 12)).astype(np.float32))
    loss_1, g_1 = _one_process(_grads, single, inputs, target)
    loss_2, g_2 = _grads(split, inputs, target)
    all_reduce = ops.AllReduce()
    worst, worst_name, smallest = 0.0, "", np.inf
    for name, g in g_2.items():
        mean = all_reduce(ms.Tensor(g)).asnumpy() / rt.device_num
        d = _max_diff(mean, g_1[name]) / max(1.0, float(np.abs(g_1[name]).max()))
        smallest = min(smallest, float(np.abs(g_1[name]).max()))
        if d > worst:
            worst, worst_name = d, name
    result[f"{prefix}grads"] = {"loss_diff": abs(loss_1 - loss_2), "diff": worst, "worst": worst_name,
                                "count": len(g_2), "smallest_grad_scale": smallest}
    single.set_train(False)
    split.set_train(False)


def _copy_weights(single, split):
    import mindspore as ms

    values = {p.name: p.asnumpy() for p in single.get_parameters()}
    for p in split.get_parameters():
        p.set_data(ms.Tensor(values[p.name]))


def _mmdit_cases(rt, result: dict, prefix: str) -> None:
    """The 2.0 MMDiT: text and image tokens split, joint attention by heads; both checkpoint layouts forward,
    the Open-Sora 2.0 layout's gradients; an image token count the ranks cannot split is refused."""
    import mindspore as ms
    from mindspore import nn, ops

    from opensora.models.registry import MODELS
    from tests.fixtures.tiny_mmdit import tiny_inputs, tiny_kwargs
    from tests.fixtures.tiny_stdit import perturb

    for layout in ("v2", "flux_dev"):
        single = MODELS.build({"type": "flux", **tiny_kwargs(layout)})
        perturb(single, seed=4)
        split = MODELS.build({"type": "flux", **tiny_kwargs(layout), "enable_sequence_parallelism": True})
        _copy_weights(single, split)
        inputs = tiny_inputs(layout, as_tensors=True)
        expected = single(**inputs).asnumpy()
        got = split(**inputs).asnumpy()
        result[f"{prefix}mmdit_{layout}"] = {"diff": _max_diff(got, expected), "scale": float(np.abs(expected).max())}
        if layout == "v2":
            cond = split.prepare_conditioning(inputs["img_ids"], inputs["txt"], inputs["txt_ids"], inputs["y_vec"],
                                              inputs["cond"])
            got = split(inputs["img"], timesteps=inputs["timesteps"], **cond).asnumpy()
            result[f"{prefix}mmdit_v2_prepared"] = {"diff": _max_diff(got, expected),
                                                    "scale": float(np.abs(expected).max())}
            try:  # 1 x 1 x 3 patches: two ranks cannot split 3 image tokens
                split(**tiny_inputs(layout, latent=(1, 2, 6), as_tensors=True))
                result[f"{prefix}mmdit_odd_error"] = None
            except ValueError as e:
                result[f"{prefix}mmdit_odd_error"] = str(e)

            class Loss(nn.Cell):
                def __init__(self, model):
                    super().__init__()
                    self.model = model

                def construct(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond, target):
                    return ((self.model(img, img_ids, txt, txt_ids, timesteps, y_vec, cond) - target) ** 2).mean()

            target = ms.Tensor(np.random.default_rng(6).standard_normal(expected.shape).astype(np.float32))
            args = [inputs[k] for k in ("img", "img_ids", "txt", "txt_ids", "timesteps", "y_vec", "cond")] + [target]
            grads = []
            for net in (single, split):
                net.set_train(True)
                params = net.trainable_params()
                loss, g = ms.value_and_grad(Loss(net), None, params)(*args)
                grads.append((float(loss.asnumpy()), {p.name: x.asnumpy() for p, x in zip(params, g)}))
            all_reduce = ops.AllReduce()
            worst, smallest = 0.0, np.inf
            for name, g in grads[1][1].items():
                mean = all_reduce(ms.Tensor(g)).asnumpy() / rt.device_num
                ref = grads[0][1][name]
                worst = max(worst, _max_diff(mean, ref) / max(1.0, float(np.abs(ref).max())))
                smallest = min(smallest, float(np.abs(ref).max()))
            result[f"{prefix}mmdit_grads"] = {"loss_diff": abs(grads[0][0] - grads[1][0]), "diff": worst,
                                              "count": len(grads[1][1]), "smallest_grad_scale": smallest}


TRAIN_STEPS = 3


def make_cached_data(root: str) -> list[str]:
    """Four clips' cached latents (4 x 4 x 8 x 8: 4 x 4 patches a frame) and T5 embeddings (8 x 32); the
    training flags that read them."""
    from opensora.datasets.embedding_cache import cache_file_for, write_text_embedding, write_video_latent

    rng = np.random.default_rng(11)
    rows = ["path,text"]
    for i in range(4):
        rel = f"clips/clip{i}.mp4"
        rows.append(f"{rel},caption {i}")
        write_video_latent(cache_file_for(os.path.join(root, "latents"), rel),
                           rng.standard_normal((4, 4, 8, 8)).astype(np.float32),
                           np.full((4, 4, 8, 8), 0.1, np.float32), 24, (64, 64))
        mask = (np.arange(8) < 3 + i).astype(np.uint8)
        write_text_embedding(cache_file_for(os.path.join(root, "t5"), rel),
                             rng.standard_normal((8, 32)).astype(np.float32), mask, np.arange(8), f"caption {i}")
    with open(os.path.join(root, "data.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return data_flags(root)


def data_flags(root: str) -> list[str]:
    return ["--config", os.path.join(ROOT, "configs/tiny/train_stdit3.yaml"), "--csv_path",
            os.path.join(root, "data.csv"), "--text_embed_folder", os.path.join(root, "t5"),
            "--video_embed_folder", os.path.join(root, "latents"), "--model.caption_channels", "32",
            "--model.depth", "1", "--model.hidden_size", "32", "--model.num_heads", "2", "--progress_bar", "false",
            "--max_steps", str(TRAIN_STEPS), "--ckpt_every", str(TRAIN_STEPS), "--lr", "3e-3", "--seed", "5",
            "--num_workers", "1",
            # rounding noise of a zero gradient must not become AdamW steps (module docstring); an EMA that moves
            "--adam_eps", "1e-5", "--ema_decay", "0.5"]


def train(argv: list[str], runtime):
    """``scripts/train.py``'s trainer on ``runtime`` (already set up); returns the losses."""
    from opensora.training.options import train_schema
    from opensora.training.setup import build_trainer

    return build_trainer(train_schema().parse(argv), runtime).fit()


def sample(out_dir: str, name: str, flags: list[str]) -> list[str]:
    """``scripts/inference.py``'s pipeline on the tiny 1.2 config (T5, STDiT3, VAE; random weights shared through
    ``out_dir/random``), 3 rflow steps; writes the video and its latent to ``out_dir/name``."""
    from opensora.inference.options import inference_schema
    from opensora.inference.pipeline import InferencePipeline

    cfg = inference_schema().parse([
        "--config", os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml"), "--prompt", "a red ball",
        "--save_dir", os.path.join(out_dir, name), "--random_weights_dir", os.path.join(out_dir, "random"),
        "--num_sampling_steps", "3", "--save_latent", "true", "--verbose", "0", *flags])
    return InferencePipeline(cfg).load().run()


def _worker(out_dir: str, parts: str) -> None:
    """``parts``: comma-separated "MODE:MODEL" (MODE graph or pynative, MODEL stdit3 or mmdit: that model's
    forwards and gradients in that mode), "train", "sample" (graph mode); each part's seconds are recorded."""
    import mindspore as ms

    from opensora.runtime import init_runtime

    rt = init_runtime("CPU", mode="graph", distributed=True, sp_size=2, seed=0)
    result = {"rank": rt.rank_id, "world": rt.device_num, "sp_size": rt.sp_size}
    for part in parts.split(","):
        start = time.time()
        mode, _, model = part.partition(":")
        ms.set_context(mode=ms.PYNATIVE_MODE if mode == "pynative" else ms.GRAPH_MODE)
        if model == "stdit3":
            single, split = _models(mode)
            _forward_cases(single, split, result, f"{mode}/")
            _gradient_case(single, split, rt, result, f"{mode}/")
        elif model == "mmdit":
            _mmdit_cases(rt, result, f"{mode}/")
        elif part == "train":
            flags = ["--use_parallel", "true", "--sp_size", "2", "--outputs", os.path.join(out_dir, "train_sp")]
            result["train_losses"] = train([*data_flags(os.path.join(out_dir, "data")), *flags], rt)
        elif part == "sample":
            result["inference_saved"] = sample(out_dir, "infer_sp", ["--use_parallel", "true", "--sp_size", "2"])
        else:
            raise ValueError(f"unknown part {part!r}")
        result.setdefault("seconds", {})[part] = round(time.time() - start, 1)
    with open(os.path.join(out_dir, f"rank{rt.rank_id}.json"), "w") as f:
        json.dump(result, f)


def _checkpoint_diffs(a_dir: str, b_dir: str) -> dict:
    """Largest difference per checkpoint file of two runs' last checkpoints (same files, same keys)."""
    import mindspore as ms

    out = {}
    for name in ("model.ckpt", "ema.ckpt"):
        a, b = ms.load_checkpoint(os.path.join(a_dir, name)), ms.load_checkpoint(os.path.join(b_dir, name))
        assert sorted(a) == sorted(b), f"{name}: the keys differ"
        shapes = [(k, a[k].shape, b[k].shape) for k in a if a[k].shape != b[k].shape]
        assert not shapes, f"{name}: shapes differ {shapes}"
        out[name] = max(_max_diff(a[k].asnumpy(), b[k].asnumpy()) for k in a)
        moved = max(_max_diff(a[k].asnumpy(), 0) for k in a)
        assert moved > 0.1, f"{name}: trivial values"
    return out


def _launch(tmp_path, parts: str, workers: int = 2) -> list[dict]:
    from tests.test_train_parallel import run_msrun

    run_msrun([os.path.abspath(__file__), "worker", str(tmp_path), parts], str(tmp_path / "logs"), workers=workers,
              timeout=300 * workers // 2)
    return [json.load(open(tmp_path / f"rank{r}.json")) for r in range(workers)]


STDIT3_CASES = ("text_mask", "no_text_mask", "x_mask", "cropped_latent", "y_kv", "odd_error", "grads")
MMDIT_CASES = ("mmdit_v2", "mmdit_flux_dev", "mmdit_v2_prepared", "mmdit_odd_error", "mmdit_grads")


def _check_ranks(ranks: list[dict], parts: str) -> list[str]:
    """The workers' comparisons (both ranks; every case of each "MODE:MODEL" part of ``parts``) within TOL; the
    lines to print (rank 0's)."""
    lines = []
    for r in ranks:
        assert r["sp_size"] == 2 and r["world"] == len(ranks)
        for part in parts.split(","):
            mode, _, model = part.partition(":")
            cases = {"stdit3": STDIT3_CASES, "mmdit": MMDIT_CASES}.get(model, ())
            missing = [f"{mode}/{c}" for c in cases if f"{mode}/{c}" not in r]
            assert not missing, f"rank {r['rank']}: no result for {missing}"
        for key, value in r.items():
            if key == "seconds":
                continue
            if key.endswith("mmdit_odd_error"):
                assert value is not None and "image tokens (T x H/2 x W/2) (3)" in value, f"{key}: {value}"
            elif key.endswith("odd_error"):
                assert value is not None and "patches of a frame (H/ph x W/pw) (9)" in value, f"{key}: {value}"
            elif key.endswith("grads"):
                assert value["diff"] < TOL and value["loss_diff"] < TOL, f"rank {r['rank']} {key}: {value}"
                assert value["smallest_grad_scale"] > 1e-4  # no parameter's gradient is trivially zero
            elif isinstance(value, dict):
                assert value["scale"] > 0.1, f"{key}: trivial output"
                assert value["diff"] < TOL, f"rank {r['rank']} {key}: max diff {value['diff']:.2e}"
            else:
                continue
            if r["rank"] == 0 and isinstance(value, dict):
                lines.append(f"{key} {value['diff']:.1e}")
    return lines


def _check_training(ranks: list[dict], tmp_path, data: list[str]) -> str:
    """3 steps of scripts/train.py's trainer with sp_size 2 == one process: losses, and every parameter of
    model.ckpt and ema.ckpt within TOL (the same files, keys and shapes)."""
    import mindspore as ms

    from opensora.runtime import Runtime

    ms.set_context(mode=ms.GRAPH_MODE)
    single_dir = tmp_path / "train_single"
    losses = train([*data, "--outputs", str(single_dir)], Runtime("CPU", "graph", "O0"))
    for r in ranks:
        np.testing.assert_allclose(r["train_losses"], losses, rtol=1e-5, atol=1e-6)
    last = f"checkpoints/step_{TRAIN_STEPS:08d}"
    assert sorted(os.listdir(single_dir / last)) == sorted(os.listdir(tmp_path / "train_sp" / last))
    ckpt = _checkpoint_diffs(str(single_dir / last), str(tmp_path / "train_sp" / last))
    assert all(d < TOL for d in ckpt.values()), ckpt
    return f"train {TRAIN_STEPS} steps: " + ", ".join(f"{k} {v:.1e}" for k, v in ckpt.items())


def _check_sampling(ranks: list[dict], tmp_path) -> str:
    """scripts/inference.py's pipeline with sp_size 2: rank 0 writes the same latent and video as one process,
    rank 1 nothing."""
    import imageio.v3 as iio

    saved = sample(str(tmp_path), "infer_single", [])
    assert ranks[1]["inference_saved"] == [] and len(ranks[0]["inference_saved"]) == len(saved) == 2  # video, latent
    assert sorted(os.listdir(tmp_path / "infer_sp")) == sorted(os.listdir(tmp_path / "infer_single"))
    latents = [next(p for p in paths if p.endswith(".npz")) for paths in (ranks[0]["inference_saved"], saved)]
    videos = [next(p for p in paths if p.endswith(".mp4")) for paths in (ranks[0]["inference_saved"], saved)]
    lat = [np.load(p)["latent"] for p in latents]
    z_diff = _max_diff(lat[0], lat[1])
    assert z_diff < TOL and np.abs(lat[1]).max() > 0.1, z_diff
    frames = [iio.imread(p) for p in videos]
    v_diff = _max_diff(frames[0], frames[1])
    assert frames[0].shape == frames[1].shape and v_diff <= 1, v_diff  # uint8 frames of latents 1e-6 apart
    return f"sampling latent {z_diff:.1e}, video {v_diff:.0f}/255"


@pytest.mark.msrun
def test_msrun_sequence_parallel_matches_one_process(tmp_path):
    """One msrun launch, graph mode: STDiT3 forwards (text mask or not, x_mask, prepared caption keys/values, a
    cropped latent, an unsplittable patch count refused) and gradients; sampling writes the same latent and video;
    3 training steps give the same losses and checkpoints as one process."""
    start = time.time()
    data = make_cached_data(str(tmp_path / "data"))
    parts = "graph:stdit3,sample,train"
    ranks = _launch(tmp_path, parts)
    launched = time.time() - start
    lines = _check_ranks(ranks, parts)
    lines.append(_check_sampling(ranks, tmp_path))
    lines.append(_check_training(ranks, tmp_path, data))
    print(f"\nsequence parallel (2 msrun CPU workers): {', '.join(lines)}; msrun {launched:.0f}s (worker parts "
          f"{ranks[0]['seconds']}); {time.time() - start:.1f}s")


@pytest.mark.msrun
@pytest.mark.extended
def test_msrun_sequence_parallel_pynative_and_mmdit(tmp_path):
    """The same STDiT3 checks in PyNative; the 2.0 MMDiT's forwards and gradients in both modes."""
    start = time.time()
    parts = "pynative:stdit3,graph:mmdit,pynative:mmdit"
    ranks = _launch(tmp_path, parts)
    lines = _check_ranks(ranks, parts)
    print(f"\nsequence parallel (2 msrun CPU workers): {', '.join(lines)}; worker parts {ranks[0]['seconds']}; "
          f"{time.time() - start:.1f}s")


@pytest.mark.msrun
@pytest.mark.extended
def test_msrun_two_groups_of_two(tmp_path):
    """4 workers, sp_size 2: two data-parallel groups of two ranks. On the CPU each group's exchange is its part
    of a world gather (no subgroup collectives): every rank's forwards and averaged gradients equal one process's
    (about 2 minutes on 2 cores)."""
    start = time.time()
    ranks = _launch(tmp_path, "graph:stdit3", workers=4)
    lines = _check_ranks(ranks, "graph:stdit3")
    print(f"\nsequence parallel (4 msrun CPU workers, 2 groups): {', '.join(lines)}; {time.time() - start:.1f}s")


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    sys.path.insert(0, ROOT)
    _worker(sys.argv[2], sys.argv[3])
