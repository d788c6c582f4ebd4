"""Reading PyTorch weight files and writing checked MindSpore checkpoints: shared by every converter.

This is one of the only places in the project where torch is imported (conversion needs it to read
``.bin``/``.pth`` pickles; ``.safetensors`` are read without it). ``torch.load`` is always called with
``weights_only=True`` so that a checkpoint cannot run code.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402  (imported before safetensors so that bf16 files can be read)

from opensora.utils.checkpoint import CheckpointError, KeyReport, atomic_path, compare_shapes  # noqa: E402

WRAPPER_KEYS = ("ema", "state_dict", "model", "module")
DTYPES = {"float32": ms.float32, "fp32": ms.float32, "float16": ms.float16, "fp16": ms.float16,
          "bfloat16": ms.bfloat16, "bf16": ms.bfloat16}


def unwrap_state_dict(obj) -> dict:
    """Official checkpoints nest the weights under ``ema``/``state_dict``/``model`` and may prefix ``module.``."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError("the file does not hold a state dict (a mapping of names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: widen exactly to float32
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def read_weight_file(path: str) -> dict[str, np.ndarray]:
    """One ``.safetensors``, ``.bin``, ``.pth``, ``.pt`` or ``.ckpt`` (PyTorch pickle) file -> name -> array."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        params = ms.load_checkpoint(path, format="safetensors")
        return {k: _ms_to_numpy(v) for k, v in params.items()}
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _torch_to_numpy(v) for k, v in unwrap_state_dict(obj).items() if hasattr(v, "detach")}


def _ms_to_numpy(value) -> np.ndarray:
    if value.dtype == ms.bfloat16:
        value = value.astype(ms.float32)
    return value.asnumpy()


def weight_files(source: str | Iterable[str], patterns=(".safetensors", ".bin", ".pth", ".pt")) -> list[str]:
    """A file, a list of files, or a directory (its weight files, safetensors preferred over .bin)."""
    if isinstance(source, (list, tuple)):
        return [f for s in source for f in weight_files(s, patterns)]
    if os.path.isdir(source):
        names = sorted(os.listdir(source))
        for ext in patterns:
            found = [os.path.join(source, n) for n in names if n.endswith(ext) and not n.startswith(".")]
            if found:
                return found
        raise CheckpointError(f"no weight files ({', '.join(patterns)}) in {source}")
    return [source]


def convert(
    sources: Iterable[str],
    target: str,
    expected_shapes: Mapping[str, tuple],
    rename: Callable[[str, np.ndarray], Iterator[tuple[str, np.ndarray]]] | None = None,
    dtype: str | None = None,
    ignore_unexpected: Callable[[str], bool] = lambda name: False,
) -> KeyReport:
    """Convert weight files into one checked ``.ckpt``, reading one file at a time.

    ``rename(name, array)`` yields the MindSpore (name, array) pairs for one source tensor: the
    documented table of true differences of each model (identity when ``None``). Every key and
    shape is compared with ``expected_shapes`` (the MindSpore model's); on any problem the full
    list is raised and nothing is written. Peak memory is the converted weights plus one file.
    """
    ms_dtype = DTYPES[dtype] if dtype else None
    converted: dict[str, ms.Tensor] = {}
    for path in sources:
        for name, array in read_weight_file(path).items():
            pairs = rename(name, array) if rename else [(name, array)]
            for new_name, new_array in pairs:
                if ignore_unexpected(new_name):
                    continue
                tensor = ms.Tensor(np.ascontiguousarray(new_array))
                converted[new_name] = tensor.astype(ms_dtype) if ms_dtype else tensor
    report = compare_shapes({k: v.shape for k, v in converted.items()}, expected_shapes)
    if not report.ok:
        raise CheckpointError(f"the weights do not match the MindSpore model; nothing was written:\n{report.format()}")
    os.makedirs(os.path.dirname(os.path.abspath(target)) or ".", exist_ok=True)
    tmp = atomic_path(target)
    ms.save_checkpoint([{"name": k, "data": converted[k]} for k in expected_shapes], tmp)
    os.replace(tmp if os.path.exists(tmp) else tmp + ".ckpt", target)
    return report
