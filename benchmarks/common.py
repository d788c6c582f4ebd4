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


def timed_call(fn) -> tuple:
    """(result, {"s": seconds, "peak_rss_gb": the process's peak RSS during the call, "increase_gb": that peak
    above the RSS before it}) of one call of ``fn``, after a garbage collection."""
    import gc

    gc.collect()
    before = rss_bytes()
    with PeakMemory() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, {"s": seconds, "peak_rss_gb": mem.peak_gb, "increase_gb": (mem.peak - before) / 2**30}


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


def child_report(module: str, *args: str) -> dict:
    """Run ``python -m <module> <args>`` from the repository root (a measurement in a process of its own) and return
    the JSON object on the last line of its stdout; a failed child raises with the end of its stderr."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)}: the measuring process failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_report(report: dict, path: str | None) -> None:
    """Print the report and, when a path is given, write it as JSON."""
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


# ------------------------------------------------------------------------------------------ alternating processes
_SERVE_MARK = "@@bench-serve"  # prefix of the lines a serving child and its parent exchange on stdout


def serve_timed(step) -> list[float]:
    """In a child process: say ready, then time one ``step()`` per ``run`` line on stdin (each time reported on
    stdout) until any other line. The parent drives several such children with :func:`alternate`."""
    import sys

    seconds = []
    print(f"{_SERVE_MARK} ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        print(f"{_SERVE_MARK} {seconds[-1]}", flush=True)
    return seconds


def _await_served(proc, name: str) -> str:
    for line in proc.stdout:
        if line.startswith(_SERVE_MARK):
            return line[len(_SERVE_MARK):].strip()
    raise RuntimeError(f"the {name} child ended early (exit code {proc.wait()})")


# glibc keeps freed memory in the process instead of returning it to the system: torch's CPU allocator frees
# and re-allocates every activation, and on this VM re-faulting memory that another process used meanwhile
# made an alternated torch forward ~2x slower (4.3 s alone, 9-11 s after a MindSpore forward; MindSpore
# keeps its own memory pool). Given to the torch children, so that the ratio is not flattered.
KEEP_FREED_MEMORY = {"MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_MMAP_THRESHOLD_": "4294967296"}


def alternate(commands: dict, runs: int, env: dict | None = None) -> dict:
    """Start each child (``name -> argv``, one after the other, so that their set-up does not overlap; each
    calls :func:`serve_timed`), then alternate one timed step of each, ``runs`` times, so that every pair sees
    the same machine state. ``env``: name -> extra environment variables of that child. Frameworks run in
    separate processes (in one process a torch forward took 2.3x as long next to MindSpore here).
    Returns name -> seconds."""
    import subprocess

    procs = {}
    try:
        for name, argv in commands.items():
            child_env = dict(os.environ, **(env or {}).get(name, {}))
            procs[name] = subprocess.Popen(argv, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           env=child_env)
            _await_served(procs[name], name)
        seconds = {name: [] for name in commands}
        for _ in range(runs):
            for name, proc in procs.items():
                proc.stdin.write("run\n")
                proc.stdin.flush()
                seconds[name].append(float(_await_served(proc, name)))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.stdin.write("quit\n")
                proc.stdin.close()
        for proc in procs.values():
            proc.wait()
    return seconds
