"""Raspberry Pi 5 PMIC rails from ``vcgencmd pmic_read_adc``, polled and integrated (trapezoid).
Rails are paired by name (X_A with X_V), never by the bracketed index. CPU = VDD_CORE,
DRAM = DDR_VDD2 + DDR_VDDQ, board = the sum of all paired rails (USB/HAT loads are outside it)."""

from __future__ import annotations

import re
import subprocess

from .measurement import MeterUnavailable, PollingMeter

_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+\d.eE]+)[AV]\s*$")
COMMAND = ("vcgencmd", "pmic_read_adc")


def parse_pmic(text: str) -> dict:
    """{rail: watts} for every rail with both a current and a voltage line."""
    if "error=" in text:
        raise MeterUnavailable(f"vcgencmd pmic_read_adc is not supported here: {text.strip()[:120]}")
    amps, volts = {}, {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return {r: amps[r] * volts[r] for r in amps if r in volts}


def _component(rail: str) -> str:
    if rail == "VDD_CORE":
        return "cpu"
    if rail.startswith("DDR_"):
        return "dram"
    return "soc"


class Pi5Meter(PollingMeter):
    """``run`` returns the command's stdout; tests pass recorded outputs, the default runs vcgencmd."""

    name = "pi5-pmic"
    total_component = "board"

    def __init__(self, run=None, hz: float = 10.0):
        self._run = run or self._vcgencmd
        super().__init__(hz)

    @staticmethod
    def _vcgencmd() -> str:
        try:
            r = subprocess.run(COMMAND, capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MeterUnavailable(f"cannot run {' '.join(COMMAND)}: {e}") from e
        if r.returncode != 0:
            raise MeterUnavailable(f"{' '.join(COMMAND)} exited {r.returncode}: {(r.stdout + r.stderr).strip()[:120]}")
        return r.stdout

    def _power(self) -> dict:
        rails = parse_pmic(self._run())
        if not rails:
            raise MeterUnavailable("vcgencmd pmic_read_adc printed no rail with both current and voltage")
        out = {"board": sum(rails.values())}
        for r, w in rails.items():
            c = _component(r)
            out[c] = out.get(c, 0.0) + w
        return out

    def provenance(self) -> dict:
        src = f"measured: Pi 5 PMIC (vcgencmd pmic_read_adc) at {self._hz:g} Hz"
        return {"board": src + ", sum of rails", "cpu": src + ", VDD_CORE", "dram": src + ", DDR_VDD2+DDR_VDDQ",
                "soc": src + ", other rails"}
