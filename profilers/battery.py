"""Battery state of charge as a resource signal (not the energy of a window)."""

from __future__ import annotations

import glob
import os
from typing import Optional

import psutil

from .sysfs import sysfs

POWER_SUPPLY = "/sys/class/power_supply"


def battery_state(root: Optional[str] = None) -> Optional[dict]:
    """{'percent', 'plugged', 'power_w' (None if unknown), 'source'} or None without a battery."""
    root = root or sysfs(POWER_SUPPLY)
    for bat in sorted(glob.glob(os.path.join(root, "BAT*"))) + sorted(glob.glob(os.path.join(root, "battery"))):
        def rd(name, bat=bat):
            try:
                with open(os.path.join(bat, name)) as fh:
                    return fh.read().strip()
            except OSError:
                return None
        cap = rd("capacity")
        if cap is None:
            continue
        power = rd("power_now")
        if power is None and rd("current_now") is not None and rd("voltage_now") is not None:
            power = abs(int(rd("current_now"))) * int(rd("voltage_now")) / 1e6  # uA x uV -> uW
        status = rd("status") or ""
        return {"percent": float(cap), "plugged": status in ("Charging", "Full", "Not charging"),
                "power_w": None if power is None else float(power) / 1e6, "source": bat}
    try:
        b = psutil.sensors_battery()
    except (AttributeError, NotImplementedError):
        b = None
    if b is None:
        return None
    return {"percent": float(b.percent), "plugged": bool(b.power_plugged), "power_w": None,
            "source": "psutil.sensors_battery"}
