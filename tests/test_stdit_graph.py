"""Graph mode equals PyNative; precomputed caption keys/values equal the plain forward; recompute on/off
gives the same output and gradients; caption dropout uses the null embedding."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from tests.fixtures.tiny_stdit import build_tiny, perturb, tiny_inputs


def _numpy(t):
    return t.asnumpy()


@pytest.mark.parametrize("version", ["STDiT3", pytest.param("STDiT", marks=pytest.mark.extended),
                                     pytest.param("STDiT2", marks=pytest.mark.extended)])
def test_graph_mode_equals_pynative_and_kv_cache(version):
    ms.set_seed(0)
    net = build_tiny(version)
    inputs = tiny_inputs(version, x_mask=True)
    eager = _numpy(net(**inputs))
    kv, mask = net.precompute_y_kv(inputs["y"], inputs["mask"])
    eager_kv = _numpy(net(**{**inputs, "y": None, "y_kv": kv, "mask": mask}))
    assert np.abs(eager_kv - eager).max() < 1e-5

    ms.set_context(mode=ms.GRAPH_MODE)
    graph = _numpy(net(**inputs))
    assert np.abs(graph - eager).max() < 1e-5, np.abs(graph - eager).max()
    if version == "STDiT3":  # the sampler's path (one more compile: only for the model the teammates use first)
        graph_kv = _numpy(net(**{**inputs, "y": None, "y_kv": kv, "mask": mask}))
        assert np.abs(graph_kv - eager).max() < 1e-5


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, *args):
        out = self.net(*args)
        return (out * out).mean()


FORWARD_ARGS = {  # upstream's positional forward arguments
    "STDiT3": ("x", "timestep", "y", "mask", "x_mask", "fps", "height", "width"),
    "STDiT2": ("x", "timestep", "y", "mask", "x_mask", "num_frames", "height", "width", "ar", "fps"),
    "STDiT": ("x", "timestep", "y", "mask"),
}


@pytest.mark.parametrize("version", ["STDiT3", pytest.param("STDiT2", marks=pytest.mark.extended),
                                     pytest.param("STDiT", marks=pytest.mark.extended)])
def test_recompute_same_output_and_gradients(version):
    inputs = tiny_inputs(version, x_mask=True)
    args = [inputs[k] for k in FORWARD_ARGS[version]]
    results = []
    for recompute in (False, True):
        ms.set_seed(0)
        net = build_tiny(version, train=False, grad_checkpointing=recompute)
        perturb(net)  # zero-initialised layers would give all-zero gradients
        loss_net = _Loss(net)
        grad_fn = ms.value_and_grad(loss_net, None, loss_net.trainable_params())
        ms.set_context(mode=ms.GRAPH_MODE)
        loss, grads = grad_fn(*args)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        results.append((loss.asnumpy(), [g.asnumpy() for g in grads]))
    (l0, g0), (l1, g1) = results
    assert abs(float(l0) - float(l1)) < 1e-6
    assert len(g0) == len(g1) and len(g0) > 50
    assert max(np.abs(a - b).max() for a, b in zip(g0, g1)) < 1e-5
    assert any(np.abs(a).max() > 0 for a in g0)


def test_caption_dropout_uses_null_embedding():
    net = build_tiny("STDiT3")
    inputs = tiny_inputs("STDiT3", text_mask=False)
    null = ops.tile(net.y_embedder.y_embedding.reshape(1, 1, *net.y_embedder.y_embedding.shape), (2, 1, 1, 1))
    dropped = _numpy(net(**inputs, force_drop_ids=ms.Tensor(np.array([1, 1], np.int32))))
    with_null = _numpy(net(**{**inputs, "y": null}))
    assert np.abs(dropped - with_null).max() < 1e-6
    assert np.abs(dropped - _numpy(net(**inputs))).max() > 1e-3


def test_caption_extent_cuts_unattended_positions():
    from opensora.models.stdit.common import caption_extent

    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    length, cut = caption_extent(mask, 8, multiple=1)
    assert length == 5 and cut.asnumpy().tolist() == mask[:, :5].tolist()
    length, cut = caption_extent(mask, 8, multiple=4)  # rounded up to the multiple
    assert length == 8 and cut.shape == (2, 8)
    length, cut = caption_extent(mask[1:], 8, multiple=5)  # every kept position attended: no mask
    assert length == 5 and cut is None
    assert caption_extent(None, 8) == (8, None)
    assert caption_extent(np.ones((1, 8), np.int32), 8)[1] is None
    empty = np.zeros((1, 8), np.int32)  # nothing attended: left as it is
    assert caption_extent(empty, 8)[0] == 8 and caption_extent(empty, 8)[1] is empty


@pytest.mark.parametrize("version", ["STDiT3", "STDiT2", "STDiT"])
def test_precomputed_captions_cut_to_the_attended_positions(version):
    """Keys/values of the longest caption only (mask cut, or dropped when all valid) give the full forward."""
    ms.set_seed(0)
    net = build_tiny(version)
    inputs = tiny_inputs(version, x_mask=version != "STDiT")
    length = inputs["mask"].shape[1]
    positions = np.arange(length)
    for lengths in ((length - 2, length - 4), (2, 2)):  # cut with a mask; cut to all-valid: no mask
        mask = ms.Tensor((positions[None, :] < np.array(lengths)[:, None]).astype(np.int32))
        full = _numpy(net(**{**inputs, "mask": mask}))
        kv, cut = net.precompute_y_kv(inputs["y"], mask, multiple=1)
        kept = max(lengths)
        assert kv.shape[-2] == kept < length
        assert (cut is None) == (min(lengths) == kept)
        out = _numpy(net(**{**inputs, "y": None, "y_kv": kv, "mask": cut}))
        assert np.abs(out - full).max() < 1e-5, np.abs(out - full).max()
