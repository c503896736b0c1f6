"""Start a mirod as a child process and wait until it answers on its socket: the demos, the fleet demo,
benches and examples all start boards this way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional


def start_daemon(state_dir: str, *sets: str, timeout: float = 120.0, env: Optional[dict] = None) -> tuple:
    """(process, socket path) of a mirod started on ``state_dir`` (``env``: added to this process's), once it
    answers."""
    from miro_runtime.wire.client import Client, NoDaemon
    os.makedirs(state_dir, exist_ok=True)
    sock = os.path.join(state_dir, "mirod.sock")
    exe = [sys.executable, "-m", "miro_runtime.daemon", "--state-dir", state_dir, "--socket", sock]
    for s in sets:
        exe += ["--set", s]
    env = {**{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}, **(env or {})}
    proc = subprocess.Popen(exe, stdout=subprocess.DEVNULL, stderr=open(os.path.join(state_dir, "mirod.stderr"), "ab"),
                            env=env)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"mirod exited with {proc.returncode}; see {state_dir}/mirod.stderr")
        try:
            with Client(sock, timeout=5) as c:
                c.call("ping")
            return proc, sock
        except (NoDaemon, ConnectionError, OSError):
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"mirod did not answer on {sock} within {timeout:.0f} s")
