"""What a real mirod logs as a user reads it: each event tagged with the part that produced it, every
refused request at info with who asked and why, long lines whole in `miro logs`, and journald's <N>
priority prefixes on stderr only when stderr is not a terminal."""
import json
import os
import pty
import select
import signal
import subprocess
import threading
import time

from conftest import MIRO
from daemon_util import PY, Mirod
from test_daemon import raw_request

from miro_runtime.engine.streams import split_digits
from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import Client, NoDaemon


class TtyMirod:
    """mirod with its stderr on a pseudo-terminal, as when a person starts it in a shell."""

    def __init__(self, state_dir):
        self.state_dir, self.sock = str(state_dir), os.path.join(str(state_dir), "mirod.sock")
        self.out, self.master = b"", None

    def start(self, timeout=120.0):
        self.master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "MIRO_SOCKET",
                                                                "JOURNAL_STREAM")}
        self.proc = subprocess.Popen([PY, "-m", "miro_runtime.daemon", "--state-dir", self.state_dir,
                                      "--set", "learning.online=false", "--set", "learning.epochs=1"],
                                     stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        self.reader = threading.Thread(target=self._drain, daemon=True)  # a full pty would block mirod
        self.reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.out.decode(errors="replace")[-3000:]
            try:
                Client(self.sock, timeout=10).close()
                return self
            except (NoDaemon, OSError):
                time.sleep(0.05)
        raise RuntimeError("mirod did not answer")

    def _drain(self):
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the last writer closed its end
                    return
                if not chunk:
                    return
                self.out += chunk
            elif self.proc.poll() is not None:
                return

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.reader.join(10)
        os.close(self.master)
        return self.out.decode(errors="replace")


def miro(*args):
    return subprocess.run([*MIRO, *args], capture_output=True, text=True, timeout=120)


def test_components_refusals_whole_lines_and_no_prefixes_on_a_terminal(tmp_path):
    state = tmp_path / "s"
    d = TtyMirod(state).start()
    try:
        st = split_digits(5, 0)
        with Client(d.sock, timeout=120) as c:
            c.ingest(0, "train", *st.train[0])
            c.ingest(0, "test", *st.test[0])
            assert c.call("task_end", task=0, wait=True)["trained"]
            # refusals: bad JSON, an unknown method (a long name: the line must come out whole), bad params
            long_name = "no_such_method_" + "x" * 600
            assert c.request("ingest", {"task": "zero", "split": "train"})["error"]["code"] == P.INVALID_PARAMS
            assert c.request(long_name, {})["error"]["code"] == P.METHOD_NOT_FOUND
        assert raw_request(d.sock, b"{not json")["error"]["code"] == P.PARSE_ERROR
        S = ("--state-dir", str(state), "--socket", d.sock)
        r = miro(*S, "logs", "--json", "-n", "10000")
        assert r.returncode == 0, r.stderr
        recs = [json.loads(x) for x in r.stdout.splitlines()]
        by_event = {}
        for rec in recs:
            by_event.setdefault(rec["event"], set()).add(rec["component"])
        assert by_event["started"] == {"daemon"}
        assert by_event["task_end_requested"] == {"session"}
        assert by_event["task_begin"] == by_event["task_trained"] == {"trainer"}
        assert by_event["task_end"] == by_event["checkpoint"] == {"engine"}
        assert by_event["request_refused"] == {"socket"}
        assert not [x for x in recs if "task" in x and x["component"] == "daemon"], "a task event left untagged"

        refused = [x for x in recs if x["event"] == "request_refused"]
        assert [x["code"] for x in refused] == [P.INVALID_PARAMS, P.METHOD_NOT_FOUND, P.PARSE_ERROR]
        for x in refused:  # info, with who asked and why
            assert x["level"] == "info" and x["peer"]["uid"] == os.getuid() and x["peer"]["pid"] > 0 and x["error"]
        assert refused[0]["peer"]["pid"] == os.getpid() and refused[0]["method"] == "ingest"
        assert "task must be" in refused[0]["error"] and refused[1]["method"] == long_name

        text = miro(*S, "logs", "-n", "10000").stdout  # the default level (info) shows refusals, whole
        line = next(x for x in text.splitlines() if "request_refused" in x and "method not found" in x)
        assert long_name in line and len(line) > 1200
    finally:
        err = d.stop()
    assert "daemon started" in err and "task_trained" in err
    assert "<6>" not in err and "<4>" not in err, err[:2000]  # a person reads a terminal raw

    f = Mirod(state).start()  # stderr to a file (journald, a supervisor): priorities lead each line
    f.kill(signal.SIGTERM)
    started = [x for x in f.stderr().splitlines() if "daemon started" in x]
    assert started and started[-1].startswith("<6>miro: daemon started")
