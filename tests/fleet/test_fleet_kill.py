"""The fleet end to end on 127.0.0.1 (1 SuperLink, 2 real mirods with their own digits, 2 rounds), with a board
SIGKILLed in the middle of round 1: the round completes with the other (the dead board's message times out,
named in the round's record), the board restarts on its state dir, its SuperNode rejoins under a new node id, a
later round includes it, nothing it had stored is lost, both boards end with the union of classes and answer
the other board's digits far above chance, and every process is gone at the end. (One scenario, not two: each
SuperLink and its rounds cost tens of seconds of Flower's start-up and polling on two cores.)"""
import json
import signal
import subprocess

import numpy as np
from conftest import MIRO
from daemon_util import Mirod, wait_for
from daemon_util import pid_alive as alive

from miro_runtime.engine.streams import split_digits
from miro_runtime.fleet.demo import FAST_POLL, accuracy, board_classes
from miro_runtime.fleet.server import FleetServer, ServerConfig, free_port, read_status




def test_a_board_killed_mid_round_leaves_the_round_to_the_others_and_rejoins(tmp_path, monkeypatch):
    for k, v in FAST_POLL.items():
        monkeypatch.setenv(k, v)
    s = split_digits(5, 0)
    x, y = np.concatenate([a for a, _ in s.train]), np.concatenate([b for _, b in s.train])
    xt, yt = np.concatenate([a for a, _ in s.test]), np.concatenate([b for _, b in s.test])
    port = free_port()
    srv = FleetServer(ServerConfig(dir=str(tmp_path / "server"), address=f"127.0.0.1:{port}", insecure=True,
                                   # three rounds: the restarted board (a daemon and its SuperNode) has two to
                                   # rejoin; with two, a loaded CI machine restarted it after round 2 had begun
                                   rounds=3, min_boards=1, wait_boards=2, local_steps=5, round_timeout_s=12,
                                   wait_boards_s=60))
    boards = []
    srv.start()
    try:
        for i in range(2):
            sets = ("learning.online=false", "learning.epochs=2", "learning.strategy=carm", "learning.memory=20",
                    "fleet.enabled=true", f"fleet.superlink=127.0.0.1:{port}", "fleet.insecure=true",
                    f"fleet.node_name=board-{i}", f"fleet.supernode_port={free_port()}")
            d = Mirod(tmp_path / f"b{i}", *sets).start()
            cl = board_classes(i, 2)
            m, mt = np.isin(y, cl), np.isin(yt, cl)
            with d.client() as c:
                c.ingest(0, "train", x[m], y[m])
                c.ingest(0, "test", xt[mt], yt[mt])
                c.call("task_end", task=0, wait=True, timeout=300)
            boards.append(d)
        stored = boards[1].call("status")["stored"]
        run_id = srv.submit()
        st_path = srv.cfg.status_path
        assert wait_for(lambda: (read_status(st_path) or {}).get("state") == "running", 90)
        sn = boards[1].call("status")["fleet"]["supernode"]["pid"]
        boards[1].kill(signal.SIGKILL)  # the run waited for both boards; board-1 dies as round 1's messages go out
        assert wait_for(lambda: not alive(sn), 30)  # its SuperNode goes with it
        boards[1] = Mirod(tmp_path / "b1", *boards[1].sets).start()  # a restart on the same state dir: a new
        # SuperNode, a new node, while round 1 still waits for the dead one
        final = srv.wait(run_id, timeout=240)
        assert final["flower"]["status"] == "finished:completed", final
        r1 = final["rounds"][0]
        assert r1["aggregated"] and r1["boards"] == ["board-0"]  # the round went on with the other board
        assert len(r1["failed"]) == 1  # the dead board's node, named with why: no reply, or Flower's "unavailable"
        assert any(w in next(iter(r1["failed"].values())) for w in ("no reply", "Node Unavailable", "board-1"))
        later = [e for e in final["rounds"][1:] if e.get("aggregated") and "board-1" in e["boards"]]
        assert later, json.dumps(final["rounds"])[:3000]  # the restarted board rejoined
        r = subprocess.run(MIRO + ["fleet", "status", "--dir", srv.cfg.dir], capture_output=True, text=True,
                           timeout=60)  # the server's view: boards, rounds, global classes, accuracy per round
        assert r.returncode == 0 and "state done; rounds 3 of 3" in r.stdout and "board-1: labels" in r.stdout
        assert "round 1: boards board-0;" in r.stdout
        st = boards[1].call("status")
        assert st["stored"] == stored  # nothing it had stored is lost
        assert sorted(st["class_labels"]) == list(range(10)) and st["fleet"]["rounds"]["train"] >= 1
        for i, d in enumerate(boards):  # each knows the other's digits now, far above chance (0.1)
            assert sorted(d.call("status")["class_labels"]) == list(range(10))
            others = board_classes(1 - i, 2)
            assert accuracy(d.sock, xt, yt, others) > 0.3
        supernodes = [d.call("status")["fleet"]["supernode"]["pid"] for d in boards]
    finally:
        codes = [d.kill(signal.SIGTERM) for d in boards if d.alive()]
        srv.stop()
    assert codes == [0, 0]  # both boards stopped cleanly on SIGTERM, their SuperNodes with them
    assert srv.proc.poll() is not None and not any(alive(p) for p in supernodes)
