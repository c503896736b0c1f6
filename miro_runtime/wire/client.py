"""A small client of mirod's control socket (stdlib only; numpy only when you hand it arrays).

    with Client("/run/mirod/mirod.sock") as c:
        c.ingest(task=0, split="train", x=images_uint8_nchw, labels=labels)
        c.call("task_end", task=0)
        print(c.call("status")["state"])

The CLI and ``examples/stream_to_daemon.py`` use it; any language can speak the protocol
(``miro_runtime.wire.protocol`` documents it)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import time

from miro_runtime.wire.protocol import DEFAULT_MAX_MESSAGE, HEADER, frame


class DaemonError(Exception):
    """The daemon answered with an error object."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (code {code})")
        self.code, self.message = code, message


class NoDaemon(ConnectionError):
    """Nothing listens on the socket."""


def default_socket(state_dir=None) -> str:
    """``$MIRO_SOCKET``, else ``$RUNTIME_DIRECTORY/mirod.sock``, else ``<state dir>/mirod.sock``."""
    if os.environ.get("MIRO_SOCKET"):
        return os.environ["MIRO_SOCKET"]
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "mirod.sock")
    return os.path.join(state_dir or default_state_dir(), "mirod.sock")


def default_state_dir() -> str:
    """``$MIRO_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else ``~/.local/state/miro``."""
    for var in ("MIRO_STATE_DIR", "STATE_DIRECTORY"):
        if os.environ.get(var):
            return os.environ[var].split(":")[0]
    return os.path.join(os.path.expanduser("~"), ".local", "state", "miro")


class Client:
    def __init__(self, path: str, timeout: float = 60.0, max_message: int = DEFAULT_MAX_MESSAGE):
        self.path, self.max_message = path, max_message
        self._ids = itertools.count(1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            for attempt in range(50):
                try:
                    self.sock.connect(path)
                    break
                except BlockingIOError:  # the listen backlog is full for a moment: a burst of clients
                    if attempt == 49:
                        raise
                    time.sleep(0.01 * (attempt + 1))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self.sock.close()
            raise NoDaemon(f"no daemon answers on {path} ({e.strerror}); start one with `miro daemon` "
                           f"or `systemctl start mirod`") from None
        except PermissionError:
            self.sock.close()
            raise

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, method: str, params=None) -> dict:
        """Send one request, return the raw response object."""
        rid = next(self._ids)
        self.sock.sendall(frame({"id": rid, "method": method, "params": params or {}}))
        (n,) = HEADER.unpack(self._recv_exact(HEADER.size))
        if n > self.max_message:
            raise ConnectionError(f"response of {n} bytes is over the {self.max_message}-byte limit")
        return json.loads(self._recv_exact(n))

    def call(self, method: str, **params):
        """The result, or DaemonError."""
        resp = self.request(method, params)
        if "error" in resp:
            raise DaemonError(resp["error"].get("code"), resp["error"].get("message"))
        return resp["result"]

    def ingest(self, task: int, split: str, x, labels=None, wait: bool = True, batch_id=None):
        """Send samples (uint8/float (n, c, h, w) array); returns once they are durable. Labels go as
        they are (the daemon refuses non-integers by name; nothing is truncated here). ``batch_id``
        (a string of at most 128 bytes) makes a resend after a lost answer safe: a batch id the
        daemon committed before stores nothing and answers the original ``acked`` with
        ``duplicate: true``."""
        import numpy as np
        x = np.ascontiguousarray(x)
        params = {"task": int(task), "split": split, "dtype": str(x.dtype), "shape": list(x.shape),
                  "data": base64.b64encode(x.tobytes()).decode("ascii"), "wait": wait}
        if labels is not None:
            params["labels"] = np.asarray(labels).reshape(-1).tolist()
        if batch_id is not None:
            params["batch_id"] = batch_id
        return self.call("ingest", **params)

    def predict(self, x, k: int = 3):
        import numpy as np
        x = np.ascontiguousarray(x)
        return self.call("predict", dtype=str(x.dtype), shape=list(x.shape), k=k,
                         data=base64.b64encode(x.tobytes()).decode("ascii"))
