"""RAPL through the powercap sysfs tree (Intel, and AMD Zen since Linux 5.8): cumulative
``energy_uj`` counters per package and DRAM domain, unwrapped with ``max_energy_range_uj``."""

from __future__ import annotations

import os
import threading
from typing import Optional

from .measurement import Meter, MeterUnavailable
from .sysfs import sysfs

POWERCAP = "/sys/class/powercap"
_COMPONENT = {"package": "cpu", "dram": "dram", "psys": "board"}  # core/uncore are inside package


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


class RaplMeter(Meter):
    name = "rapl"
    update_period_s = 0.001  # the counters move about every millisecond

    def __init__(self, root: Optional[str] = None, poll_s: float = 30.0):
        super().__init__()
        root = self.root = root or sysfs(POWERCAP)
        self.zones = []  # (component, path, max_range_uj)
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        plain = [d for d in names if d.startswith("intel-rapl:")]
        # intel-rapl-mmio:* repeats the package domain through MMIO: use it only when it is alone
        for d in plain or [d for d in names if d.startswith("intel-rapl-mmio:")]:
            path = os.path.join(root, d)
            try:
                zname = _read(os.path.join(path, "name"))
            except OSError:
                continue
            comp = _COMPONENT.get(zname.split("-")[0])
            if comp is None:
                continue
            self.zones.append((comp, path, int(_read(os.path.join(path, "max_energy_range_uj")))))
        if not self.zones:
            raise MeterUnavailable(f"no RAPL domains under {root} (not an Intel/AMD host, or a VM without powercap)")
        self._prev = {}
        self._acc = {}
        self._ulock = threading.Lock()
        self._unwrap()  # raises MeterUnavailable on permission problems
        # a counter wraps after max_range at full power (minutes to hours): reading it every
        # poll_s seconds keeps long windows exact even across several wraps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True, name="rapl-poll")
        self._thread.start()

    def _poll(self, poll_s):
        while not self._stop.wait(poll_s):
            try:
                self._unwrap()
            except MeterUnavailable:
                return

    def _unwrap(self) -> dict:
        with self._ulock:
            for _, path, max_uj in self.zones:
                f = os.path.join(path, "energy_uj")
                try:
                    raw = int(_read(f))
                except PermissionError as e:
                    raise MeterUnavailable(
                        f"cannot read {f}: permission denied (energy_uj is root-only since Linux 5.10). "
                        "Run mirod as a privileged service (CAP_DAC_READ_SEARCH) or make it readable: "
                        "`mode class/powercap/intel-rapl:0/energy_uj = 0444` in /etc/sysfs.conf") from e
                prev = self._prev.get(path)
                if prev is not None:
                    delta = raw - prev if raw >= prev else raw + max_uj - prev  # wrapped once
                    self._acc[path] = self._acc.get(path, 0) + delta
                else:
                    self._acc[path] = 0
                self._prev[path] = raw
            out = {}
            for comp, path, _ in self.zones:
                out[comp] = out.get(comp, 0.0) + self._acc[path] / 1e6
            return out

    def _cumulative(self) -> dict:
        return self._unwrap()

    def provenance(self) -> dict:
        out = {}
        for comp, path, _ in self.zones:
            out.setdefault(comp, []).append(os.path.join(path, "energy_uj"))
        return {c: "measured: RAPL " + ", ".join(p) for c, p in out.items()}

    def close(self):
        self._stop.set()
