"""systemd integration: sd_notify against a real datagram socket, a real mirod announcing READY,
STATUS, WATCHDOG and STOPPING to it, and the generated unit checked by systemd-analyze."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from daemon_util import Mirod

from miro_runtime.daemon import systemd
from miro_runtime.daemon.unit import unit_file

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")
# systemd-analyze prints the exposure to one decimal: the margin only absorbs float parsing, so the
# measured figure must be the one README states (a change of systemd's scoring means README changes too)
EXPOSURE_MARGIN = 0.05


def readme_exposure() -> float:
    """The exposure README's "systemd and logs" section states for the unit."""
    with open(README) as fh:
        m = re.search(r"`systemd-analyze security` exposure ([0-9.]+)", fh.read())
    assert m, "README no longer states the unit's systemd-analyze exposure"
    return float(m.group(1))


def dgram_listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s


def drain(s, until=None, timeout=30.0):
    msgs, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            msgs.append(s.recv(4096).decode())
        except socket.timeout:
            if until is None or any(until in m for m in msgs):
                if until is not None or msgs:
                    break
    return msgs


def test_notify_sends_datagrams_and_is_silent_without_systemd(tmp_path):
    path = str(tmp_path / "notify")
    s = dgram_listener(path)
    assert systemd.notify("READY=1\nSTATUS=hello", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=hello"
    assert not systemd.notify("READY=1", env={})  # not under systemd: nothing happens
    assert systemd.reloading(env={"NOTIFY_SOCKET": path})
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", s.recv(4096))
    s.close()
    # abstract socket: a leading '@'
    name = f"miro-test-{os.getpid()}"
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind("\0" + name)
    assert systemd.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
    assert a.recv(100) == b"WATCHDOG=1"
    a.close()
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # not for us
    assert systemd.watchdog_interval({}) is None


def test_daemon_notifies_ready_watchdog_stopping(tmp_path):
    path = str(tmp_path / "notify")
    s = dgram_listener(path)
    d = Mirod(tmp_path / "s", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    d.start()
    msgs = drain(s, until="WATCHDOG=1")
    joined = "\n".join(msgs)
    assert "READY=1" in joined and "STATUS=serving on" in joined and "WATCHDOG=1" in joined
    time.sleep(1.0)
    pings = [m for m in drain(s, timeout=1.0) if "WATCHDOG=1" in m]
    assert len(pings) >= 3  # every 0.2 s: half of WATCHDOG_USEC, from the event loop
    d.proc.send_signal(signal.SIGHUP)
    assert any("RELOADING=1" in m for m in drain(s, until="READY=1"))
    assert d.kill(signal.SIGTERM) == 0
    assert any("STOPPING=1" in m for m in drain(s, timeout=1.0))
    s.close()


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_analyze
def test_unit_verifies_and_scores_safe(tmp_path):
    unit = tmp_path / "mirod.service"
    unit.write_text(unit_file(exec_path="/usr/bin/true"))  # verify checks that ExecStart exists
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for mirod.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    stated = readme_exposure()
    assert abs(float(m.group(1)) - stated) <= EXPOSURE_MARGIN, f"exposure {m.group(1)}, README says {stated}"
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=miro", "RuntimeDirectory=miro",
                 "LogsDirectory=miro", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "RestrictAddressFamilies=AF_UNIX"):
        assert line in text
