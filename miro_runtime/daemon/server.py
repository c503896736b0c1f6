"""mirod's control server: the Unix stream socket, length-prefixed JSON frames (wire/protocol.py)
within the configured limits, the peer's credentials (SO_PEERCRED plus its groups from /proc),
who may call what (read-only methods for the socket group, mutating ones for the daemon's uid,
root and the admin group), dispatch to handlers.py, and the one mapping of failures to protocol
error codes. A method's parameters are checked here against the types its handler's signature
declares (msgspec, strict JSON typing: no string is turned into a number), so every type check and
error code lives in this file. The shape follows gunicorn's ctl/server.py; the SO_PEERCRED checks
are ours.
"""

from __future__ import annotations

import asyncio
import grp
import inspect
import logging
import os
import socket
import struct
import time
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import msgspec

from miro_runtime.daemon.config import ConfigError, DaemonConfig
from miro_runtime.daemon.handlers import MUTATING, READ_ONLY, STRICT, Handlers
from miro_runtime.log import EventLog
from miro_runtime.session.errors import SessionError
from miro_runtime.wire import protocol as P

log = logging.getLogger("miro.daemon")

# SessionError.kind -> the code a client sees
SESSION_CODES = {"params": P.INVALID_PARAMS, "conflict": P.CONFLICT, "busy": P.BUSY, "not-ready": P.NOT_READY,
                 "stopping": P.STOPPING}
RETRY_CODES = (P.BUSY, P.NOT_READY, P.STOPPING)  # refusals that say "try again later", not "you got it wrong"
LATENCIES_KEPT = 1000  # per method; the older half is dropped when full


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection: SO_PEERCRED's pid, uid, gid and every group."""

    pid: int
    uid: int
    gid: int
    groups: frozenset

    def to_dict(self) -> dict:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "groups": sorted(self.groups)}


def peer_of(sock) -> Peer:
    """SO_PEERCRED (pid, uid, gid) plus the peer's supplementary groups from /proc."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return Peer(pid, uid, gid, frozenset(groups))


def group_id(name: str) -> Optional[int]:
    """A group's id from its name or number; None for ""."""
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"daemon group {name!r} does not exist") from None


def protocol_error(e: BaseException) -> Optional[P.ProtocolError]:
    """The error response a failure becomes, or None for a bug (an internal error)."""
    from miro_runtime.storage import StoreError
    if isinstance(e, P.ProtocolError):
        return e
    if isinstance(e, SessionError):
        return P.ProtocolError(SESSION_CODES.get(e.kind, P.INTERNAL_ERROR), str(e))
    if isinstance(e, ValueError):  # bad input as the store, the stream, the files and the config see it
        return P.ProtocolError(P.INVALID_PARAMS, str(e))
    if isinstance(e, StoreError):
        return P.ProtocolError(P.STORE_ERROR, str(e))
    return None


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Any: "any value"}
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def describe(hint) -> str:
    """A parameter's type in words, for the error that names it: "an integer >= 1"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        metas = [m for m in args[1:] if isinstance(m, msgspec.Meta)]
        if metas and metas[0].description:
            return metas[0].description
        return describe(args[0]) + "".join(f" {op} {getattr(m, k)}" for m in metas for k, op in _BOUNDS
                                           if getattr(m, k) is not None)
    if origin is Union:  # Optional[X]: None is always allowed, so only X is named
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return "a list"
    return _WORDS.get(hint, str(hint))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Method:
    """One RPC method: its handler, whether it mutates, and the parameters its signature declares
    (name -> (type, required)). Unknown parameters are ignored unless the method is strict."""

    def __init__(self, name: str, fn, mutating: bool, strict: bool):
        self.name, self.fn, self.mutating, self.strict = name, fn, mutating, strict
        hints = typing.get_type_hints(fn, include_extras=True)
        self.params = {p.name: (hints.get(p.name, Any), p.default is inspect.Parameter.empty)
                       for p in inspect.signature(fn).parameters.values()}

    def bind(self, params: dict) -> dict:
        """The handler's keyword arguments, typed, or ProtocolError(INVALID_PARAMS) naming the parameter."""
        unknown = set(params) - set(self.params)
        if self.strict and unknown:
            raise P.ProtocolError(P.INVALID_PARAMS, f"unknown {self.name} params {sorted(unknown)}; known: "
                                                    f"{', '.join(self.params)}")
        out = {}
        for name, (hint, required) in self.params.items():
            if name not in params:
                if required:
                    raise P.ProtocolError(P.INVALID_PARAMS, f"{name} must be {describe(hint)}; it is missing")
                continue
            try:
                out[name] = msgspec.convert(params[name], hint, strict=True)
            except msgspec.ValidationError:
                raise P.ProtocolError(P.INVALID_PARAMS,
                                      f"{name} must be {describe(hint)}, got {_short(params[name])}") from None
        return out


class ControlServer:
    """Connections, frames, peers, authorisation and dispatch; counters and latencies of requests."""

    def __init__(self, handlers: Handlers, cfg: DaemonConfig, log_: EventLog, stopping: asyncio.Event,
                 read_gid: Optional[int], admin_gid: Optional[int]):
        self.cfg, self.log, self.stopping = cfg, log_, stopping  # cfg.daemon's limits are live: read per use
        self.read_gid, self.admin_gid, self.uid = read_gid, admin_gid, os.getuid()
        self.methods = {name: Method(name, getattr(handlers, name), name in MUTATING, name in STRICT)
                        for name in sorted(READ_ONLY | MUTATING)}
        self.conns = 0
        self.counters = {"requests": 0, "errors": 0, "refused": 0, "connections": 0}
        self.lat: dict = {}  # method -> recent latencies (s)
        self.path, self._server = None, None

    async def listen(self, path: str):
        """Serve on ``path`` with the configured mode; the socket group may connect."""
        self.path = path
        self._server = await asyncio.start_unix_server(self.serve, path=path, limit=1 << 16, backlog=1024)
        os.chmod(path, int(self.cfg.daemon.socket_mode, 8))
        if self.read_gid is not None:
            os.chown(path, -1, self.read_gid)

    def close(self):
        """Stop accepting and remove the socket file."""
        self._server.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def serve(self, reader, writer):
        peer = peer_of(writer.get_extra_info("socket"))
        self.counters["connections"] += 1
        self.conns += 1
        d = self.cfg.daemon
        try:
            if self.conns > d.max_connections:
                why = f"too many connections (max_connections={d.max_connections})"
                self._refused(peer, P.BUSY, why)
                await self._send(writer, P.error_response(None, P.BUSY, why))
                return
            while not self.stopping.is_set():
                try:
                    head = await asyncio.wait_for(reader.readexactly(4), d.idle_timeout_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                (n,) = P.HEADER.unpack(head)
                if n > d.max_message_bytes:
                    why = f"message of {n} bytes is over the limit of {d.max_message_bytes} (max_message_bytes)"
                    self._refused(peer, P.TOO_LARGE, why)
                    await self._send(writer, P.error_response(None, P.TOO_LARGE, why))
                    self.counters["errors"] += 1
                    return  # the rest of the frame cannot be skipped safely: close
                try:
                    body = await asyncio.wait_for(reader.readexactly(n), d.idle_timeout_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return  # truncated frame: nothing was acted on
                if not await self._send(writer, await self.handle(body, peer)):
                    return
        finally:
            self.conns -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def _send(self, writer, obj) -> bool:
        try:
            data = P.frame(obj)
        except (TypeError, ValueError) as e:  # a result JSON cannot hold (NaN): an error instead
            data = P.frame(P.error_response(obj.get("id"), P.INTERNAL_ERROR, f"unserialisable result: {e}"))
        try:
            writer.write(data)
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            return False

    async def handle(self, body: bytes, peer: Peer) -> dict:
        """One request frame -> its response object; a failure is an error response, never a dead daemon."""
        self.counters["requests"] += 1
        rid, name = None, None
        t0 = time.perf_counter()
        try:
            rid, name, params = P.parse_request(body)
            method = self.methods.get(name)
            if method is None:
                raise P.ProtocolError(P.METHOD_NOT_FOUND, f"unknown method {name!r}; methods: "
                                                          f"{', '.join(self.methods)}")
            self._authorise(method, peer)
            result = await method.fn(**method.bind(params))
            self._latency(name, time.perf_counter() - t0)
            return {"id": rid, "result": result}
        except Exception as e:
            self.counters["errors"] += 1
            err = protocol_error(e)
            if err is None:  # a bug in a handler
                log.exception("handler failed")
                self.log.event("error", component="socket", error=f"{type(e).__name__}: {e}", peer=peer.to_dict())
                return P.error_response(rid, P.INTERNAL_ERROR, f"{type(e).__name__}: {e}")
            rid = getattr(err, "id", rid)  # parse_request names the id it could read
            if err.code != P.PERMISSION_DENIED:  # _authorise logged that one, as peer_refused
                # info, so `miro logs` shows a client's mistakes by default; debug for the answers that only
                # say "try again", which a polling client repeats many times a second
                self._refused(peer, err.code, err.message, name, "debug" if err.code in RETRY_CODES else "info")
            return P.error_response(rid, err.code, err.message)

    def _refused(self, peer: Peer, code: int, why: str, method: Optional[str] = None, level: str = "info"):
        """One log line for a request (or connection) the daemon refused: who asked (uid, pid) and why."""
        self.log.event("request_refused", level=level, method=method, code=code, reason=P.CODE_NAMES.get(code, code),
                       error=why, peer=peer.to_dict())

    def _authorise(self, method: Method, peer: Peer):
        if peer.uid in (0, self.uid) or (self.admin_gid is not None and self.admin_gid in peer.groups):
            return  # an admin: every method
        if not method.mutating and self.read_gid is not None and self.read_gid in peer.groups:
            return
        self.counters["refused"] += 1
        what = "mutating" if method.mutating else "read-only"
        why = f"uid {peer.uid} may not call {what} method {method.name!r}: " + (
            "mutating methods are for the daemon's uid, root and the admin group" if method.mutating
            else "read-only methods are for the socket group and admins")
        self.log.event("peer_refused", method=method.name, code=P.PERMISSION_DENIED, error=why, peer=peer.to_dict())
        raise P.ProtocolError(P.PERMISSION_DENIED, why)

    def _latency(self, method: str, dt: float):
        q = self.lat.setdefault(method, [])
        q.append(dt)
        if len(q) > LATENCIES_KEPT:
            del q[:LATENCIES_KEPT // 2]
