"""Training checkpoints: a process killed while writing one leaves the previous one usable; keep-k."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from opensora.training.checkpoint_manager import CheckpointManager, is_complete

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Saves step 1, then dies (os._exit: no cleanup, like a SIGKILL) right after the model file of step 2
# was written, before the optimizer state and meta.json.
KILLED_SAVE = r"""
import os, sys
import numpy as np
sys.path.insert(0, {root!r})
import opensora.training.checkpoint_manager as cm
mgr = cm.CheckpointManager({out!r}, keep_last=2)
state = lambda v: {{"w": np.full((3,), v, np.float32)}}
mgr.save(1, state(1.0), state(1.5), {{"adam_step": np.array(1, np.int32)}}, {{"epoch": 0, "batch_in_epoch": 1}}, False)
real = cm.save_checkpoint
def dying(params, path):
    real(params, path)
    if path.endswith("model.ckpt"):
        os._exit(9)
cm.save_checkpoint = dying
mgr.save(2, state(2.0), state(2.5), {{"adam_step": np.array(2, np.int32)}}, {{"epoch": 0, "batch_in_epoch": 2}}, False)
"""


def test_killed_while_writing_leaves_previous_checkpoint_usable(tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE.format(root=ROOT, out=out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    leftover = os.path.join(out, "checkpoints", ".step_00000002.tmp")
    assert os.path.isdir(leftover)  # the half-written one exists...
    mgr = CheckpointManager(out, keep_last=2)
    assert not os.path.exists(leftover)  # ...is removed when the next run opens the folder...
    latest = mgr.latest()
    assert latest is not None and latest.endswith("step_00000001") and is_complete(latest)
    assert [os.path.basename(p) for p in mgr.list()] == ["step_00000001"]  # ...and was never offered
    state = mgr.read(latest, world=1, shard_state=False)
    np.testing.assert_array_equal(state["model"]["w"].asnumpy(), np.full((3,), 1.0, np.float32))
    np.testing.assert_array_equal(state["ema"]["w"].asnumpy(), np.full((3,), 1.5, np.float32))
    assert state["meta"]["step"] == 1 and state["meta"]["batch_in_epoch"] == 1
    assert mgr.resolve("latest") == latest and mgr.resolve(out) == latest
    # the next save replaces the leftover and keep_last=2 prunes older checkpoints
    for step in (2, 3, 4):
        mgr.save(step, {"w": np.zeros(3, np.float32)}, None, {"adam_step": np.array(step, np.int32)},
                 {"epoch": 0, "batch_in_epoch": step}, False)
    assert [os.path.basename(p) for p in mgr.list()] == ["step_00000003", "step_00000004"]
    assert not any(name.endswith(".tmp") for name in os.listdir(mgr.root))
