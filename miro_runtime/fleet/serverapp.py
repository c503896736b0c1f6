"""The fleet's ServerApp: rounds of class-aligned FedAvg (aggregate.py) over Flower's Message API. Each round
sends every connected board a train message (its local steps), aggregates the replies that fit (the others are
named and left out), then sends each board its own view of the aggregate -- its classes' rows in its order, then
the classes it may adopt -- as an evaluate message, which the board adopts and answers with its accuracy. Stock
FedAvg broadcasts one payload; here every board gets its own. Rounds go on when a board is missing or fails, as
long as ``min-boards`` replies fit. Every round is written to the status file (``miro fleet status``) and logged.
"""

from __future__ import annotations

import json
import logging
import os
import time

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from miro_runtime.fleet.aggregate import BoardUpdate, ClassRegistry, ReplyError, aggregate

app = ServerApp()
log = logging.getLogger("miro.fleet")


def write_status(path: str, status: dict) -> None:
    """The fleet's state as JSON, replaced atomically (a reader never sees half of it)."""
    if not path:
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(status, fh, indent=1)
    os.replace(tmp, path)


def _config(rnd: int, rounds: int, steps: int, timeout: float) -> ConfigRecord:
    return ConfigRecord({"server-round": rnd, "rounds": rounds, "steps": steps, "timeout": timeout})


def _board(reply: Message) -> str:
    """The board's name from a reply without an error (the node's id when it gave none)."""
    name = str(reply.content.config_records["fleet"].get("board", ""))
    return name or f"node-{reply.metadata.src_node_id}"


PULL_EVERY_S = 0.25  # Grid.send_and_receive sleeps 3 s between pulls; a round's replies are polled faster here


def send_and_receive(grid: Grid, messages: list, timeout: float) -> tuple:
    """Push ``messages``, pull their replies until all are in or ``timeout`` passes -> ([(destination node,
    reply)], [nodes that did not answer]). A reply is keyed by the node it was sent to: an error the SuperLink
    answers for a node it knows is gone carries the SuperLink's id, not the board's."""
    ids = list(grid.push_messages(messages))
    dst = {i: m.metadata.dst_node_id for i, m in zip(ids, messages)}
    pending = set(ids)
    end, out = time.monotonic() + timeout, []
    while pending and time.monotonic() < end:
        got = list(grid.pull_messages(pending))
        for m in got:
            rid = m.metadata.reply_to_message_id
            if rid in pending:
                out.append((dst[rid], m))
                pending.discard(rid)
        if pending:
            time.sleep(PULL_EVERY_S)
    return out, sorted(dst[i] for i in pending)


def wait_for_boards(grid: Grid, n: int, wait_s: float) -> list:
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() - t0 > wait_s:
            return nodes
        time.sleep(1.0)


def train_round(grid: Grid, nodes: list, rnd: int, rounds: int, steps: int, timeout: float) -> tuple:
    """-> (updates, node of each board, {board: why it has no update}, bytes received)."""
    msgs = [Message(RecordDict({"config": _config(rnd, rounds, steps, timeout)}), dst_node_id=n,
                    message_type=MessageType.TRAIN) for n in nodes]
    replies, silent = send_and_receive(grid, msgs, timeout)
    updates, where, failed, nbytes = [], {}, {}, 0
    for n in silent:
        failed[f"node-{n}"] = f"no reply within {timeout:.0f} s"
    for n, r in replies:
        if r.has_error():
            failed[f"node-{n}"] = r.error.reason or f"error {r.error.code}"
            continue
        board = _board(r)
        c = r.content
        meta = c.config_records["fleet"]
        rec = c.array_records["arrays"]
        nbytes += rec.count_bytes()
        arrays = {k: a.numpy() for k, a in rec.items()}
        samples = c.metric_records["metrics"].get("num-examples")
        updates.append(BoardUpdate(board, arrays, [int(v) for v in meta["labels"]], [int(v) for v in meta["counts"]],
                                   tuple(meta["head"]), samples=None if samples is None else int(samples)))
        where[board] = n
    return updates, where, failed, nbytes


def evaluate_round(grid: Grid, g, labels_of: dict, where: dict, rnd: int, rounds: int, timeout: float) -> tuple:
    """Each board its own view of the aggregate; -> ({board: accuracy reply}, {board: why not}, bytes sent)."""
    msgs, nbytes = [], 0
    for board, nid in where.items():
        arrays, labels = g.for_board(labels_of[board])
        rec = ArrayRecord()
        for k, a in arrays.items():
            rec[k] = Array.from_numpy_ndarray(a)
        nbytes += rec.count_bytes()
        msgs.append(Message(RecordDict({"arrays": rec, "fleet": ConfigRecord({"labels": labels}),
                                        "config": _config(rnd, rounds, 0, timeout)}),
                            dst_node_id=nid, message_type=MessageType.EVALUATE))
    accs, failed = {}, {}
    replies, silent = send_and_receive(grid, msgs, timeout)
    by_node = {n: b for b, n in where.items()}
    for n in silent:
        failed[by_node[n]] = f"no reply within {timeout:.0f} s"
    for n, r in replies:
        board = by_node[n]
        if r.has_error():
            failed[board] = r.error.reason or f"error {r.error.code}"
            continue
        m = r.content.metric_records["metrics"]
        accs[board] = {"acc": m.get("acc"), "test_samples": int(m.get("num-examples", 0)),
                       "classes": int(m.get("classes", 0)),
                       "adopted": list(r.content.config_records["fleet"].get("adopted", []))}
    return accs, failed, nbytes


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds, min_boards = int(rc["rounds"]), int(rc["min-boards"])
    steps, timeout = int(rc["local-steps"]), float(rc["round-timeout"])
    path = str(rc.get("status-file", ""))
    registry = ClassRegistry()
    status = {"state": "waiting for boards", "rounds_planned": rounds, "min_boards": min_boards,
              "local_steps": steps, "started": round(time.time(), 3), "boards": {}, "global_classes": [],
              "rounds": []}
    write_status(path, status)
    want = max(min_boards, int(rc.get("wait-boards", 0)))  # boards to wait for before round 1
    nodes = wait_for_boards(grid, want, float(rc["wait-boards-s"]))
    if len(nodes) < min_boards:
        status.update(state="failed", error=f"{len(nodes)} boards connected within {rc['wait-boards-s']} s, "
                                            f"fewer than min-boards = {min_boards}")
        write_status(path, status)
        raise RuntimeError(status["error"])
    status.update(state="running", boards_at_start=len(nodes))
    write_status(path, status)
    for rnd in range(1, rounds + 1):
        t0 = time.time()
        nodes = sorted(grid.get_node_ids())
        updates, where, failed, got = train_round(grid, nodes, rnd, rounds, steps, timeout)
        entry = {"round": rnd, "nodes": len(nodes), "bytes_received": got, "bytes_sent": 0, "failed": failed}
        try:
            g = aggregate(updates, registry, min_boards)
        except ReplyError as e:
            entry.update(aggregated=False, error=str(e), seconds=round(time.time() - t0, 3))
            status["rounds"].append(entry)
            write_status(path, status)
            log.warning("round %d not aggregated: %s", rnd, e)
            continue
        labels_of = {u.board: u.labels for u in updates if u.board in g.boards}
        where = {b: n for b, n in where.items() if b in g.boards}
        accs, eval_failed, sent = evaluate_round(grid, g, labels_of, where, rnd, rounds, timeout)
        known = [a["acc"] for a in accs.values() if a["acc"] is not None]
        entry.update(aggregated=True, boards=g.boards, rejected=g.rejected, eval_failed=eval_failed,
                     global_classes=list(g.labels), class_counts=list(g.counts), acc=accs,
                     mean_acc=sum(known) / len(known) if known else None, bytes_sent=sent,
                     seconds=round(time.time() - t0, 3))
        status["rounds"].append(entry)
        status["global_classes"] = list(registry.labels)
        for b in g.boards:
            status["boards"][b] = {"node_id": where.get(b), "labels": labels_of[b], "last_round": rnd,
                                   "acc": accs.get(b, {}).get("acc")}
        write_status(path, status)
        print(f"[miro fleet] round {rnd}: boards {g.boards}, rejected {sorted(g.rejected)}, failed "
              f"{sorted(failed)}, global classes {len(g.labels)}, mean accuracy {entry['mean_acc']}", flush=True)
    status.update(state="done", finished=round(time.time(), 3))
    write_status(path, status)
