"""The board's end of the fleet, like supervisor's process control: mirod starts Flower's
``flower-supernode`` as a child when ``[fleet] enabled``, logs its output as its own, restarts it with a
doubling back-off when it exits, and stops it on shutdown. Flower runs the ClientApp in a fresh process per
message (miro_runtime/fleet/clientapp.py, a shim that forwards to this daemon's socket), so the learning stays
in mirod. Nothing here imports flwr: the SuperNode is a program, found beside this Python or on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from miro_runtime.daemon.config import FleetSection

RUNNING, BACKING_OFF, STOPPED, MISSING = "running", "backing off", "stopped", "not installed"
MAX_BACKOFF_S = 60.0
STOP_TIMEOUT_S = 10.0
HEALTHY_AFTER_S = 30.0  # a SuperNode that ran this long before exiting restarts after the first back-off again
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its level words
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
# Flower 1.42's SuperNode has no status endpoint; it says when it is connected, and when it lost the SuperLink,
# only in its log. These are the lines it prints (flwr/supernode/start_client_internal.py, supercore/retry/).
CONNECTED = re.compile(r"SuperNode ID: (\d+)")
DISCONNECTED = ("Connection attempt failed", "Giving up reconnection")


def flower_program(name: str) -> Optional[str]:
    """A Flower program beside this interpreter (the same environment) or on PATH; None if absent."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else shutil.which(name)


def flower_env(home: str) -> dict:
    """The environment Flower's programs run in: telemetry off, a private FLWR_HOME, and this Python's bin
    first on PATH (they start flower-superexec and the app processes by bare name)."""
    bindir = os.path.dirname(sys.executable)
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": home,
            "PATH": os.pathsep.join([bindir] + [p for p in os.environ.get("PATH", "").split(os.pathsep) if p])}


def superexecs_of(pid: int) -> list:
    """PIDs of the flower-superexec processes started for ``pid`` (their own sessions, so a signal to the
    parent's process group misses them; each watches --parent-pid and exits seconds after it, or at once now)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flower-superexec") for a in argv[:2]) and b"--parent-pid" in argv:
            i = argv.index(b"--parent-pid")
            if i + 1 < len(argv) and argv[i + 1] == str(pid).encode():
                out.append(int(d))
    return out


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
    """SIGTERM ``proc``'s process group and its superexecs, SIGKILL what is left after ``timeout``; -> its rc."""
    if proc.poll() is None:
        execs = superexecs_of(proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in execs:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
    return proc.poll()


def _level_of(line: str) -> str:
    """The log level of a line of Flower's output (its own level word leads the line)."""
    head = line[:40].upper()
    return "error" if "ERROR" in head else "warning" if "WARN" in head else "info"


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: the SuperNode gets SIGTERM when mirod dies, even by SIGKILL -- a board restarted after a crash
    must not find its previous SuperNode still joined to the fleet under the same name."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def node_config_arg(values: dict) -> str:
    """Flower's --node-config text: space-separated TOML ``key=value`` pairs (strings quoted)."""
    def q(v):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return " ".join(f"{k}={q(v)}" for k, v in values.items())


class BoardFleet:
    """What this board did in the fleet (``miro status``'s fleet section): rounds joined and refused,
    bytes in and out, the SuperNode's state."""

    def __init__(self, cfg: FleetSection, log_):
        self.cfg, self.log = cfg, log_
        self.lock = threading.Lock()
        self.rounds: dict = {"train": 0, "evaluate": 0}
        self.refusals = 0
        self.last: Optional[dict] = None
        self.last_refusal: Optional[dict] = None
        self.bytes_received = self.bytes_sent = 0
        self.next_round: Optional[dict] = None
        self.supernode: Optional[Supernode] = None

    def received(self, nbytes: int):
        with self.lock:
            self.bytes_received += nbytes

    def scheduled(self, rnd: int, planned: int):
        """The server said this is round ``rnd`` of ``planned``: the next one this board expects to join follows
        from fleet.join_every (None when the run has no more)."""
        every = self.cfg.join_every
        nxt = (rnd // every + 1) * every
        with self.lock:
            self.next_round = {"round": nxt, "of": planned} if planned and nxt <= planned else None

    def answered(self, kind: str, rnd: int, out: dict):
        sent = sum(len(v) for v in (out.get("arrays") or {}).values())
        with self.lock:
            self.rounds[kind] += 1
            self.bytes_sent += sent
            self.last = {"round": rnd, "kind": kind, "at": round(time.time(), 3), "seconds": out.get("seconds"),
                         "acc": out.get("acc"), "loss": out.get("loss"), "classes": out.get("classes"),
                         "adopted": out.get("adopted"), "energy_j": out.get("energy_j")}

    def refused(self, kind: str, rnd: int, why: str):
        with self.lock:
            self.refusals += 1
            self.last_refusal = {"round": rnd, "kind": kind, "why": why[:300], "at": round(time.time(), 3)}
        self.log.event("fleet_refused", level="warning", request=kind, round=rnd, why=why[:300])

    def status(self) -> dict:
        with self.lock:
            out = {"enabled": self.cfg.enabled, "superlink": self.cfg.superlink or None,
                   "node_name": self.cfg.node_name or socket.gethostname(), "tls": not self.cfg.insecure,
                   "node_auth": bool(self.cfg.auth_key), "rounds": dict(self.rounds), "refusals": self.refusals,
                   "last_round": self.last, "last_refusal": self.last_refusal,
                   "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent,
                   # the server decides when rounds come: a board knows the next one's number (from the last
                   # round's "r of R" and fleet.join_every), not its time
                   "next_round": self.next_round}
        sn = self.supernode.status() if self.supernode else None
        out["supernode"] = sn
        out["connected"] = bool(sn and sn["connected"])
        return out


class Supernode:
    """``flower-supernode`` as mirod's child: started, its output logged line by line, restarted with
    back-off when it exits, stopped (SIGTERM, then SIGKILL) on ``stop``."""

    def __init__(self, cfg: FleetSection, sock_path: str, home: str, log_):
        self.cfg, self.sock_path, self.home, self.log = cfg, sock_path, home, log_
        self.proc: Optional[subprocess.Popen] = None
        self.state = STOPPED
        self.restarts = 0
        self.last_exit: Optional[dict] = None
        self.link: dict = {"connected": False}  # from the SuperNode's own lines (CONNECTED, DISCONNECTED)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def command(self) -> list:
        exe = flower_program("flower-supernode")
        if exe is None:
            raise FileNotFoundError("flower-supernode is not installed: pip install 'miro-runtime[fleet]'")
        c = self.cfg
        name = c.node_name or socket.gethostname()
        cmd = [exe, "--superlink", c.superlink, "--host", "127.0.0.1", "--port", str(c.supernode_port),
               "--node-config", node_config_arg({"socket": self.sock_path, "name": name})]
        if c.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", c.root_certificates]
        if c.auth_key:
            cmd += ["--auth-supernode-private-key", c.auth_key]
        return cmd

    def env(self) -> dict:
        return flower_env(self.home)

    def start(self):
        os.makedirs(self.home, exist_ok=True)
        self._thread = threading.Thread(target=self._supervise, name="mirod-supernode", daemon=True)
        self._thread.start()

    def _supervise(self):
        backoff = self.cfg.restart_backoff_s
        while not self._stop.is_set():
            try:
                cmd = self.command()
            except FileNotFoundError as e:
                self.state = MISSING
                self.log.event("error", component="fleet", error=str(e))
                return
            t0 = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env(),
                                         start_new_session=True, text=True, errors="replace",
                                         preexec_fn=_die_with_parent)
            self.state = RUNNING
            self.log.event("supernode_started", component="fleet", pid=self.proc.pid, superlink=self.cfg.superlink,
                           tls=not self.cfg.insecure, node_auth=bool(self.cfg.auth_key), restarts=self.restarts)
            # its output is ours, read on a thread of its own: the SuperExec it starts inherits the pipe and may
            # hold it open after the SuperNode itself exited
            threading.Thread(target=self._relay, args=(self.proc.stdout,), name="mirod-supernode-out",
                             daemon=True).start()
            rc = self.proc.wait()
            self.link = {"connected": False, "since": round(time.time(), 3), "why": f"SuperNode exited ({rc})"}
            for pid in superexecs_of(self.proc.pid):  # orphaned by the exit: they would linger for seconds
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            ran = time.monotonic() - t0
            self.last_exit = {"rc": rc, "ran_s": round(ran, 1), "at": round(time.time(), 3)}
            if self._stop.is_set():
                break
            if ran > HEALTHY_AFTER_S:
                backoff = self.cfg.restart_backoff_s
            self.state = BACKING_OFF
            self.log.event("supernode_exited", component="fleet", level="warning", rc=rc, ran_s=round(ran, 1),
                           restart_in_s=backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.restarts += 1
        self.state = STOPPED

    def _relay(self, stream):
        for line in stream:
            line = ANSI.sub("", line).rstrip()
            if not line:
                continue
            self.log.event("supernode_output", component="fleet", level=_level_of(line), line=line[:500])
            m = CONNECTED.search(line)
            if m:
                self.link = {"connected": True, "node_id": int(m.group(1)), "since": round(time.time(), 3)}
                self.log.event("supernode_connected", component="fleet", node_id=int(m.group(1)),
                               superlink=self.cfg.superlink)
            elif self.link.get("connected") and any(w in line for w in DISCONNECTED):
                self.link = {"connected": False, "since": round(time.time(), 3), "why": line[:200]}

    def stop(self):
        """SIGTERM to its process group (it and the ClientApps it spawned), SIGKILL after a bound."""
        self._stop.set()
        p = self.proc
        if p is not None:
            stop_process(p)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self.log.event("supernode_stopped", component="fleet", rc=p.returncode if p is not None else None)

    def status(self) -> dict:
        p = self.proc
        link = self.link
        return {"state": self.state, "pid": p.pid if p is not None and p.poll() is None else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "connected": link["connected"],
                "node_id": link.get("node_id"), "link_since": link.get("since"), "link_why": link.get("why")}
