"""The one pressure rule: which resource pressures a snapshot shows (available RAM under a floor, the
battery under its floor and unplugged, thermal throttling). Miro re-decides when one begins."""

from __future__ import annotations

# the pressures, by name (a decision's ``trigger`` is keyed by them)
RAM, BATTERY, THROTTLED = "ram", "battery", "throttled"


def pressures(snap, ram_floor_mb: float, battery_floor: float) -> dict:
    """{pressure: why} of a profilers.monitor.Snapshot."""
    out = {}
    if snap.available_ram_mb is not None and snap.available_ram_mb < ram_floor_mb:
        out[RAM] = f"available RAM {snap.available_ram_mb:.0f} MB < floor {ram_floor_mb:g} MB"
    bat = snap.battery
    if bat and not bat.get("plugged") and bat.get("percent") is not None and bat["percent"] < battery_floor:
        out[BATTERY] = f"battery {bat['percent']:g}% < floor {battery_floor:g}%, unplugged ({bat['source']})"
    if snap.throttled:
        out[THROTTLED] = f"thermal throttling ({snap.throttle_source})"
    return out
