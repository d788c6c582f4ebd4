"""Timing, peak-memory and host facts shared by every benchmark."""
from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager


def status_bytes(field: str = "VmRSS", pid="self") -> int:
    """A memory field of ``/proc/<pid>/status`` in bytes (``VmRSS``: resident now; ``VmHWM``: peak
    resident, per address space, so exec resets it); 0 when unreadable (ended process, not Linux)."""
    try:
        with open(f"/proc/{pid}/status", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes() -> int:
    """Resident memory of this process now."""
    return status_bytes("VmRSS")


class PeakMemory:
    """Samples RSS in a background thread; ``peak`` is the highest RSS seen inside the ``with`` block."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30


@contextmanager
def timer(store: dict, key: str):
    start = time.perf_counter()
    yield
    store[key] = time.perf_counter() - start


def summarize(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def host_info() -> dict:
    import mindspore as ms

    from opensora.models.layers import forms

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "device_target": forms.backend(),
        "cpu_formulations": forms.cpu_forms(),
    }


def write_report(report: dict, path: str | None) -> None:
    """Print the report and, when a path is given, write it as JSON."""
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
