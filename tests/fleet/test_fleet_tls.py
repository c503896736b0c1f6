"""A fleet with TLS and node authentication, the documented default for real boards: a SuperLink with a
certificate from `miro fleet certs` and --node-auth; a board whose key was registered (`miro fleet register`)
joins and trains a round; a board with an unregistered key is refused by the SuperLink, and its mirod logs the
SuperNode's exit and keeps restarting it with back-off (it never reaches a round). The registered board joins
every 2nd round only: its refusal of round 1 reaches the server in its own words."""
import signal
import subprocess

import numpy as np
from conftest import MIRO
from daemon_util import Mirod

from miro_runtime.engine.streams import split_digits
from miro_runtime.fleet.demo import FAST_POLL
from miro_runtime.fleet.server import FleetServer, ServerConfig, free_port


def test_a_registered_board_joins_over_tls_and_an_unregistered_one_is_refused(tmp_path, monkeypatch):
    for k, v in FAST_POLL.items():
        monkeypatch.setenv(k, v)
    pki = tmp_path / "pki"
    r = subprocess.run(MIRO + ["fleet", "certs", "--out", str(pki), "--host", "127.0.0.1", "--host", "localhost"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("good", "bad"):
        r = subprocess.run(MIRO + ["fleet", "keygen", str(tmp_path / f"{name}.key")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith(f"{name}.key.pub"), r.stderr
    port = free_port()
    cfg = ServerConfig(dir=str(tmp_path / "server"), address=f"127.0.0.1:{port}", ca_cert=str(pki / "ca.pem"),
                       cert=str(pki / "server.pem"), key=str(pki / "server.key"), node_auth=True, rounds=2,
                       min_boards=1, local_steps=3, round_timeout_s=30, wait_boards_s=60)
    srv = FleetServer(cfg)
    srv.start()
    boards = []
    try:
        r = subprocess.run(MIRO + ["fleet", "register", str(tmp_path / "good.key.pub"), "--dir", cfg.dir],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        s = split_digits(5, 0)
        for i, name in enumerate(("good", "bad")):
            d = Mirod(tmp_path / name, "learning.online=false", "learning.epochs=1", "learning.strategy=er",
                      "fleet.enabled=true", f"fleet.superlink=127.0.0.1:{port}",
                      f"fleet.root_certificates={pki / 'ca.pem'}", f"fleet.auth_key={tmp_path / (name + '.key')}",
                      f"fleet.node_name={name}", f"fleet.supernode_port={free_port()}",
                      "fleet.restart_backoff_s=2", "fleet.join_every=2").start()
            with d.client() as c:
                c.ingest(0, "train", *s.train[i])
                c.ingest(0, "test", *s.test[i])
                c.call("task_end", task=0, wait=True, timeout=300)
            boards.append(d)
        final = srv.wait(srv.submit(), timeout=180)
        assert final["flower"]["status"] == "finished:completed", final
        r1, r2 = final["rounds"]
        assert not r1["aggregated"] and "join_every" in " ".join(r1["failed"].values())  # the board's refusal
        assert r2["aggregated"] and r2["boards"] == ["good"]
        good, bad = (b.call("status")["fleet"] for b in boards)
        assert good["tls"] and good["node_auth"] and good["rounds"]["train"] == 1 and good["supernode"]["restarts"] == 0
        assert good["refusals"] == 1 and good["last_refusal"]["round"] == 1
        assert good["connected"] and good["supernode"]["node_id"] == final["boards"]["good"]["node_id"]
        assert good["next_round"] is None  # round 2 of 2 was the last
        assert bad["rounds"] == {"train": 0, "evaluate": 0} and not bad["connected"]
        r = subprocess.run(MIRO + ["fleet", "status", "--dir", cfg.dir], capture_output=True, text=True, timeout=60)
        assert "round 1: not aggregated" in r.stdout and "fleet.join_every" in r.stdout, r.stdout
        r = subprocess.run(MIRO + ["status", "--socket", boards[0].sock], capture_output=True, text=True, timeout=60)
        line = next(x for x in r.stdout.splitlines() if x.startswith("fleet"))
        assert "(TLS, node key)" in line and f"connected as node {good['supernode']['node_id']}" in line, line
        exits = [e for e in boards[1].logs() if e.get("event") == "supernode_exited"]
        assert exits and all(e["rc"] != 0 for e in exits)  # refused by the SuperLink, restarted with back-off
        said = [e["line"] for e in boards[1].logs() if e.get("event") == "supernode_output"]
        assert "Exit Code: 305" in " ".join(said)  # Flower's "could not connect": the node is not registered
        assert bad["supernode"]["restarts"] >= 1
        assert np.isfinite(r2["mean_acc"])
    finally:
        for d in boards:
            d.kill(signal.SIGTERM)
        srv.stop()
