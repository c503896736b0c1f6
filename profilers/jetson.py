"""NVIDIA Jetson INA3221 power rails, sampled >= 10 Hz and integrated. Two sysfs layouts:
JetPack 5/6 hwmon (``in{N}_label`` + ``in{N}_input`` mV x ``curr{N}_input`` mA, or ``power{N}_input``
in uW) and JetPack 4 IIO (``rail_name_N`` + ``in_powerN_input`` mW). The board total is the
input rail (VDD_IN / POM_5V_IN) when present -- it already contains the others -- else the sum."""

from __future__ import annotations

import glob
import os
from typing import Optional

from .measurement import MeterUnavailable, PollingMeter
from .sysfs import sysfs

I2C = "/sys/bus/i2c/drivers"
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def _component(rail: str) -> str:
    r = rail.upper()
    if r in INPUT_RAILS:
        return "board"
    if "GPU" in r and "CPU" not in r:
        return "gpu"
    if "CPU" in r:
        return "cpu"  # VDD_CPU_GPU_CV on Orin NX counts as cpu: it is one rail
    if "DDR" in r or "VDDQ" in r:
        return "dram"
    return "soc"


def _read(path):
    with open(path) as fh:
        return fh.read().strip()


def discover_rails(root: Optional[str] = None) -> list:
    """[(rail name, reader() -> watts, path)] for every live channel in either layout."""
    rails = []
    root = root or sysfs(I2C)
    for hw in sorted(glob.glob(os.path.join(root, "ina3221", "*", "hwmon", "hwmon*"))):
        for label_file in sorted(glob.glob(os.path.join(hw, "in*_label"))):
            n = os.path.basename(label_file)[2:-6]
            label = _read(label_file)
            if label.upper() == "NC" or "sum of shunt" in label.lower():
                continue
            power = os.path.join(hw, f"power{n}_input")
            if os.path.exists(power):  # Thor: uW
                rails.append((label, (lambda p=power: int(_read(p)) / 1e6), power))
                continue
            volt, curr = os.path.join(hw, f"in{n}_input"), os.path.join(hw, f"curr{n}_input")
            try:  # a disabled channel fails to read (ENODATA): skip it
                int(_read(volt)), int(_read(curr))
            except (OSError, ValueError):
                continue
            rails.append((label, (lambda v=volt, c=curr: int(_read(v)) * int(_read(c)) / 1e6), f"{volt} x {curr}"))
    for dev in sorted(glob.glob(os.path.join(root, "ina3221x", "*", "iio:device*")) +
                      glob.glob(os.path.join(root, "ina3221x", "*", "iio_device"))):
        for name_file in sorted(glob.glob(os.path.join(dev, "rail_name_*"))):
            n = name_file.rsplit("_", 1)[1]
            label = _read(name_file)
            power = os.path.join(dev, f"in_power{n}_input")
            if label.upper() == "NC" or not os.path.exists(power):
                continue
            rails.append((label, (lambda p=power: int(_read(p)) / 1e3), power))
    return rails


class JetsonMeter(PollingMeter):
    name = "jetson-ina3221"

    def __init__(self, root: Optional[str] = None, hz: float = 20.0):
        root = root or sysfs(I2C)
        self.rails = discover_rails(root)
        if not self.rails:
            raise MeterUnavailable(f"no INA3221 rails under {root} (not a Jetson, or the driver is not loaded)")
        names = [r[0].upper() for r in self.rails]
        self.total_component = "board" if any(n in INPUT_RAILS for n in names) else None
        super().__init__(hz)

    def _power(self) -> dict:
        out = {}
        for rail, read, _ in self.rails:
            c = _component(rail)
            out[c] = out.get(c, 0.0) + read()
        return out

    def provenance(self) -> dict:
        out = {}
        for rail, _, path in self.rails:
            out.setdefault(_component(rail), []).append(f"{rail} ({path})")
        total = "input rail" if self.total_component else "sum of rails (no input rail on this board)"
        return {c: f"measured: INA3221 {', '.join(v)} at {self._hz:g} Hz; total = {total}" for c, v in out.items()}
