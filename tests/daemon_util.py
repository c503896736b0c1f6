"""A real mirod in a subprocess on a temporary state directory, for the daemon tests."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from miro_runtime.wire.client import Client, NoDaemon

PY = sys.executable
STARTED: list = []  # every mirod this process started; conftest kills any still running when the session ends


class Mirod:
    def __init__(self, state_dir, *sets, config=None, env=None, sock=None, args=()):
        self.state_dir, self.args = str(state_dir), list(args)
        self.sock = sock or os.path.join(self.state_dir, "mirod.sock")
        # daemon.warm_engine=false: most daemons here never train, and the ~5 s of CPU each start would pay to
        # import the engine up front is the suite's largest single cost; a test's own --set comes later and wins
        self.sets = list(sets) if any(s.startswith("daemon.warm_engine=") for s in sets) else \
            ["daemon.warm_engine=false", *sets]
        self.config, self.env = config, env or {}
        self.proc = None

    def start(self, timeout=120.0):
        os.makedirs(self.state_dir, exist_ok=True)
        cmd = [PY, "-m", "miro_runtime.daemon", "--state-dir", self.state_dir, "--socket", self.sock]
        if self.config:
            cmd += ["--config", str(self.config)]
        for s in self.sets:
            cmd += ["--set", s]
        cmd += self.args
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "MIRO_SOCKET")}
        env.update(self.env)
        self.err = open(os.path.join(self.state_dir, "stderr.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err, env=env)
        STARTED.append(self)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mirod exited {self.proc.returncode}: {self.stderr()[-3000:]}")
            try:
                with Client(self.sock, timeout=10) as c:
                    c.call("ping")
                return self
            except (NoDaemon, ConnectionError, OSError):
                time.sleep(0.05)
        raise RuntimeError("mirod did not answer")

    def stderr(self):
        with open(os.path.join(self.state_dir, "stderr.log")) as fh:
            return fh.read()

    def client(self, timeout=60):
        return Client(self.sock, timeout=timeout)

    def call(self, method, **params):
        with self.client() as c:
            return c.call(method, **params)

    def kill(self, sig=signal.SIGKILL, wait=60):
        self.proc.send_signal(sig)
        rc = self.proc.wait(wait)
        self.err.close()
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def logs(self):
        path = os.path.join(self.state_dir, "logs", "mirod.jsonl")
        out = []
        with open(path) as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by SIGKILL
        return out


def kill_leftovers() -> int:
    """SIGKILL every mirod this process started that still runs (a test that failed before its own
    kill); -> how many. Left alone, each would hold its ~1 GB and its socket after pytest exits."""
    n = 0
    for d in STARTED:
        if d.alive():
            d.proc.kill()
            d.proc.wait(30)
            n += 1
    return n


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(pred, timeout: float = 60.0, poll: float = 0.1):
    """``pred()``'s first truthy value within ``timeout`` seconds, else None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    return None


def samples(k0, n, shape=(1, 8, 8)):
    """n samples whose every byte and label derive from their global index k: (x, labels, ks)."""
    ks = np.arange(k0, k0 + n)
    x = np.broadcast_to((ks % 251).astype(np.uint8)[:, None, None, None], (n, *shape)).copy()
    return x, (ks % 4).tolist(), ks


def client_for_other_users(sdir) -> tuple:
    """(python, sys.path entry) with which another uid runs the stdlib-only client: a copy of
    miro_runtime/wire it can read, on the system python (the venv's interpreter may sit under a home
    directory it cannot enter)."""
    import shutil
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.join(sdir, "pkg")
    wire = os.path.join(root, "miro_runtime", "wire")
    os.makedirs(wire)
    open(os.path.join(root, "miro_runtime", "__init__.py"), "w").close()
    for m in ("__init__.py", "client.py", "protocol.py"):
        shutil.copy(os.path.join(repo, "miro_runtime", "wire", m), wire)
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            os.chmod(os.path.join(d, n), 0o755)
    os.chmod(root, 0o755)
    return shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin") or PY, root


def socket_dir():
    """A directory other uids can traverse (pytest's tmp dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="mirod-test-")
    os.chmod(d, 0o755)
    return d
