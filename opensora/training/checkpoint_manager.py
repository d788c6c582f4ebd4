"""Training checkpoints: atomic, keep the last K, resume from the latest or a given one.

Layout of one checkpoint (a directory ``<output>/checkpoints/step_00000100``):

* ``model.ckpt``  the model's weights under their plain names (loads into the model / inference as is)
* ``ema.ckpt``    the EMA weights, also under the model's plain names
* ``train_state_rank{r}.ckpt``  optimizer moments and step, loss scale (+ counter); with ZeRO-1 one file
  per rank (each holds its own slice), otherwise only rank 0's
* ``meta.json``   step, data position (epoch, batch in epoch), world size, zero stage, file list;
  written last: a directory is a checkpoint only if it has its final name AND meta.json.

Atomicity: everything is written into ``.step_XXXXXXXX.tmp`` and the directory is renamed to its final
name at the end (a single ``rename``), so a process killed mid-save leaves the previous checkpoint as
the latest usable one. An interrupted save (Ctrl-C, SIGTERM, an error) removes its temporary directory;
leftovers of a killed one are removed when the next run opens the folder (and by every save).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Callable

from ..utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..utils.files import atomic_write, remove_stale_temporaries

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.csv"


def _write_json_atomic(path: str, data: dict) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())


def run_files(output_dir: str) -> list[str]:
    """What in ``output_dir`` belongs to a training run (its log, its checkpoints); [] for a new folder."""
    found = []
    if os.path.isfile(os.path.join(output_dir, LOG_FILE)):
        found.append(LOG_FILE)
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    if os.path.isdir(root):
        found += sorted(f"{CHECKPOINT_DIR}/{n}" for n in os.listdir(root) if _STEP_DIR.match(n))
    return found


def _is_save_leftover(name: str) -> bool:
    return name.startswith(".step_") and name.endswith(".tmp")


def is_complete(path: str) -> bool:
    meta = os.path.join(path, "meta.json")
    if not (_STEP_DIR.match(os.path.basename(path.rstrip("/"))) and os.path.isfile(meta)):
        return False
    try:
        with open(meta, "r", encoding="utf-8") as f:
            files = json.load(f).get("files", [])
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(os.path.join(path, name)) for name in files)


class CheckpointManager:
    def __init__(self, output_dir: str, keep_last: int = 3, rank: int = 0, world: int = 1,
                 barrier: Callable[[], None] | None = None):
        self.root = os.path.join(output_dir, "checkpoints")
        self.keep_last = max(1, int(keep_last))
        self.rank, self.world = rank, world
        self.barrier = barrier or (lambda: None)
        os.makedirs(self.root, exist_ok=True)
        if rank == 0:
            self._remove_leftovers()

    # ------------------------------------------------------------------ finding
    def list(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        found = []
        for name in os.listdir(self.root):
            m = _STEP_DIR.match(name)
            path = os.path.join(self.root, name)
            if m and is_complete(path):
                found.append((int(m.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest(self) -> str | None:
        items = self.list()
        return items[-1] if items else None

    def resolve(self, resume) -> str | None:
        """``--resume``: True/"latest" -> the latest complete checkpoint (None when there is none);
        a path -> that checkpoint (a step directory, or an output folder holding ``checkpoints/``)."""
        if resume in (None, False, "", "false", "False"):
            return None
        if resume in (True, "latest", "true", "True"):
            return self.latest()
        path = str(resume)
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return CheckpointManager(path, world=self.world, rank=self.rank).latest()
        if not is_complete(path):
            raise CheckpointError(f"--resume {path}: not a complete training checkpoint (a directory "
                                  f"step_XXXXXXXX with meta.json); complete ones: {self.list() or 'none'}")
        return path

    # ------------------------------------------------------------------ saving
    def save(self, step: int, model_params: dict, ema_params: dict | None, train_state: dict, meta: dict,
             shard_state: bool) -> str:
        """Collective when world > 1: every rank calls it. ``*_params``: name -> Tensor/array."""
        name = f"step_{step:08d}"
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, f".{name}.tmp")
        if self.rank == 0:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        try:
            return self._save_into(tmp, final, step, model_params, ema_params, train_state, meta, shard_state)
        except BaseException:  # Ctrl-C, SIGTERM or an error mid-save: no half checkpoint stays behind
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_into(self, tmp, final, step, model_params, ema_params, train_state, meta, shard_state) -> str:
        self.barrier()
        files = []
        if self.rank == 0:
            save_checkpoint(model_params, os.path.join(tmp, "model.ckpt"))
            files.append("model.ckpt")
            if ema_params is not None:
                save_checkpoint(ema_params, os.path.join(tmp, "ema.ckpt"))
                files.append("ema.ckpt")
        state_ranks = range(self.world) if shard_state else [0]
        if self.rank in state_ranks:
            save_checkpoint(train_state, os.path.join(tmp, f"train_state_rank{self.rank}.ckpt"))
        files += [f"train_state_rank{r}.ckpt" for r in state_ranks]
        self.barrier()
        if self.rank == 0:
            _write_json_atomic(os.path.join(tmp, "meta.json"), {**meta, "step": step, "world": self.world,
                                                                 "sharded_state": bool(shard_state), "files": files})
            if os.path.isdir(final):  # re-saving the same step (e.g. resumed and saved again)
                shutil.rmtree(final)
            os.rename(tmp, final)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        for path in self.list()[:-self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temporary directories of saves killed midway (and stale temporaries of this naming)."""
        for name in os.listdir(self.root):
            if _is_save_leftover(name):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        remove_stale_temporaries(self.root)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def read_meta(path: str) -> dict:
        with open(os.path.join(path, "meta.json"), "r", encoding="utf-8") as f:
            return json.load(f)

    def read(self, path: str, world: int, shard_state: bool) -> dict:
        meta = self.read_meta(path)
        if shard_state and (not meta.get("sharded_state") or meta["world"] != world):
            raise CheckpointError(
                f"{path}: optimizer state was saved with world={meta['world']}, sharded={meta.get('sharded_state')}; "
                f"resuming with zero_stage 1 needs the same number of ranks ({world} now). Resume with "
                f"{meta['world']} ranks, or start from its model.ckpt with --ckpt_path (optimizer state reset).")
        state_file = f"train_state_rank{self.rank if shard_state else 0}.ckpt"
        if not shard_state and meta.get("sharded_state"):
            raise CheckpointError(f"{path}: optimizer state is sharded (zero_stage 1, world={meta['world']}); "
                                  "resume with zero_stage 1 and the same number of ranks")
        out = {"meta": meta, "model": read_checkpoint(os.path.join(path, "model.ckpt")),
               "train_state": read_checkpoint(os.path.join(path, state_file))}
        ema = os.path.join(path, "ema.ckpt")
        out["ema"] = read_checkpoint(ema) if os.path.isfile(ema) else None
        return out
