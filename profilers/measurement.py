"""The meter interface (Zeus-style): ``begin_window(name)`` / ``end_window(name) -> Measurement``.

Every meter keeps cumulative joules per component (cpu, dram, gpu, soc, board): counter meters
read hardware counters, polling meters integrate sampled power in a background thread. A window
is the difference of two snapshots, so several named windows may overlap. Each component
carries its provenance: measured (which counter, which path or device) or estimated (which model).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional


class MeterUnavailable(RuntimeError):
    """This energy source does not exist or cannot be read here; the message says why and how to fix."""


@dataclass
class Measurement:
    name: str
    seconds: float
    joules: Optional[float]  # the total: the board figure when one exists, else the sum of components
    components: dict = field(default_factory=dict)  # component -> joules (None: not resolved)
    provenance: dict = field(default_factory=dict)  # component -> "measured: ..." / "estimated: ..."
    warnings: list = field(default_factory=list)

    @property
    def watts(self) -> Optional[float]:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds

    @property
    def measured(self) -> bool:
        return bool(self.provenance) and all(p.startswith("measured") for p in self.provenance.values())

    def summary(self) -> str:
        """One line naming how the total was obtained (measured by which counter / estimated by what)."""
        kinds = sorted(set(self.provenance.values()))
        return "; ".join(kinds) if kinds else "no energy source"

    def to_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "joules": self.joules, "watts": self.watts,
                "components": self.components, "provenance": self.provenance, "warnings": self.warnings}


class _Window:
    """An open energy window: the counted time and joules of its finished segments, and the start
    (time, cumulative snapshot) of the running one -- ``t0`` None while paused."""

    def __init__(self, t0: float, snap: dict):
        self.t0, self.snap = t0, snap
        self.seconds, self.comps = 0.0, {}

    def fold(self, now: float, snap: dict) -> None:
        """End the running segment at (now, snap): its time and joules join the counted ones."""
        self.seconds, self.comps = self.so_far(now, snap)
        self.t0 = self.snap = None

    def so_far(self, now: float, snap: dict) -> tuple:
        """(seconds, {component: joules}) counted up to (now, snap)."""
        if self.t0 is None:
            return self.seconds, dict(self.comps)
        keys = set(self.comps) | set(snap)
        return (self.seconds + now - self.t0,
                {k: self.comps.get(k, 0.0) + snap.get(k, 0.0) - self.snap.get(k, 0.0) for k in keys})


class Meter:
    """Base: subclasses implement ``_cumulative() -> {component: joules since start}``.

    ``total_component`` names the component that already contains the others (a board input
    rail); without one the total is the sum of components.
    """

    name = "meter"
    update_period_s = 0.0  # how often the underlying counter changes; shorter windows are flagged
    total_component: Optional[str] = None

    def __init__(self):
        self._windows: dict = {}
        self._lock = threading.Lock()

    def provenance(self) -> dict:
        raise NotImplementedError

    def _cumulative(self) -> dict:
        raise NotImplementedError

    def begin_window(self, name: str) -> None:
        snap = self._cumulative()
        with self._lock:
            if name in self._windows:
                raise ValueError(f"energy window {name!r} is already open")
            self._windows[name] = _Window(time.monotonic(), snap)

    def end_window(self, name: str) -> Measurement:
        return self._measure(name, close=True)

    def cancel_window(self, name: str) -> None:
        """Forget an open window without measuring it (the work it covered raised); no-op if not open."""
        with self._lock:
            self._windows.pop(name, None)

    def pause_window(self, name: str) -> None:
        """Stop counting an open window (its work waits: an online task idle between batches) until
        ``resume_window``; what it held so far is kept. No-op if paused already or not open."""
        snap = self._cumulative()
        now = time.monotonic()
        with self._lock:
            w = self._windows.get(name)
            if w is not None and w.t0 is not None:
                w.fold(now, snap)

    def resume_window(self, name: str) -> None:
        """Count a paused window again from now; no-op if it runs already or is not open."""
        snap = self._cumulative()
        with self._lock:
            w = self._windows.get(name)
            if w is not None and w.t0 is None:
                w.t0, w.snap = time.monotonic(), snap

    def peek(self, name: str) -> Measurement:
        """What an open window holds so far, leaving it open (a checkpoint in the middle of a task)."""
        return self._measure(name, close=False)

    def _measure(self, name: str, close: bool) -> Measurement:
        snap = self._cumulative()
        now = time.monotonic()
        with self._lock:
            if name not in self._windows:
                raise ValueError(f"energy window {name!r} was never begun")
            w = self._windows.pop(name) if close else self._windows[name]
            seconds, comps = w.so_far(now, snap)
        warnings = []
        if seconds < self.update_period_s:
            # never a silent 0 J: a component that did not move inside a too-short window is unresolved
            warnings.append(f"window {name!r} lasted {seconds * 1e3:.2f} ms, shorter than the {self.name} "
                            f"counter's update period ({self.update_period_s * 1e3:.0f} ms)")
            comps = {k: (v if v > 0 else None) for k, v in comps.items()}
        total = self._total(comps)
        return Measurement(name, seconds, total, comps, self.provenance(), warnings)

    def _total(self, comps: dict) -> Optional[float]:
        if self.total_component and self.total_component in comps:
            return comps[self.total_component]
        vals = list(comps.values())
        if not vals or any(v is None for v in vals):
            return None
        return float(sum(vals))

    def close(self) -> None:
        pass


class PollingMeter(Meter):
    """Integrates sampled power (trapezoid) in a background thread at ``hz`` (>= 10 Hz)."""

    def __init__(self, hz: float = 20.0):
        super().__init__()
        if hz < 10:
            raise ValueError(f"polling at {hz} Hz is too slow to integrate power; use >= 10 Hz")
        self.update_period_s = 1.0 / hz
        self._hz = hz
        self._energy: dict = {}
        self._last: Optional[tuple] = None
        self._elock = threading.Lock()
        self._stop = threading.Event()
        self._sample()  # fail here, in the caller, if the source cannot be read
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-poll", daemon=True)
        self._thread.start()

    def _power(self) -> dict:
        """{component: watts} right now."""
        raise NotImplementedError

    def _sample(self):
        # read and timestamp under the lock: the poller and a window's closing read both sample, and a
        # reading stamped before the other's but applied after it would integrate a negative interval
        with self._elock:
            watts, now = self._power(), time.monotonic()
            if self._last is not None:
                t_prev, w_prev = self._last
                dt = now - t_prev
                for k, w in watts.items():
                    self._energy[k] = self._energy.get(k, 0.0) + 0.5 * (w + w_prev.get(k, w)) * dt
            else:
                self._energy = {k: 0.0 for k in watts}
            self._last = (now, watts)

    def _run(self):
        while not self._stop.wait(1.0 / self._hz):
            try:
                self._sample()
            except (OSError, ValueError):  # a transient read error: skip this sample
                continue

    def _cumulative(self) -> dict:
        self._sample()  # include the energy up to this very moment
        with self._elock:
            return dict(self._energy)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)


class MultiMeter(Meter):
    """Several sources as one (e.g. NVML for the GPU + RAPL for CPU and DRAM)."""

    name = "multi"

    def __init__(self, meters: list):
        super().__init__()
        self.meters = meters
        self.update_period_s = max(m.update_period_s for m in meters)
        totals = [m.total_component for m in meters if m.total_component]
        self.total_component = totals[0] if len(meters) == 1 and totals else None

    def provenance(self) -> dict:
        out = {}
        for m in self.meters:
            out.update(m.provenance())
        return out

    def _cumulative(self) -> dict:
        out = {}
        for m in self.meters:
            for k, v in m._cumulative().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def close(self):
        for m in self.meters:
            m.close()
