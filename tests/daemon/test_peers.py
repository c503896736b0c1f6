"""Who may call what, method by method: a peer in the socket's group (read-only) is refused every
mutating method with PERMISSION_DENIED naming its uid, and served every read-only one; the CLI turns
a refusal into exit 77 (EX_NOPERM). The peer runs as another uid (root only, as in test_daemon.py's
peer test), with the standard-library client copied where that uid can read it."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
from daemon_util import Mirod, client_for_other_users, socket_dir

from miro_runtime.daemon.handlers import MUTATING, READ_ONLY
from miro_runtime.wire import protocol as P

NOBODY = 65534

CALL_ALL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from miro_runtime.wire.client import Client, DaemonError
out = {}
for m in json.loads(sys.argv[3]):
    with Client(sys.argv[2]) as c:
        try:
            c.call(m); out[m] = "ok"
        except DaemonError as e:
            out[m] = [e.code, e.message]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as a second uid")
def test_a_read_only_peer_is_refused_every_mutating_method_and_served_the_rest(tmp_path):
    sdir = socket_dir()
    sock = os.path.join(sdir, "mirod.sock")
    d = Mirod(tmp_path / "s", f"daemon.socket_group={NOBODY}", sock=sock).start()
    try:
        py, pkg_root = client_for_other_users(sdir)
        # shutdown last: were it served, nothing after it would answer
        methods = sorted(MUTATING - {"shutdown"}) + sorted(READ_ONLY - {"kv_generate"}) + ["shutdown"]
        r = subprocess.run([py, "-c", CALL_ALL, pkg_root, sock, json.dumps(methods)],
                           capture_output=True, text=True, timeout=120, user=NOBODY, group=NOBODY, cwd=sdir)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        for m in MUTATING:
            assert out[m][0] == P.PERMISSION_DENIED and f"uid {NOBODY}" in out[m][1], (m, out[m])
        for m in READ_ONLY - {"kv_generate"}:  # served, or refused for another reason than who asks
            assert out[m] == "ok" or out[m][0] != P.PERMISSION_DENIED, (m, out[m])
        assert d.alive()
        refused = [e for e in d.logs() if e["event"] == "peer_refused"]
        assert sorted({e["method"] for e in refused}) == sorted(MUTATING)
    finally:
        d.kill(signal.SIGTERM)
        shutil.rmtree(sdir, ignore_errors=True)


def test_the_cli_exits_77_when_the_daemon_refuses_the_peer(tmp_path):
    # a socket that answers every request as mirod answers a read-only peer asking to mutate
    path = str(tmp_path / "refusing.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(30)

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            (n,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
            req = json.loads(conn.recv(n, socket.MSG_WAITALL))
            conn.sendall(P.frame(P.error_response(req["id"], P.PERMISSION_DENIED,
                                                  f"uid {NOBODY} may not call {req['method']}")))
    t = threading.Thread(target=serve)
    t.start()
    r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "--socket", path, "checkpoint"],
                       capture_output=True, text=True, timeout=60)
    t.join(30)
    srv.close()
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert f"uid {NOBODY} may not call checkpoint" in r.stderr
