"""The one table of compute dtypes: the names configs and flags accept, and what they mean.

``dtype: fp32 | fp16 | bf16`` (or the long names) in a config or on a command line. :func:`canonical` gives the
long name (``"float32"``, ``"float16"``, ``"bfloat16"``), which is also the attribute name of the dtype in
MindSpore, NumPy-with-ml_dtypes and torch, so tools map it without a second table.
"""
from __future__ import annotations

# accepted spelling -> canonical name
_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}
# what command lines and configs list as choices (each canonical name with its short form)
DTYPE_CHOICES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
HALF_PRECISION = ("float16", "bfloat16")


def canonical(dtype) -> str:
    """``"fp16"``, ``"torch.float16"``, ``mindspore.float16``... -> ``"float16"``; a ValueError for anything else."""
    key = str(dtype).lower().replace("torch.", "").replace("mindspore.", "")
    if key not in _NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return _NAMES[key]


def to_ms_dtype(dtype):
    """A name of the table or a MindSpore float dtype -> the MindSpore dtype."""
    import mindspore as ms

    if dtype in (ms.float32, ms.float16, ms.bfloat16):
        return dtype
    return getattr(ms, canonical(dtype))


def is_half(dtype) -> bool:
    return canonical(dtype) in HALF_PRECISION
