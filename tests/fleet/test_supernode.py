"""mirod supervises flower-supernode when [fleet] is on: started with the daemon, restarted with back-off when it
dies (a real SIGKILL), gone when mirod goes -- even when mirod is SIGKILLed. A [fleet] table that would run
without TLS off this machine is refused by name before anything starts."""
import os
import signal
import subprocess
import sys

from conftest import MIRO
from daemon_util import Mirod, wait_for
from daemon_util import pid_alive as alive

from miro_runtime.fleet.server import free_port




def test_insecure_off_this_machine_and_tls_without_a_certificate_are_refused(tmp_path):
    base = [sys.executable, "-m", "miro_runtime.daemon", "--state-dir", str(tmp_path / "s"),
            "--set", "fleet.enabled=true"]
    r = subprocess.run(base + ["--set", "fleet.superlink=10.1.2.3:9092", "--set", "fleet.insecure=true"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "fleet.insecure: allowed only with a SuperLink on 127.0.0.1" in r.stderr
    r = subprocess.run(base + ["--set", "fleet.superlink=fleet.example:9092"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "fleet.root_certificates: TLS needs the CA certificate" in r.stderr
    assert not os.path.exists(tmp_path / "s" / "mirod.sock")


def test_the_supernode_is_restarted_when_it_dies_and_dies_with_mirod(tmp_path):
    sets = ("fleet.enabled=true", f"fleet.superlink=127.0.0.1:{free_port()}", "fleet.insecure=true",
            "fleet.node_name=b0", f"fleet.supernode_port={free_port()}", "fleet.restart_backoff_s=0.2")
    d = Mirod(tmp_path / "b", *sets).start()
    try:
        sn = wait_for(lambda: d.call("status")["fleet"]["supernode"]["pid"])
        assert sn and alive(sn)
        st = d.call("status")["fleet"]
        assert st["enabled"] and st["node_name"] == "b0" and not st["tls"] and st["supernode"]["state"] == "running"
        assert not st["connected"] and st["next_round"] is None  # no SuperLink listens there
        os.kill(sn, signal.SIGKILL)
        again = wait_for(lambda: (lambda s: s["pid"] if s["restarts"] >= 1 and s["pid"] not in (None, sn) else None)(
            d.call("status")["fleet"]["supernode"]))
        assert again and alive(again)
        events = [e["event"] for e in d.logs() if e.get("component") == "fleet"]
        assert events.count("supernode_started") >= 2 and "supernode_exited" in events
        exited = next(e for e in d.logs() if e.get("event") == "supernode_exited")
        assert exited["rc"] == -signal.SIGKILL
        r = subprocess.run(MIRO + ["status", "--socket", d.sock], capture_output=True, text=True, timeout=60)
        line = next(x for x in r.stdout.splitlines() if x.startswith("fleet"))
        assert "b0 -> 127.0.0.1:" in line and "(insecure)" in line and "SuperNode running (restarts " in line
        assert "not connected" in line
    finally:
        d.kill(signal.SIGKILL)  # no shutdown path at all: the SuperNode must still go
    assert wait_for(lambda: not alive(again), timeout=30), "the SuperNode outlived a SIGKILLed mirod"
