"""Shared test set-up: tests run on the CPU, in float32, with MindSpore's logging quiet."""
import os

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _pynative_cpu():
    """Each test starts in PyNative on the CPU; graph-mode tests switch explicitly."""
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)
