"""The block-by-block graph-mode runner (one compiled spatial + one temporal block graph, weights of
block i copied in before its call) gives the model's PyNative forward (itself parity-tested against
the PyTorch reference in test_stdit_parity.py), also on a second call (the copies restore block 0)."""
import numpy as np
import pytest

import mindspore as ms

from opensora.inference.blockwise import BlockwiseRunner
from tests.fixtures.tiny_stdit import build_tiny, tiny_inputs


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_blockwise_runner_equals_forward():
    ms.set_seed(0)
    net = build_tiny("STDiT3")
    assert net.depth >= 2  # weights must actually be swapped
    inputs = tiny_inputs("STDiT3", x_mask=True)
    eager = net(**inputs).asnumpy()
    kv, mask = net.precompute_y_kv(inputs["y"], inputs["mask"])
    runner = BlockwiseRunner(net)
    ms.set_context(mode=ms.GRAPH_MODE)
    for _ in range(2):
        out = runner(**{**inputs, "y": None, "y_kv": kv, "mask": mask}).asnumpy()
        assert np.abs(out - eager).max() < 1e-5, np.abs(out - eager).max()
    plain = runner(**inputs).asnumpy()  # caption projected inside each block
    assert np.abs(plain - eager).max() < 1e-5
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.abs(net(**inputs).asnumpy() - eager).max() < 1e-6  # block 0's weights are restored
