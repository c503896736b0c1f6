"""The fleet end to end on 127.0.0.1, as a user runs it: `miro fleet demo --boards 2 --rounds 2 --json` starts a
real SuperLink and two real mirods (each its own SuperNode), each board learns its own digits alone, two rounds of
class-aligned FedAvg run through Flower, and every process is stopped by PID."""
import json
import os
import subprocess

from conftest import MIRO


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_two_boards_two_rounds_end_with_every_class_and_stop_cleanly():
    r = subprocess.run(MIRO + ["fleet", "demo", "--boards", "2", "--rounds", "2", "--json"], capture_output=True,
                       text=True, timeout=400, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["boards"] == 2 and out["rounds"] == 2 and out["flower_status"] == "finished:completed"
    assert {"federated_acc", "isolated_acc", "wall_s"} <= set(out)
    rounds = out["server"]["rounds"]
    assert [e["round"] for e in rounds] == [1, 2] and all(e["aggregated"] and not e["rejected"] for e in rounds)
    assert sorted(out["server"]["global_classes"]) == list(range(10))
    for b in out["per_board"]:
        assert b["class_labels"] == list(range(10))  # the union: each adopted the other's five digits
        assert b["acc_on_others"] > 0.3, b  # chance among ten digits is 0.1; alone it is 0 on them
        assert b["fleet"]["rounds"] == {"train": 2, "evaluate": 2} and b["fleet"]["bytes_sent"] > 0
    assert out["federated_acc"] > out["isolated_acc"] + 0.15
    assert out["exit_codes"][:2] == [0, 0]  # the boards stopped on SIGTERM, cleanly
    assert not any(alive(p) for p in out["pids"])
    assert not any(alive(b["fleet"]["supernode"]["pid"]) for b in out["per_board"])
