"""No internal exception text reaches a client, ever: every RPC method called with generated params
(names it knows and does not, values of every JSON type) on a fresh daemon and on one holding a
trained task answers with a result or with the project's own error -- never INTERNAL_ERROR, never a
Python exception's text. (The issue's example: `miro task end` on a fresh daemon answered
"AttributeError: 'NoneType' object has no attribute 'set_meta'".) Bounded: a fixed seed, 1,200
requests per state."""
import json
import random
import signal
import socket
import struct
import subprocess

import numpy as np
from conftest import MIRO
from daemon_util import Mirod

from miro_runtime.daemon.handlers import MUTATING, READ_ONLY
from miro_runtime.wire import protocol as P

VALUES = [None, True, False, 0, -1, 1, 3, 2 ** 40, 1.5, 1e308, "", "x", "train", "test", [], [1], [1, 2, 3, 4],
          [1, 1, 8, 8], {}, {"a": 1}, "learning.epochs", "kv.policy", "daemon.nope", "AAAA", [0.5], "uint8", "none"]
KEYS = ["task", "split", "path", "shape", "dtype", "data", "labels", "k", "wait", "timeout", "key", "value",
        "defaults", "level", "component", "since", "until", "limit", "after", "prompt", "max_new_tokens", "policy",
        "hot_budget", "batch_id", "nonsense"]
INTERNAL = ("Traceback", "NoneType", "object has no attribute", "not subscriptable", "unexpected keyword",
            "Error: ", "Exception", "errno", "<class ")


def leaks(sock_path, seed: int, n: int) -> dict:
    rng = random.Random(seed)
    methods = sorted((MUTATING | READ_ONLY) - {"shutdown"})
    found = {}
    for i in range(n):
        m = rng.choice(methods)
        params = {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, 4))}
        if m == "task_end":
            params["wait"] = False  # a wait for training is a test of its own
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(sock_path)
        with s:
            body = json.dumps({"id": i, "method": m, "params": params}).encode()
            s.sendall(struct.pack(">I", len(body)) + body)
            (size,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
            body = b""
            while len(body) < size:  # a large answer (a fleet round's model) may take more than one read
                chunk = s.recv(size - len(body), socket.MSG_WAITALL)
                assert chunk, "the daemon closed the connection mid-answer"
                body += chunk
            resp = json.loads(body)
        e = resp.get("error")
        if e and (e["code"] == P.INTERNAL_ERROR or any(w in e["message"] for w in INTERNAL)):
            found.setdefault((m, e["code"], e["message"][:160]), params)
    return found


def test_every_method_answers_in_the_projects_own_words(tmp_path):
    d = Mirod(tmp_path / "s", "kv.enabled=false").start()
    try:
        r = subprocess.run(MIRO + ["--socket", d.sock, "task", "end"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 65 and "no task is open yet" in r.stderr and "Error" not in r.stderr, r.stderr
        fresh = leaks(d.sock, 0, 1200)
        assert not fresh, fresh
        with d.client() as c:  # a task stored, ended and trained: other paths open up
            x = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
            c.ingest(0, "train", x, [0, 1] * 20)
            c.ingest(0, "test", x[:10], [0, 1] * 5)
            c.call("task_end", task=0, wait=True)
        trained = leaks(d.sock, 1, 1200)
        assert not trained, trained
        assert d.alive()
    finally:
        d.kill(signal.SIGTERM)
