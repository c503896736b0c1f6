"""The fallback when no counter exists: energy *estimated* from this process's CPU time and
memory, with a per-core power model. Always labelled estimated, with its constants.

Model (after CodeCarbon's fallback for unknown CPUs): an active core draws ``watts_per_core``
(default 4.0 W per thread), so cpu J = 4.0 x process CPU-seconds (user + system, all threads);
DRAM draws 3 W per 8 GB, charged for the process's resident memory over the window's duration.
"""

from __future__ import annotations

import os
import time

import psutil

from .measurement import Meter


class EstimateMeter(Meter):
    """``pid=None`` meters this process through ``time.process_time`` (all threads, ns clock), so
    windows of a few milliseconds resolve; another process is read from /proc in 10 ms ticks."""

    name = "estimate"

    def __init__(self, watts_per_core: float = 4.0, dram_watts_per_gb: float = 3.0 / 8.0, pid=None):
        super().__init__()
        self.watts_per_core = float(watts_per_core)
        self.dram_watts_per_gb = float(dram_watts_per_gb)
        self._own = pid is None
        self.update_period_s = 1e-4 if self._own else 0.01  # scheduler ticks for another process
        self._proc = psutil.Process(pid or os.getpid())
        self._t0 = time.monotonic()
        self._dram_j = 0.0
        self._last = (self._t0, self._proc.memory_info().rss)

    def _cumulative(self) -> dict:
        if self._own:
            cpu_s = time.process_time()
        else:
            cpu = self._proc.cpu_times()
            cpu_s = cpu.user + cpu.system
        now, rss = time.monotonic(), self._proc.memory_info().rss
        t_prev, rss_prev = self._last
        self._dram_j += self.dram_watts_per_gb * (rss + rss_prev) / 2 / 1e9 * (now - t_prev)
        self._last = (now, rss)
        return {"cpu": self.watts_per_core * cpu_s, "dram": self._dram_j}

    def provenance(self) -> dict:
        return {"cpu": f"estimated: process CPU-seconds x {self.watts_per_core:g} W/core (CodeCarbon fallback model)",
                "dram": f"estimated: process RSS x {self.dram_watts_per_gb:.3f} W/GB (3 W per 8 GB)"}
