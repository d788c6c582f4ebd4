"""A text encoder from a local Hugging Face folder: tokenizer + MindSpore model + checked weights (T5 and CLIP).

``from_pretrained`` is a directory laid out like the Hugging Face repository (``config.json``, tokenizer
files, weights: a converted ``model.ckpt``, else its ``.safetensors`` files, which MindSpore reads lazily),
or a converted ``.ckpt``/``.safetensors`` file whose directory holds ``config.json`` and the tokenizer
(``tokenizer_path`` may point elsewhere). A repository id such as ``"DeepFloyd/t5-v1_1-xxl"`` is looked up
under ``cache_dir`` (``cache_dir/t5-v1_1-xxl``, ``cache_dir/DeepFloyd/t5-v1_1-xxl`` or the Hugging Face
cache layout); nothing is downloaded. PyTorch ``.bin`` files are converted once with the model's tool.
"""
from __future__ import annotations

import glob
import logging
import os

import numpy as np

import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from ...dtypes import to_ms_dtype
from ...errors import MissingFileError
from ...utils.checkpoint import CheckpointError, KeyReport, load_into, read_checkpoint
from ..layers import forms
from .tokenizer import load_tokenizer, tokenize

logger = logging.getLogger(__name__)

CONVERTED_NAME = "model.ckpt"


def check_dtype_supported(dtype: ms.Type, name: str = "T5") -> None:
    """bfloat16 only where the backend computes in it (Ascend); the CPU backend can only cast bf16."""
    if dtype == ms.bfloat16 and not forms.bfloat16_compute_available():
        raise ValueError(f"{name} in bfloat16 needs an Ascend device (MindSpore's CPU backend has no bfloat16 "
                         "matmul/norm/softmax kernels); use dtype float32 or float16 here")


def resolve_pretrained(from_pretrained: str, cache_dir: str | None = None, name: str = "T5",
                       repo: str = "DeepFloyd/t5-v1_1-xxl", files: str = "spiece.model, tokenizer files") -> str:
    """A local directory or weight file for ``from_pretrained`` (no network): see the module doc."""
    if from_pretrained is None:
        raise ValueError(f"{name} needs from_pretrained: a local {repo} directory or a converted .ckpt")
    tried = [from_pretrained]
    if os.path.exists(from_pretrained):
        return from_pretrained
    if cache_dir:
        _, _, base = from_pretrained.rpartition("/")
        candidates = [os.path.join(cache_dir, from_pretrained), os.path.join(cache_dir, base)]
        hub = os.path.join(cache_dir, f"models--{from_pretrained.replace('/', '--')}", "snapshots", "*")
        candidates += sorted(glob.glob(hub), key=os.path.getmtime, reverse=True)
        for candidate in candidates:
            tried.append(candidate)
            if os.path.isdir(candidate):
                return candidate
    raise MissingFileError(
        f"{name} weights not found; tried: {', '.join(tried)}. Download the Hugging Face repository "
        f"{repo} (config.json, {files}, weights) to a local directory and pass it as from_pretrained "
        "(or set cache_dir); nothing is downloaded at run time")


def find_weights(model_dir: str, converter: str, repo: str) -> list[str]:
    """The weight files of a model directory: ``model.ckpt`` (converted), else its ``*.safetensors`` files.

    ``.bin`` files need converting first with ``converter`` (reading them needs torch, which the package
    never imports).
    """
    converted = os.path.join(model_dir, CONVERTED_NAME)
    if os.path.isfile(converted):
        return [converted]
    shards = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if shards:
        return shards
    if glob.glob(os.path.join(model_dir, "*.bin")):
        raise CheckpointError(
            f"{model_dir} holds PyTorch .bin weights, which MindSpore cannot read; convert them once with\n"
            f"  python {converter} --src {model_dir} --target {converted}\n"
            f"(or --target {os.path.join(model_dir, 'model.safetensors')}, which MindSpore reads lazily: "
            "better for big models)")
    raise CheckpointError(f"no weights in {model_dir}: expected {CONVERTED_NAME} ({converter}) or the "
                          f".safetensors files of {repo}")


def load_renamed(model, paths: list[str], map_names, converter: str) -> KeyReport:
    """Read converted ``.ckpt`` or official ``.safetensors`` file(s), rename them with ``map_names`` (official
    names -> {official: MindSpore name} of the kept keys) and load them strictly: any missing, unexpected or
    mis-shaped key raises with the full list and nothing is loaded."""
    params: dict[str, ms.Parameter] = {}
    for path in paths:
        if path.endswith((".bin", ".pth", ".pt")):
            raise CheckpointError(f"{path}: PyTorch pickles cannot be read without torch; convert with "
                                  f"python {converter} --src {path} --target <file>.ckpt")
        raw = read_checkpoint(path)
        for name, new in map_names(raw).items():
            if new in params:
                raise CheckpointError(f"{new} is given twice (second time in {path})")
            params[new] = raw[name]
    source = paths[0] if len(paths) == 1 else f"{os.path.dirname(paths[0])} ({len(paths)} files)"
    return load_into(model, params, source=source, strict=True)


class PretrainedTextModel:
    """Tokenizer + model + strict weight loading, shared by :class:`~.embedder.T5Embedder` and
    :class:`~.conditioner.CLIPEmbedder`. Subclasses set what differs below."""

    name = "T5"
    repo = "DeepFloyd/t5-v1_1-xxl"
    tokenizer_files: tuple = ("spiece.model", "tokenizer.json")
    converter = "tools/convert_t5.py"
    config_class = None  # has from_json(path)
    model_class = None  # model_class(config, dtype=...)
    map_names = None  # staticmethod: official names -> {official name: MindSpore name} of the keys used

    def check_max_length(self) -> None:
        """Refuse a ``model_max_length`` the model cannot take (before the weights are read)."""

    def __init__(self, from_pretrained: str, model_max_length: int, dtype=ms.float32, cache_dir: str | None = None,
                 tokenizer_path: str | None = None):
        self.dtype = to_ms_dtype(ms.float32 if dtype is None else dtype)
        check_dtype_supported(self.dtype, self.name)
        location = resolve_pretrained(from_pretrained, cache_dir, self.name, self.repo,
                                      " or ".join(self.tokenizer_files))
        if os.path.isdir(location):
            model_dir, weights = location, find_weights(location, self.converter, self.repo)
        else:
            model_dir, weights = os.path.dirname(os.path.abspath(location)), [location]
        config_path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(config_path):
            raise MissingFileError(f"no config.json next to the {self.name} weights in {model_dir}; copy it from "
                                    f"the Hugging Face repository {self.repo}")
        self.model_max_length = int(model_max_length)
        if self.model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {model_max_length}")
        # fail fast, before the weights
        self.tokenizer = load_tokenizer(tokenizer_path or model_dir, self.name, self.tokenizer_files, self.repo)
        self.config = self.config_class.from_json(config_path)
        self.check_max_length()
        with no_init_parameters():  # weights come from the checkpoint: skip the random initialisation
            self.model = self.model_class(self.config, dtype=self.dtype)
        self.model.set_train(False)
        load_renamed(self.model, weights, self.map_names, self.converter)
        for param in self.model.get_parameters():
            param.requires_grad = False
        logger.info("%s text encoder: %s (%s), max length %d", self.name, weights[0], self.dtype,
                    self.model_max_length)

    def tokenize(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """-> ids (B, model_max_length) int32 and mask (B, model_max_length) uint8: padded to the maximum
        length and truncated, as upstream's embedders call their tokenizers."""
        return tokenize(self.tokenizer, texts, self.model_max_length)
