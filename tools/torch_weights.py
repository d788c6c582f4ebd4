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

from opensora.dtypes import DTYPE_CHOICES, canonical, to_ms_dtype  # noqa: E402
from opensora.utils.checkpoint import CheckpointError, KeyReport, compare_shapes  # noqa: E402
from opensora.utils.files import atomic_write  # noqa: E402

WRAPPER_KEYS = ("ema", "state_dict", "model", "module")


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
    obj = torch_load(path)
    return {k: _torch_to_numpy(v) for k, v in unwrap_state_dict(obj).items() if hasattr(v, "detach")}


def torch_load(path: str):
    """``torch.load(path, weights_only=True)``, memory-mapped when possible. A file that is not a plain
    tensor pickle (it would run code to load) or not a PyTorch file at all is a :class:`CheckpointError`."""
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) pickles cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # not a pickle at all
            raise CheckpointError(f"{path}: cannot be read as a PyTorch weight file ({err})") from None
        reason = next((line.strip() for line in str(err).splitlines()
                       if line.strip().startswith(("WeightsUnpickler error", "Unsupported"))), "")
        reason = reason.split(". Please")[0].split(" Please")[0].rstrip(".")  # not torch's how-to-allow hint
        raise CheckpointError(
            f"{path}: refused: this pickle holds more than tensors and would run code to load"
            f"{f' ({reason})' if reason else ''}. Only plain weights are read here. Re-save the state dict "
            "(torch.save(model.state_dict(), ...)) or a .safetensors file from a source you trust") from None
    except Exception as err:  # torch raises many types for files that are not PyTorch checkpoints
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: cannot be read as a PyTorch weight file ({type(err).__name__}"
                              f"{': ' + first if first else ''})") from None


def check_target(sources, target: str, overwrite: bool) -> None:
    """Before any weight is read: the target's folder is writable, it is none of the sources, and an
    existing target is replaced only with ``--overwrite``."""
    from opensora.utils.outputs import OutputError, prepare_output_dir

    sources = [sources] if isinstance(sources, str) else list(sources)
    if any(os.path.abspath(s) == os.path.abspath(target) for s in sources):
        raise OutputError(f"--target {target} is also the source; write the converted weights to another file")
    if os.path.isdir(target):
        raise OutputError(f"--target {target} is a folder; give a file name (e.g. {target}/model.ckpt)")
    if os.path.exists(target) and not overwrite:
        raise OutputError(f"--target {target} already exists; give --overwrite to replace it")
    prepare_output_dir(os.path.dirname(os.path.abspath(target)), "--target's folder")


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


def check_sources(sources: list[str], dtype: str | None) -> None:
    """The converters' argument checks: every ``--src`` exists, ``--dtype`` is known."""
    missing = [s for s in sources if not os.path.exists(s)]
    if missing:
        raise CheckpointError(f"--src not found: {', '.join(missing)}")
    if dtype is not None:
        try:
            canonical(dtype)
        except ValueError as err:
            raise CheckpointError(f"--dtype: {err}") from None


def weights_parser(doc: str, src_help: str, target_help: str):
    """The flags of the by-name weight converters (STDiT, MMDiT): --src, --target, --dtype, --kwargs, --overwrite."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help=src_help)
    parser.add_argument("--target", required=True, help=target_help)
    parser.add_argument("--dtype", default=None, help="cast to fp32/fp16/bf16 (default: keep)")
    parser.add_argument("--kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model constructor arguments overriding the official ones")
    parser.add_argument("--overwrite", action="store_true", help="replace --target if it exists")
    return parser


def folder_converter_main(argv, doc: str, model: str, convert_fn) -> int:
    """The command line of the converters of Hugging Face folders (T5, CLIP): ``--src``, ``--target``,
    ``--dtype``, ``--config``, then ``convert_fn(src, target, dtype, config)``."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--src", nargs="+", required=True, help=f"Hugging Face {model} directory or weight files")
    parser.add_argument("--target", required=True, help="output .ckpt or .safetensors (e.g. <dir>/model.ckpt)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="cast floats (default: keep)")
    parser.add_argument("--config", default=None, help="config.json (default: the one in the source directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace --target if it exists")
    args = parser.parse_args(argv)
    check_target(args.src, args.target, args.overwrite)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert_fn(args.src, args.target, args.dtype, args.config)
    return 0


def find_config_json(sources: list[str], config: str | None, repo: str) -> str:
    """``config`` if given, else the ``config.json`` next to the first source that has one."""
    dirs = [s if os.path.isdir(s) else os.path.dirname(os.path.abspath(s)) for s in sources]
    candidates = [config] if config else [os.path.join(d, "config.json") for d in dict.fromkeys(dirs)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise CheckpointError(f"no config.json found (looked at {', '.join(candidates)}); pass --config with the "
                          f"config.json of the Hugging Face repository {repo}")


def iter_weight_file(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of one weight file, one tensor at a time (safetensors lazily, .bin memory-mapped).

    Unlike :func:`read_weight_file` this never holds the converted arrays of a whole file, so a
    converter's peak memory is one tensor plus what the operating system caches of the file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="np") as f:  # bf16 readable because mindspore is imported
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    obj = torch_load(path)
    for name, value in unwrap_state_dict(obj).items():
        if hasattr(value, "detach"):
            yield name, _torch_to_numpy(value)


def weight_file_shapes(path: str) -> dict[str, tuple]:
    """Name -> shape of one weight file without reading its data (safetensors header / mmap)."""
    if path.endswith(".safetensors"):
        import json
        import struct

        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    obj = torch_load(path)
    return {k: tuple(v.shape) for k, v in unwrap_state_dict(obj).items() if hasattr(v, "shape")}


_CKPT_TYPES = {"float32": "Float32", "float16": "Float16", "float64": "Float64", "bfloat16": "BFloat16",
               "int8": "Int8", "uint8": "UInt8", "int16": "Int16", "uint16": "UInt16", "int32": "Int32",
               "uint32": "UInt32", "int64": "Int64", "uint64": "UInt64", "bool": "Bool"}
_SLICE_BYTES = 512 * 1024 * 1024  # MindSpore also slices big tensors; the loader joins slices of one tag


def _cast(array: np.ndarray, ms_dtype) -> np.ndarray:
    if ms_dtype is None or not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        return array
    from mindspore.common import np_dtype

    target = {ms.float32: np.float32, ms.float16: np.float16, ms.bfloat16: np_dtype.bfloat16}[ms_dtype]
    if array.dtype.name == "bfloat16" and target is not np_dtype.bfloat16:
        array = array.astype(np.float32)
    return array.astype(target, copy=False)


def write_ckpt_tensor(f, name: str, array: np.ndarray) -> None:
    """Append one tensor to an open ``.ckpt`` in MindSpore's format (a stream of ``Checkpoint`` messages)."""
    from mindspore.train.checkpoint_pb2 import Checkpoint

    array = np.ascontiguousarray(array)
    if array.dtype.name not in _CKPT_TYPES:
        raise CheckpointError(f"{name}: dtype {array.dtype} cannot be stored in a MindSpore checkpoint")
    data = array.reshape(-1).view(np.uint8)
    for start in range(0, max(len(data), 1), _SLICE_BYTES):
        message = Checkpoint()
        value = message.value.add()
        value.tag = name
        value.tensor.dims.extend(array.shape if array.ndim else [0])
        value.tensor.tensor_type = _CKPT_TYPES[array.dtype.name]
        value.tensor.tensor_content = data[start:start + _SLICE_BYTES].tobytes()
        f.write(message.SerializeToString())


class CkptWriter:
    """Appends tensors to a MindSpore ``.ckpt``."""

    def __init__(self, f, expected_shapes: Mapping[str, tuple]):
        self.f = f

    def write(self, name: str, array: np.ndarray) -> None:
        write_ckpt_tensor(self.f, name, array)

    def finish(self) -> None:
        pass


_SAFETENSORS_TYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "bfloat16": "BF16", "int8": "I8",
                      "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32",
                      "int64": "I64", "uint64": "U64", "bool": "BOOL"}


class SafetensorsWriter:
    """Streams tensors into a ``.safetensors`` file: a header slot sized for ``expected_shapes`` is
    reserved first and filled (padded with spaces, as the format allows) once the data is written.

    MindSpore reads ``.safetensors`` lazily (``load_checkpoint(format="safetensors")``), whereas a
    ``.ckpt`` is parsed whole and needs free memory larger than the file: prefer this for big models.
    """

    def __init__(self, f, expected_shapes: Mapping[str, tuple]):
        self.f, self.entries, self.offset = f, {}, 0
        bound = {k: {"dtype": "BOOL", "shape": list(v), "data_offsets": [10 ** 15, 10 ** 15]}
                 for k, v in expected_shapes.items()}
        self.header_size = len(self._header(bound)) + 64
        self.header_size += -self.header_size % 8
        f.write(b" " * (8 + self.header_size))

    @staticmethod
    def _header(entries: dict) -> bytes:
        import json

        return json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()

    def write(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype.name not in _SAFETENSORS_TYPES:
            raise CheckpointError(f"{name}: dtype {array.dtype} cannot be stored in a .safetensors file")
        data = array.reshape(-1).view(np.uint8)
        self.f.write(memoryview(data))
        self.entries[name] = {"dtype": _SAFETENSORS_TYPES[array.dtype.name], "shape": list(array.shape),
                              "data_offsets": [self.offset, self.offset + len(data)]}
        self.offset += len(data)

    def finish(self) -> None:
        import struct

        header = self._header(self.entries)
        if len(header) > self.header_size:
            raise CheckpointError("internal error: the safetensors header outgrew its reserved space")
        self.f.seek(0)
        self.f.write(struct.pack("<Q", self.header_size) + header + b" " * (self.header_size - len(header)))


def convert(
    sources: Iterable[str],
    target: str,
    expected_shapes: Mapping[str, tuple],
    rename: Callable[[str, np.ndarray], Iterator[tuple[str, np.ndarray]]] | None = None,
    dtype: str | None = None,
    ignore_unexpected: Callable[[str], bool] = lambda name: False,
) -> KeyReport:
    """Convert weight files into one checked ``.ckpt`` (or ``.safetensors``, by ``target``'s name), one tensor at a time.

    ``rename(name, array)`` yields the MindSpore (name, array) pairs for one source tensor: the
    documented table of true differences of each model (identity when ``None``). Every key and
    shape is compared with ``expected_shapes`` (the MindSpore model's); on any problem (missing,
    unexpected, mis-shaped or duplicated keys) the full list is raised and nothing is written.
    Tensors are appended to a temporary file as they are read and the file is renamed onto
    ``target`` only when everything matched, so peak memory is about one tensor (plus the OS
    page cache) rather than a copy of the model, and a crash never leaves a half ``target``.
    """
    ms_dtype = to_ms_dtype(dtype) if dtype else None
    shapes: dict[str, tuple] = {}
    duplicates: list[str] = []
    with atomic_write(target) as tmp:  # renamed onto target only when every key matched
        with open(tmp, "wb") as f:
            writer = (SafetensorsWriter if target.endswith(".safetensors") else CkptWriter)(f, expected_shapes)
            for path in sources:
                for name, array in iter_weight_file(path):
                    for new_name, new_array in (rename(name, array) if rename else [(name, array)]):
                        if ignore_unexpected(new_name):
                            continue
                        if new_name in shapes:
                            duplicates.append(new_name)
                            continue
                        shapes[new_name] = tuple(new_array.shape)
                        # once something is wrong, keep reading (to list every problem) but stop writing
                        if not duplicates and expected_shapes.get(new_name) == shapes[new_name]:
                            writer.write(new_name, _cast(new_array, ms_dtype))
            report = compare_shapes(shapes, expected_shapes)
            if not duplicates and report.ok:
                writer.finish()
        if duplicates or not report.ok:
            extra = f"\n{len(duplicates)} key(s) given more than once:\n" + "\n".join(f"  {k}" for k in duplicates) \
                if duplicates else ""
            raise CheckpointError(
                f"the weights do not match the MindSpore model; nothing was written:\n{report.format()}{extra}")
    return report
