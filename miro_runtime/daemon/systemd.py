"""sd_notify in-house: datagrams to ``$NOTIFY_SOCKET`` (READY, STATUS, STOPPING, WATCHDOG,
RELOADING). A leading '@' names an abstract socket. Nothing happens when the variable is unset
(not under systemd). The watchdog interval comes from ``$WATCHDOG_USEC`` (for this pid only when
``$WATCHDOG_PID`` says so); ping at half of it."""

from __future__ import annotations

import os
import socket
import time
from typing import Optional


def notify(message: str, env=None) -> bool:
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval(env=None) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when no watchdog is asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.01)
    except ValueError:
        return None


def reloading(env=None) -> bool:
    return notify(f"RELOADING=1\nMONOTONIC_USEC={int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)}", env)
