"""Meter selection: a source by name, or ``auto`` -- every measuring source found on this machine,
the estimate when none can be read."""

from __future__ import annotations

import logging

from .estimate import EstimateMeter
from .jetson import JetsonMeter
from .measurement import Meter, MeterUnavailable, MultiMeter
from .names import ENERGY_SOURCES
from .nvml import nvml_meter
from .pi5 import Pi5Meter
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


assert set(SOURCES) | {"auto"} == set(ENERGY_SOURCES), "profilers/names.py lists every source"
