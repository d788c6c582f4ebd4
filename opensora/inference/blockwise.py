"""Run an STDiT3 forward block by block through ONE compiled spatial and ONE compiled temporal block graph.

Why: in graph mode on the CPU backend MindSpore allocates every intermediate of a compiled graph
statically and keeps it for the graph's lifetime (measured ~2.8 GB per full-size spatial+temporal
block pair at the 144p 2 s latent, unchanged by ``memory_optimize_level``, ``MS_DEV_RUNTIME_CONF``
or jit level O1). The whole 56-block graph would need ~80 GB, and ``mindspore.lazy_inline`` (one
reusable block graph, what mindone does on Ascend) fails on CPU ("Input[0] must be a Primitive
ValueNode" in the segment runner). So here block 0 of each kind is the executor: its graph is
compiled once and, before each call, its Parameters are pointed at the tensors of block ``i`` with
``Parameter.set_data`` (a reference swap, no copy: the compiled graph reads whatever tensor its
Parameters hold; copying the ~170 MB of a block pair's weights with ``ops.assign`` cost ~0.1 s per
pair). Peak memory: ~2 block graphs + the weights.

An execution strategy for inference on the CPU (no gradients), chosen by ``--blockwise``; on Ascend the
whole-model graph reuses its memory and needs no such runner. Equality with the model's own forward:
tests/test_stdit_blockwise.py and benchmarks/stdit.py --check.
"""
from __future__ import annotations

import mindspore as ms


class BlockwiseRunner:
    """``BlockwiseRunner(net)(x, timestep, y, mask, x_mask, fps, height, width, y_kv)`` == ``net(...)``.

    Block 0's Parameters are the executors' weight slots; they hold block 0's weights again when a
    call returns, so ``net`` itself stays usable. Nothing is ever written into a slot (that would
    write into the block it points at). Graph mode (``ms.GRAPH_MODE``) makes the blocks compiled
    graphs; in PyNative the runner also works (op by op)."""

    def __init__(self, net):
        self.net = net
        self.depth = net.depth
        self.executors = (net.spatial_blocks[0], net.temporal_blocks[0])
        self.slots = [[p for _, p in ex.parameters_and_names()] for ex in self.executors]
        names = [[n for n, _ in ex.parameters_and_names()] for ex in self.executors]
        self.weights = []  # weights[i][kind]: block i's tensors in executor slot order
        for i in range(self.depth):
            per_kind = []
            for kind, blocks in enumerate((net.spatial_blocks, net.temporal_blocks)):
                params = dict(blocks[i].parameters_and_names())
                if i == 0:  # the slots themselves: keep block 0's values to point them back at
                    per_kind.append([ms.Tensor(params[n].asnumpy()) for n in names[kind]])
                else:
                    per_kind.append([params[n] for n in names[kind]])
            self.weights.append(per_kind)
        self.bound = [0, 0]

    frame_conditioning = True  # STDiT3

    def prepare_conditioning(self, y, mask=None) -> dict:
        """The model's once-per-prompt-batch conditioning (the caption keys/values of every block)."""
        return self.net.prepare_conditioning(y, mask)

    def _bind(self, kind, i):
        if self.bound[kind] != i:
            for slot, tensor in zip(self.slots[kind], self.weights[i][kind]):
                slot.set_data(tensor)
            self.bound[kind] = i

    def __call__(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, y_kv=None,
                 **kwargs):
        net = self.net
        p = net.prepare(x, timestep, y, mask, x_mask, fps, height, width, y_kv)
        rope = ms.mutable(p["rope"])  # a tuple of fresh tensors would be a graph constant: a recompile per call
        spatial, temporal = self.executors
        x, y_kv = p["tokens"], p["y_kv"]
        common = dict(mask=p["mask"], x_mask=x_mask, t0=p["t0_mlp"])
        try:
            for i in range(self.depth):
                self._bind(0, i)
                x = spatial(x, p["cond"], p["t_mlp"], kv=None if y_kv is None else y_kv[i], **common)
                self._bind(1, i)
                x = temporal(x, p["cond"], p["t_mlp"], rope=rope, kv=None if y_kv is None else y_kv[self.depth + i],
                             **common)
        finally:  # leave the model intact, also when a block fails half-way (the next call starts at block 0)
            self._bind(0, 0)
            self._bind(1, 0)
        return net.finish(x, p["t"], x_mask, p["t0"], p["sizes"])
