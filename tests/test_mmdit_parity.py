"""Open-Sora 2.0 MMDiT (Flux) against the independent PyTorch reference (tests/reference/mmdit_torch.py, itself
checked against upstream's own code), tiny configs, every parameter perturbed (cond_in is zero-initialised
upstream), weights loaded from the reference's .safetensors through the ``flux`` builder. Both official layouts:
2.0 (separate q/k/v, cond_in, Liger RoPE) and Flux-dev (fused qkv, guidance_in, Flux RoPE)."""
import numpy as np
import pytest
import torch

import mindspore as ms

from opensora.models.layers import forms
from opensora.models.mmdit.layers import JointAttention
from tests.fixtures.tiny_mmdit import position_ids, tiny_inputs, tiny_mmdit

TOL = 1e-4
_CACHE = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    def get(layout):
        if layout not in _CACHE:
            _CACHE[layout] = tiny_mmdit(layout, tmp_path_factory.mktemp(layout))
        return _CACHE[layout]

    return get


def _reference(ref, inputs):
    with torch.no_grad():
        return ref(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).numpy()


def _run(net, inputs):
    return net(**{k: ms.Tensor(v) for k, v in inputs.items()}).asnumpy()


def _shift_second_row(inputs):
    """Sample 1's image positions moved by (1, 1, 1): the Liger kernel reads sample 0's for both."""
    inputs["img_ids"][1] += 1.0
    return inputs


CASES = {
    "v2-t2v": ("v2", dict(cond="t2v")),  # cond zeros: upstream's text-to-video
    "v2-i2v": ("v2", dict(cond="i2v")),  # sample 0 conditioned on a first frame
    "v2-square-batch3": ("v2", dict(latent=(2, 4, 4), batch=3)),
    "flux_dev-guidance": ("flux_dev", dict()),
    "v2-row_ids_differ": ("v2", dict()),
    "flux_dev-row_ids_differ": ("flux_dev", dict()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_reference(models, case):
    layout, kw = CASES[case]
    net, ref = models(layout)
    inputs = tiny_inputs(layout, **kw)
    if case.endswith("row_ids_differ"):
        inputs = _shift_second_row(inputs)
    expected = _reference(ref, inputs)
    got = _run(net, inputs)
    assert got.shape == expected.shape == inputs["img"].shape
    assert np.abs(expected).max() > 0.5, "reference output is trivially small"
    diff = np.abs(got - expected).max()
    assert diff < TOL, f"{case}: max abs diff {diff:.2e}"


def test_conditioning_branches_are_live(models):
    """The i2v reference latent, the guidance value and sample 1's positions (Flux RoPE) each change the output,
    so the parity cases above cover live branches."""
    net, ref = models("v2")
    base = tiny_inputs("v2", cond="i2v")
    t2v = tiny_inputs("v2", cond="t2v")
    assert np.abs(_reference(ref, base)[0] - _reference(ref, t2v)[0]).max() > 0.05
    net, ref = models("flux_dev")
    base = tiny_inputs("flux_dev")
    other = dict(base, guidance=base["guidance"] + 1.0)
    assert np.abs(_reference(ref, base) - _reference(ref, other)).max() > 0.05
    shifted = _shift_second_row(tiny_inputs("flux_dev"))
    assert np.abs(_reference(ref, base)[1] - _reference(ref, shifted)[1]).max() > 0.05


def test_rope_forms_are_not_interchangeable(models, tmp_path):
    """The same 2.0 weights run with Flux's RoPE form instead of the Liger form give another result (notes 6.2)."""
    _, ref = models("v2")
    inputs = tiny_inputs("v2")
    flux_form, _ = tiny_mmdit("v2", tmp_path, use_liger_rope=False)  # same seed: same weights
    assert np.abs(_run(flux_form, inputs) - _reference(ref, inputs)).max() > 0.05


@pytest.mark.parametrize("layout", ["v2", pytest.param("flux_dev", marks=pytest.mark.extended)])
def test_prepared_conditioning_graph_and_pynative(models, layout):
    """prepare_conditioning once, then forwards with img and timesteps only: the same numbers as the full
    forward, in PyNative and in graph mode, for a second prompt batch too (no stale compiled constants)."""
    net, ref = models(layout)
    keys = ("img_ids", "txt", "txt_ids", "y_vec", "cond", "guidance")
    runs = [(ms.PYNATIVE_MODE, 0, "prepared"), (ms.PYNATIVE_MODE, 0, "full"), (ms.GRAPH_MODE, 0, "full"),
            (ms.GRAPH_MODE, 0, "prepared"), (ms.GRAPH_MODE, 1, "prepared")]  # seed 1: another prompt batch
    outs = {}
    try:
        for mode, seed, kind in runs:
            ms.set_context(mode=mode)
            inputs = tiny_inputs(layout, seed=seed)
            tensors = {k: ms.Tensor(v) for k, v in inputs.items()}
            if kind == "full":
                outs[mode, seed, kind] = net(**tensors).asnumpy()
            else:
                prepared = net.prepare_conditioning(**{k: tensors[k] for k in keys if k in tensors})
                outs[mode, seed, kind] = net(tensors["img"], timesteps=tensors["timesteps"], **prepared).asnumpy()
            diff = np.abs(outs[mode, seed, kind] - _reference(ref, inputs)).max()
            assert diff < TOL, (mode, seed, kind, diff)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    pynative = outs[ms.PYNATIVE_MODE, 0, "full"]
    for key in [(ms.PYNATIVE_MODE, 0, "prepared"), (ms.GRAPH_MODE, 0, "full"), (ms.GRAPH_MODE, 0, "prepared")]:
        assert np.abs(outs[key] - pynative).max() < 1e-5, key


@pytest.mark.parametrize("layout", ["v2", "flux_dev"])
def test_non_cpu_formulations_match_reference(layout, tmp_path):
    """Off the CPU backend the layers keep their plain forms (fused LayerNorm and broadcasting modulation and
    gates, ReduceMean in the RMS norm, RoPE pairs by slicing: halves for Liger, interleaved for Flux); they
    must match the reference too, in graph mode. The same weights loaded into the model built with the plain
    formulations (forms.formulations)."""
    with forms.formulations(cpu=False):
        net, ref = tiny_mmdit(layout, tmp_path)
    rotations = {cell._rotate for _, cell in net.cells_and_names() if isinstance(cell, JointAttention)}
    plain = forms.ROTATE_HALVES.plain if layout == "v2" else forms.ROTATE_PAIRS.plain
    assert rotations == {plain}  # the plain forms were really built
    inputs = tiny_inputs(layout)
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        got = _run(net, inputs)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.abs(got - _reference(ref, inputs)).max() < TOL


def test_missing_inputs_and_bad_ids(models):
    net, _ = models("v2")
    inputs = {k: ms.Tensor(v) for k, v in tiny_inputs("v2").items()}
    with pytest.raises(ValueError, match="conditional input"):
        net(**{k: v for k, v in inputs.items() if k != "cond"})
    with pytest.raises(ValueError, match="whole numbers"):
        net.prepare_conditioning(ms.Tensor(position_ids(2, 3, 4, 6) + 0.5), inputs["txt"], inputs["txt_ids"],
                                 inputs["y_vec"], inputs["cond"])
    net, _ = models("flux_dev")
    inputs = {k: ms.Tensor(v) for k, v in tiny_inputs("flux_dev").items()}
    with pytest.raises(ValueError, match="guidance strength"):
        net(**{k: v for k, v in inputs.items() if k != "guidance"})
