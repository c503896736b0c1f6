"""The meter auto-selection order and a whole run on a measured source, through a recorded sysfs tree
($MIRO_SYSFS_ROOT; this machine has no RAPL, no INA3221 rails and no battery, so the trees are
fixtures written after the layouts in ../shared/reference/energy-formats.md). A RAPL counter is
advanced by a thread while the run trains, as the package's would be."""
import json
import os
import subprocess
import sys
import threading

import pytest

from miro_runtime.profilers import MeterUnavailable, make_meter, nvml_meter


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"{value}\n")


def rapl(root, uj=1_000_000):
    z = os.path.join(root, "sys/class/powercap/intel-rapl:0")
    write(f"{z}/name", "package-0")
    write(f"{z}/energy_uj", uj)
    write(f"{z}/max_energy_range_uj", 262143328850)
    return f"{z}/energy_uj"


def jetson(root):
    hw = os.path.join(root, "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3")
    for n, (label, mv, ma) in enumerate([("VDD_IN", 19000, 400), ("VDD_SOC", 19000, 100)], start=1):
        write(f"{hw}/in{n}_label", label)
        write(f"{hw}/in{n}_input", mv)
        write(f"{hw}/curr{n}_input", ma)


def has_nvml() -> bool:
    try:
        nvml_meter().close()
        return True
    except MeterUnavailable:
        return False


def names(meter) -> str:
    return " ".join(str(v) for v in meter.provenance().values()) if isinstance(meter.provenance(), dict) \
        else str(meter.provenance())


def test_auto_prefers_board_rails_then_rapl_then_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRO_SYSFS_ROOT", str(tmp_path / "empty"))
    m = make_meter("auto")
    if not has_nvml():  # nothing measures here: the estimate, and it says so
        assert type(m).__name__ == "EstimateMeter" and "estimated" in names(m)
    m.close()
    rapl(str(tmp_path / "rapl"))
    monkeypatch.setenv("MIRO_SYSFS_ROOT", str(tmp_path / "rapl"))
    m = make_meter("auto")
    assert "RAPL" in names(m) and "estimated" not in names(m)
    m.close()
    both = str(tmp_path / "both")
    rapl(both)
    jetson(both)
    monkeypatch.setenv("MIRO_SYSFS_ROOT", both)
    m = make_meter("auto")  # the board's rails cover CPU, GPU and DRAM: the search stops there
    assert type(m).__name__ == "JetsonMeter" and "RAPL" not in names(m)
    m.close()
    monkeypatch.setenv("MIRO_SYSFS_ROOT", str(tmp_path / "rapl"))
    with pytest.raises(MeterUnavailable, match="no INA3221 rails"):
        make_meter("jetson")  # asked for by name: its absence is an error, never a silent estimate


def test_a_run_on_a_measured_source_reports_measured_joules(tmp_path):
    root = str(tmp_path / "sys-capture")
    counter = rapl(root)
    stop = threading.Event()

    def package_draws_power():  # ~5 W: 50 mJ every 10 ms
        uj = 1_000_000
        while not stop.wait(0.01):
            uj += 50_000
            tmp = counter + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{uj}\n")
            os.replace(tmp, counter)
    t = threading.Thread(target=package_draws_power)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "run", "--stream", "split-digits", "--tasks", "2",
                            "--epochs", "1", "--strategy", "er", "--energy-source", "rapl", "--run-dir",
                            str(tmp_path / "run"), "--json"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MIRO_SYSFS_ROOT": root})
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["energy_j"] > 0 and "measured: RAPL" in s["energy_provenance"]
    assert "intel-rapl:0/energy_uj" in s["energy_provenance"] and "estimat" not in s["energy_provenance"]


def test_the_daemon_status_names_the_measured_source(tmp_path):
    import signal

    import numpy as np
    from daemon_util import Mirod
    root = str(tmp_path / "sys-capture")
    rapl(root)
    d = Mirod(tmp_path / "s", "learning.energy_source=rapl", env={"MIRO_SYSFS_ROOT": root}).start()
    try:
        with d.client() as c:  # the learner (and its meter) opens with the first sample
            c.ingest(0, "train", np.zeros((8, 1, 8, 8), np.uint8), [0, 1] * 4)
        e = d.call("status")["energy"]
        assert "measured: RAPL" in e["provenance"] and "estimat" not in e["provenance"]
    finally:
        d.kill(signal.SIGTERM)
