"""Two session claims README made without a test: online batches stored but not yet trained when the
process stopped are trained after the restart (and only those), and training pauses on a low,
unplugged battery and on thermal throttling, resuming when they clear. The resource monitor reads
fixture sysfs trees (this machine has no battery and does not throttle)."""
import json
import os
import threading
import time

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.profilers import ResourceMonitor
from miro_runtime.session import Session, SessionConfig


def wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def online_cfg(tmp_path, **kw):
    return RunConfig(run_dir=str(tmp_path / "s"), online=True, strategy="er", flash_budget=None, batch_size=8,
                     memory=16, **kw)


def test_online_batches_stored_but_untrained_are_trained_after_a_restart(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8), rng.integers(0, 2, 64).tolist()
    s = Session(online_cfg(tmp_path))
    s.open()
    th = threading.Thread(target=s.run_trainer)
    th.start()
    s.ingest(0, "train", x[:32], y[:32])
    assert wait(lambda: s.status()["counters"]["online_pending"] == 0 and s.status()["steps"] == 4)
    s.stop()
    th.join(60)  # the trainer checkpoints the online progress as it stops: 32 samples trained
    s.ingest(0, "train", x[32:], y[32:])  # stored, acknowledged, never trained: the process then ends
    s.close()

    r = Session(online_cfg(tmp_path))
    r.open()
    try:
        st = r.status()
        assert st["counters"]["online_pending"] == 32 and st["steps"] == 4  # exactly the untrained half
        th = threading.Thread(target=r.run_trainer)
        th.start()
        assert wait(lambda: r.status()["counters"]["online_pending"] == 0 and r.status()["steps"] == 8)
        r.stop()
        th.join(60)
        assert r.trainer.backlog.trained_upto == 63  # every stored id was trained, none twice (steps 8 = 64/8)
    finally:
        r.close()


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"{value}\n")


def events(tmp_path):
    out = []
    with open(tmp_path / "s" / "events.jsonl") as fh:
        for line in fh:
            out.append(json.loads(line))
    return out


def test_training_pauses_on_a_low_unplugged_battery_and_on_throttling(tmp_path):
    ps, th_root, cpu = tmp_path / "ps", tmp_path / "th", tmp_path / "cpu"
    write(str(ps / "BAT0" / "capacity"), 8)
    write(str(ps / "BAT0" / "status"), "Discharging")
    write(str(cpu / "cpu0" / "cpufreq" / "cpuinfo_max_freq"), 2400000)
    write(str(cpu / "cpu0" / "cpufreq" / "scaling_max_freq"), 2400000)
    mon = ResourceMonitor(str(th_root), str(cpu), str(ps))
    scfg = SessionConfig(pause_battery_floor=10.0, pause_on_throttle=True, pause_ram_floor_mb=0.0)
    s = Session(online_cfg(tmp_path, monitor_every_s=0.0), scfg, monitor=mon)
    s.open()
    trainer = threading.Thread(target=s.run_trainer)
    trainer.start()
    try:
        rng = np.random.default_rng(1)
        s.ingest(0, "train", rng.integers(0, 256, (32, 1, 8, 8), dtype=np.uint8), [0, 1] * 16)
        assert wait(lambda: s.paused is not None)
        assert "battery 8% < pause_battery_floor 10%" in s.paused
        time.sleep(0.6)
        assert s.status()["steps"] == 0  # nothing trains while paused
        write(str(ps / "BAT0" / "status"), "Charging")  # plugged in: the battery no longer presses
        assert wait(lambda: s.paused is None and s.status()["steps"] == 4)
        write(str(cpu / "cpu0" / "cpufreq" / "scaling_max_freq"), 1200000)  # the kernel capped the clock
        assert wait(lambda: s.paused is not None)
        assert "thermal throttling" in s.paused
        s.ingest(0, "train", rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8), [0, 1] * 8)
        time.sleep(0.6)
        assert s.status()["steps"] == 4
        write(str(cpu / "cpu0" / "cpufreq" / "scaling_max_freq"), 2400000)
        assert wait(lambda: s.paused is None and s.status()["steps"] == 6)
    finally:
        s.stop()
        trainer.join(60)
        s.close()
    kinds = [(e["event"], e.get("why", e.get("was", ""))) for e in events(tmp_path)
             if e["event"] in ("training_paused", "training_resumed")]
    assert [k for k, _ in kinds] == ["training_paused", "training_resumed", "training_paused", "training_resumed"]
    assert "battery" in kinds[0][1] and "throttling" in kinds[2][1]


def test_an_online_task_idle_between_batches_is_not_metered(tmp_path):
    """The task's energy window stops counting while the trainer waits for the next batch: with the
    estimate meter (its DRAM term grows with wall time while open) an idle second adds nothing."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 1, 8, 8), dtype=np.uint8), rng.integers(0, 2, 32).tolist()
    s = Session(online_cfg(tmp_path))
    s.open()
    th = threading.Thread(target=s.run_trainer)
    th.start()
    try:
        s.ingest(0, "train", x[:16], y[:16])
        assert wait(lambda: s.status()["steps"] == 2 and s.trainer.state == "idle")
        time.sleep(0.3)
        before = s.learner.task_energy_so_far()
        time.sleep(1.5)
        assert before > 0 and s.learner.task_energy_so_far() == before  # idle: not a joule more
        s.ingest(0, "train", x[16:], y[16:])
        assert wait(lambda: s.status()["steps"] == 4)
        assert s.learner.task_energy_so_far() > before  # the next batch's work counts again
    finally:
        s.stop()
        th.join(60)
        s.close()
