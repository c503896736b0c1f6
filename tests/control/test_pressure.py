"""Miro's pressure rule and its arming: a pressure that begins triggers one re-decision, one that
persists does not fire again, and one that clears re-arms (README: "re-decides mid-task when one of
these newly holds"). The re-decision itself is recorded, not run: what is checked is when it fires."""
from miro_runtime.config import RunConfig
from miro_runtime.control.miro import MiroController
from miro_runtime.control.pressure import BATTERY, RAM, THROTTLED, pressures
from miro_runtime.profilers.monitor import Snapshot


def snap(ram_mb=4000.0, throttled=False, battery=None):
    return Snapshot(rss_mb=100.0, available_ram_mb=ram_mb, disk_read_bytes=0, disk_write_bytes=0, cpu_percent=50.0,
                    throttled=throttled, throttle_source="cpufreq cap" if throttled else None, battery=battery)


def test_pressures_name_each_one_that_holds():
    assert pressures(snap(), 256, 20) == {}
    assert set(pressures(snap(ram_mb=100), 256, 20)) == {RAM}
    low = {"percent": 10, "plugged": False, "source": "BAT0"}
    assert set(pressures(snap(battery=low), 256, 20)) == {BATTERY}
    assert pressures(snap(battery={**low, "plugged": True}), 256, 20) == {}  # plugged in: no pressure
    assert set(pressures(snap(ram_mb=100, throttled=True, battery=low), 256, 20)) == {RAM, BATTERY, THROTTLED}


class Recording(MiroController):
    """Records which pressures each re-decision was for instead of profiling."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.fired = []

    def _react(self, view, t, why, snap):
        self.fired.append(sorted(why))


def test_a_pressure_fires_once_when_it_begins_and_re_arms_when_it_clears():
    c = Recording(RunConfig(miro=True, miro_ram_floor_mb=256, miro_battery_floor=20))
    seq = [snap(), snap(ram_mb=100), snap(ram_mb=90), snap(), snap(ram_mb=100),
           snap(ram_mb=100, throttled=True), snap(throttled=True), snap(), snap(throttled=True)]
    for s in seq:
        c.on_resources(None, 0, s)
    assert c.fired == [[RAM], [RAM], [THROTTLED], [THROTTLED]]
