"""Stream a dataset into mirod over its control socket, as a camera or sensor app would.

    python examples/stream_to_daemon.py [STATE_DIR]

Uses the daemon on $MIRO_SOCKET or STATE_DIR/mirod.sock when one answers; otherwise starts one on
STATE_DIR for the length of the program. The protocol is plain length-prefixed JSON: a client in
any language can do the same (miro_runtime/protocol.py)."""

import os
import signal
import sys
import tempfile

from miro_runtime.wire.client import Client, NoDaemon
from miro_runtime.cli.demo import start_daemon
from miro_runtime.engine.streams import split_digits

state = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
os.makedirs(state, exist_ok=True)
sock = os.environ.get("MIRO_SOCKET") or os.path.join(state, "mirod.sock")
proc = None
try:
    Client(sock).close()
except NoDaemon:
    proc, sock = start_daemon(state, "learning.online=true", "learning.batch_size=16")

stream = split_digits(tasks=5, seed=0)
try:
    with Client(sock) as c:
        for t in range(len(stream.tasks)):
            x, y = stream.train[t]  # uint8 (N, 1, 8, 8)
            for i in range(0, len(y), 32):
                ack = c.ingest(task=t, split="train", x=x[i:i + 32], labels=y[i:i + 32])  # durable on return
            c.ingest(task=t, split="test", x=stream.test[t][0], labels=stream.test[t][1])
            done = c.call("task_end", task=t, wait=True)
            print(f"task {t}: acc per task {[round(a, 3) for a in done['acc']]}")
        print("final average accuracy", round(c.call("eval")["final_avg_acc"], 3))
finally:
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        sys.exit(proc.wait(60))
