"""Energy meters behind one two-verb interface (begin_window / end_window -> Measurement), each
component labelled measured (which counter) or estimated (which model); plus a resource monitor.
Knows nothing of learning, the daemon or the CLI. Names are imported on first use."""

_LAZY = {
    "battery": ("battery_state",),
    "estimate": ("EstimateMeter",),
    "jetson": ("JetsonMeter",),
    "measurement": ("Measurement", "Meter", "MeterUnavailable", "MultiMeter", "PollingMeter"),
    "monitor": ("ResourceMonitor", "Snapshot"),
    "nvml": ("NvmlMeter", "NvmlPowerMeter", "nvml_meter"),
    "pi5": ("Pi5Meter", "parse_pmic"),
    "rapl": ("RaplMeter",),
    "auto": ("SOURCES", "make_meter"),
}
_WHERE = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
