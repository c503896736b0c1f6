"""Shared helpers for benchmarks: machine description, medians, the last-line JSON convention."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile


def scratch(prefix: str) -> str:
    """A directory for a bench's run dirs, removed when the bench exits, failed or interrupted included.

    Each run leaves ~2 MB of LMDB files; a full `make bench` runs ~900 of them, and leaving them behind
    once filled this machine's disk (the next CI's venv install then failed with ENOSPC)."""
    root = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil
        ram_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        ram_gib = None
    import lmdb
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "lmdb": lmdb.__version__,
            "torch_threads_per_run": _run_threads()}


def _run_threads():
    from miro_runtime import RunConfig
    n = RunConfig().threads
    return n if n else f"{os.cpu_count()} (one per core)"


def median(xs):
    return float(statistics.median(xs))


def emit(result: dict):
    """Print the one JSON object every bench ends with."""
    sys.stdout.flush()
    print(json.dumps(result))


def cached_mib() -> float:
    """The kernel's page cache now (/proc/meminfo Cached), MiB: machine-wide, so other processes move it too."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def evict(root: str) -> dict:
    """Drop every file under ``root`` from the page cache, so the next read comes from the device: data
    written first (sync), then POSIX_FADV_DONTNEED per file, which needs no root for clean pages. Pages
    a process still maps are not dropped: close stores (LMDB maps its file) before calling this. The
    Cached figures before and after show whether it took (machine-wide, so only roughly)."""
    os.sync()
    before, files, size = cached_mib(), 0, 0
    for d, _, names in os.walk(root):
        for n in names:
            fd = os.open(os.path.join(d, n), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                size += os.fstat(fd).st_size
            finally:
                os.close(fd)
            files += 1
    return {"files": files, "store_mib": size / 2**20, "cached_before_mib": before, "cached_after_mib": cached_mib()}
