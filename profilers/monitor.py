"""Resource monitor: one ``snapshot()`` of what the controller reacts to -- process RSS,
available RAM, disk bytes, CPU utilisation, temperatures and throttling, battery."""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import psutil

from .battery import battery_state
from .sysfs import sysfs


@dataclass
class Snapshot:
    rss_mb: float
    available_ram_mb: float
    disk_read_bytes: Optional[int]
    disk_write_bytes: Optional[int]
    cpu_percent: float
    temperatures_c: dict = field(default_factory=dict)
    throttled: Optional[bool] = None
    throttle_source: Optional[str] = None
    battery: Optional[dict] = None

    def to_dict(self):
        return asdict(self)


class ResourceMonitor:
    def __init__(self, thermal_root: Optional[str] = None, cpufreq_root: Optional[str] = None,
                 power_supply_root: Optional[str] = None):
        self._proc = psutil.Process(os.getpid())
        self.thermal_root = thermal_root or sysfs("/sys/class/thermal")
        self.cpufreq_root = cpufreq_root or sysfs("/sys/devices/system/cpu")
        self.ps_root = power_supply_root or sysfs("/sys/class/power_supply")
        psutil.cpu_percent(interval=None)  # prime: the next call reports utilisation since now

    def temperatures(self) -> dict:
        out = {}
        for zone in sorted(glob.glob(os.path.join(self.thermal_root, "thermal_zone*"))):
            try:
                with open(os.path.join(zone, "type")) as fh:
                    kind = fh.read().strip()
                with open(os.path.join(zone, "temp")) as fh:
                    out[kind] = int(fh.read().strip()) / 1000.0  # millidegrees
            except (OSError, ValueError):
                continue
        return out

    def throttling(self):
        """(throttled?, how we know): the kernel's cpufreq cap below the hardware maximum."""
        caps = []
        for cpu in sorted(glob.glob(os.path.join(self.cpufreq_root, "cpu[0-9]*", "cpufreq"))):
            try:
                with open(os.path.join(cpu, "scaling_max_freq")) as fh:
                    cur = int(fh.read())
                with open(os.path.join(cpu, "cpuinfo_max_freq")) as fh:
                    hw = int(fh.read())
                caps.append(cur < hw)
            except (OSError, ValueError):
                continue
        if not caps:
            return None, None
        return any(caps), "cpufreq scaling_max_freq < cpuinfo_max_freq"

    def snapshot(self) -> Snapshot:
        try:
            io = self._proc.io_counters()
            rd, wr = io.read_bytes, io.write_bytes
        except (psutil.AccessDenied, AttributeError):
            rd = wr = None
        throttled, src = self.throttling()
        return Snapshot(rss_mb=self._proc.memory_info().rss / 2**20,
                        available_ram_mb=psutil.virtual_memory().available / 2**20,
                        disk_read_bytes=rd, disk_write_bytes=wr, cpu_percent=psutil.cpu_percent(interval=None),
                        temperatures_c=self.temperatures(), throttled=throttled, throttle_source=src,
                        battery=battery_state(self.ps_root))
