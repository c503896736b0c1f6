"""Energy meters behind one two-verb interface (begin_window / end_window -> Measurement), each
component labelled measured (which counter) or estimated (which model); plus a resource monitor.
Knows nothing of learning, the daemon or the CLI."""

from __future__ import annotations

import logging

from .battery import battery_state
from .estimate import EstimateMeter
from .jetson import JetsonMeter
from .measurement import COMPONENTS, Measurement, Meter, MeterUnavailable, MultiMeter, PollingMeter
from .monitor import ResourceMonitor, Snapshot
from .nvml import NvmlMeter, NvmlPowerMeter, nvml_meter
from .pi5 import Pi5Meter, parse_pmic
from .rapl import RaplMeter

log = logging.getLogger("miro.profilers")

SOURCES = {"nvml": nvml_meter, "rapl": RaplMeter, "jetson": JetsonMeter, "pi5": Pi5Meter, "estimate": EstimateMeter}


def make_meter(name: str = "auto") -> Meter:
    """A meter by name, or ``auto``: every measuring source found here (GPU + CPU/DRAM, or the
    board's rails), falling back to the estimate when none can be read. The reasons a source was
    skipped go to the log."""
    if name != "auto":
        if name not in SOURCES:
            raise ValueError(f"unknown energy source {name!r}; choose auto or one of {sorted(SOURCES)}")
        return SOURCES[name]()
    found = []
    for src in ("jetson", "pi5", "nvml", "rapl"):
        try:
            found.append(SOURCES[src]())
        except MeterUnavailable as e:
            log.info("energy source %s skipped: %s", src, e)
        if found and src in ("jetson", "pi5"):
            break  # board rails already cover CPU, GPU and DRAM
    if not found:
        return EstimateMeter()
    return found[0] if len(found) == 1 else MultiMeter(found)


__all__ = ["Measurement", "Meter", "MeterUnavailable", "MultiMeter", "PollingMeter", "COMPONENTS", "EstimateMeter",
           "JetsonMeter", "NvmlMeter", "NvmlPowerMeter", "nvml_meter", "Pi5Meter", "parse_pmic", "RaplMeter",
           "ResourceMonitor", "Snapshot", "battery_state", "make_meter", "SOURCES"]
