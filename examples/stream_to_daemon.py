"""Stream a dataset into mirod over its control socket, as a camera or sensor app would.

    python examples/stream_to_daemon.py [STATE_DIR]

Uses the daemon on $MIRO_SOCKET or STATE_DIR/mirod.sock when one answers; otherwise starts one on
STATE_DIR for the length of the program. The protocol is plain length-prefixed JSON: a client in
any language can do the same (miro_runtime/wire/protocol.py)."""

import argparse
import os
import signal
import sys
import tempfile

from miro_runtime.cli.demo import start_daemon
from miro_runtime.engine.streams import split_digits
from miro_runtime.wire.client import Client, NoDaemon


def stream_tasks(sock: str, tasks: int = 5):
    """Send every task's train and test samples, end each task and wait for its training; print accuracies."""
    stream = split_digits(tasks=tasks, seed=0)
    with Client(sock) as c:
        for t in range(len(stream.tasks)):
            x, y = stream.train[t]  # uint8 (N, 1, 8, 8)
            for i in range(0, len(y), 32):
                c.ingest(task=t, split="train", x=x[i:i + 32], labels=y[i:i + 32])  # durable on return
            c.ingest(task=t, split="test", x=stream.test[t][0], labels=stream.test[t][1])
            done = c.call("task_end", task=t, wait=True)
            print(f"task {t}: acc per task {[round(a, 3) for a in done['acc']]}")
        print("final average accuracy", round(c.call("eval")["final_avg_acc"], 3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("state_dir", nargs="?", help="the daemon's state directory when this starts one "
                    "(default: a new temporary directory)")
    state = ap.parse_args().state_dir or tempfile.mkdtemp(prefix="miro-example-")
    os.makedirs(state, exist_ok=True)
    sock = os.environ.get("MIRO_SOCKET") or os.path.join(state, "mirod.sock")
    proc = None
    try:
        Client(sock).close()
    except NoDaemon:
        proc, sock = start_daemon(state, "learning.online=true", "learning.batch_size=16")
    try:
        stream_tasks(sock)
    finally:
        # stop the daemon we started either way; an exception from streaming still propagates after this
        # (traceback, exit 1): the daemon's clean exit must never stand in for the client's failure
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    if proc is not None and proc.returncode != 0:
        print(f"mirod exited with {proc.returncode}; see {state}/mirod.stderr", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
