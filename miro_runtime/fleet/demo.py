"""`miro fleet demo`: a fleet on one machine. A SuperLink and N boards -- each a real mirod on its own state
dir, with its own classes of the bundled digits (non-IID: board i holds the digits d with d % N == i, in two
tasks) -- learn alone first, then federate for a few rounds; each board's accuracy on all ten digits is measured
before (learning alone) and after (federated) through its socket. Every process is stopped by PID at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable, Optional

import numpy as np

from miro_runtime.daemon.spawn import start_daemon
from miro_runtime.daemon.supernode import superexecs_of
from miro_runtime.fleet.server import FleetServer, ServerConfig, free_port


def board_classes(i: int, n: int, classes: int = 10) -> list:
    return [c for c in range(classes) if c % n == i]


def _digits():
    from miro_runtime.engine.streams import split_digits
    s = split_digits(5, 0)
    cat = np.concatenate
    return (cat([x for x, _ in s.train]), cat([y for _, y in s.train]), cat([x for x, _ in s.test]),
            cat([y for _, y in s.test]))


def accuracy(sock: str, x, y, classes: Optional[list] = None) -> Optional[float]:
    """Top-1 accuracy of a board on (x, y), or on the samples of ``classes`` only."""
    from miro_runtime.wire.client import Client
    if classes is not None:
        m = np.isin(y, classes)
        x, y = x[m], y[m]
    if not len(y):
        return None
    with Client(sock) as c:
        pred = np.asarray([-1 if v is None else v for v in c.predict(x, k=1)["labels"]])
    return float(np.mean(pred == y))


# Flower's executors poll for work every second by default; on one machine a fifth of that keeps rounds short
FAST_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


def _rss_mb(pids: list) -> float:
    """Resident memory of ``pids`` together (MiB, /proc's VmRSS summed: pages they share count in each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return round(total / 1024, 1)


def _round_work(log_path: str) -> list:
    """What the board's log says each fleet request cost it: round, kind, seconds, joules, accuracy."""
    import json
    out = []
    with open(log_path) as fh:
        for line in fh:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "fleet_round":
                out.append({k: e.get(k) for k in ("round", "seconds", "energy_j", "acc", "loss")} |
                           {"kind": e["request"]})
    return out


def run_fleet_demo(boards: int = 2, rounds: int = 2, local_steps: int = 10, epochs: int = 3, seed: int = 0,
                   keep: bool = False, say: Callable[[str], None] = print, timeout_s: float = 600.0) -> dict:
    from miro_runtime.wire.client import Client
    t0 = time.monotonic()
    root = tempfile.mkdtemp(prefix="miro-fleet-")
    x, y, xt, yt = _digits()
    procs: list = []
    server = None
    out: dict = {"boards": boards, "rounds": rounds, "local_steps": local_steps, "epochs": epochs, "seed": seed,
                 "dir": root}
    try:
        port = free_port()
        server = FleetServer(ServerConfig(dir=os.path.join(root, "server"), address=f"127.0.0.1:{port}",
                                          insecure=True, rounds=rounds, min_boards=boards, local_steps=local_steps,
                                          round_timeout_s=min(300.0, timeout_s), wait_boards_s=120.0,
                                          extra_env=dict(FAST_POLL)))
        server.start()
        say(f"SuperLink on 127.0.0.1:{port} (insecure: this machine only), pid {server.proc.pid}")
        socks = []
        for i in range(boards):
            sets = ["learning.online=false", f"learning.epochs={epochs}", "learning.strategy=carm",
                    f"learning.seed={seed}", "learning.memory=20", "fleet.enabled=true",
                    f"fleet.superlink=127.0.0.1:{port}",
                    "fleet.insecure=true", f"fleet.node_name=board-{i}", f"fleet.supernode_port={free_port()}",
                    f"fleet.local_steps={local_steps}"]
            proc, sock = start_daemon(os.path.join(root, f"board-{i}"), *sets, env=FAST_POLL)
            procs.append(proc)
            socks.append(sock)
        per_board = []
        for i, sock in enumerate(socks):
            mine = board_classes(i, boards)
            half = max(1, len(mine) // 2)
            with Client(sock) as c:
                for t, cl in enumerate([mine[:half], mine[half:]] if len(mine) > 1 else [mine]):
                    if not cl:
                        continue
                    m, mt = np.isin(y, cl), np.isin(yt, cl)
                    c.ingest(t, "train", x[m], y[m])
                    c.ingest(t, "test", xt[mt], yt[mt])
                    c.call("task_end", task=t, wait=True, timeout=300)
            alone = accuracy(sock, xt, yt)
            per_board.append({"board": f"board-{i}", "classes": mine, "pid": procs[i].pid, "isolated_acc": alone})
            say(f"board-{i} (pid {procs[i].pid}) learned digits {mine} alone: {100 * alone:.1f}% on all ten")
        run_id = server.submit()
        say(f"fleet run {run_id}: {rounds} rounds of class-aligned FedAvg, {local_steps} local steps each")
        final = server.wait(run_id, timeout_s, on_round=lambda e: say(
            f"  round {e['round']}: boards {e.get('boards')}, mean accuracy on own test sets "
            f"{e.get('mean_acc') if e.get('mean_acc') is None else round(100 * e['mean_acc'], 1)}%"
            + (f", failed {e['failed']}" if e.get("failed") else "")))
        out["flower_status"] = final.get("flower", {}).get("status")
        out["server"] = {k: final.get(k) for k in ("state", "global_classes", "rounds")}
        for i, sock in enumerate(socks):
            b = per_board[i]
            others = [c for c in range(10) if c not in b["classes"]]
            with Client(sock) as c:
                st = c.call("status")
            sn = (st["fleet"].get("supernode") or {}).get("pid")
            b["supernode_rss_mb"] = _rss_mb([sn] + superexecs_of(sn)) if sn else None  # Flower's share on a board
            b.update(federated_acc=accuracy(sock, xt, yt), acc_on_others=accuracy(sock, xt, yt, others),
                     acc_on_own=accuracy(sock, xt, yt, b["classes"]), class_labels=sorted(st["class_labels"]),
                     fleet=st["fleet"], energy_provenance=st["energy"]["provenance"],
                     round_work=_round_work(os.path.join(root, f"board-{i}", "logs", "mirod.jsonl")))
            say(f"board-{i}: {100 * b['federated_acc']:.1f}% on all ten after the fleet "
                f"({100 * b['acc_on_others']:.1f}% on the other boards' digits); classes {b['class_labels']}")
        out["per_board"] = per_board
        out["isolated_acc"] = float(np.mean([b["isolated_acc"] for b in per_board]))
        out["federated_acc"] = float(np.mean([b["federated_acc"] for b in per_board]))
    finally:
        stopped = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                stopped.append(p.wait(60))
            except subprocess.TimeoutExpired:
                p.kill()
                stopped.append(p.wait(10))
        if server is not None:
            stopped.append(server.stop())
        out["exit_codes"] = stopped
        out["pids"] = [p.pid for p in procs] + ([server.proc.pid] if server is not None and server.proc else [])
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out
