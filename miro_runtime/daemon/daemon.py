"""`mirod`: the long-running runtime. An asyncio process owning a state directory (flash tier,
checkpoints, config, logs); a ``Session`` learns in a worker thread so the event loop always
answers. Control socket: length-prefixed JSON (protocol.py) on a Unix stream socket, mode 0660
with a group, SO_PEERCRED deciding who may call what. systemd Type=notify with watchdog pings from
the event loop; signal handlers only enqueue. The shape follows gunicorn's ctl server and
systemd.py; SO_PEERCRED checks, WATCHDOG and STOPPING are ours.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import functools
import fcntl
import grp
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time

from miro_runtime.wire import protocol as P
from miro_runtime.daemon import systemd
from miro_runtime.daemon.config import (LIVE, ConfigError, DaemonConfig, load, overrides_path, read_overrides,
                                         write_overrides)
from miro_runtime.log import EventLog, SyslogPrefixFormatter

log = logging.getLogger("miro.daemon")

# kv_generate is inference: it changes no learning state (it may store prompt prefixes in the KV namespace)
READ_ONLY = {"ping", "status", "eval", "predict", "logs", "config_show", "task_list", "kv_generate"}
MUTATING = {"ingest", "task_end", "config_set", "config_reload", "profile", "checkpoint", "shutdown"}
DTYPES = ("uint8", "float32", "float64", "int16", "int32", "int64", "uint16")
EXIT_ALREADY_RUNNING = 3
EXIT_CONFIG = 78  # EX_CONFIG
EXIT_STATE = 65  # EX_DATAERR: the state directory cannot be resumed as it is


class Peer:
    def __init__(self, pid: int, uid: int, gid: int, groups: set):
        self.pid, self.uid, self.gid, self.groups = pid, uid, gid, groups

    def to_dict(self):
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
    return Peer(pid, uid, gid, groups)


def _gid(name: str):
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"daemon group {name!r} does not exist") from None


class Daemon:
    def __init__(self, cfg: DaemonConfig, config_path=None, overrides=(), retrain_from_store: bool = False):
        self.cfg, self.config_path = cfg, config_path
        self.overrides = list(overrides)  # command-line settings: they win over the file on every reload
        self.retrain_from_store = retrain_from_store
        d = cfg.daemon
        self.state_dir = os.path.abspath(d.state_dir)
        self.logs_dir = os.path.abspath(d.logs_dir or os.environ.get("LOGS_DIRECTORY", "").split(":")[0] or
                                        os.path.join(self.state_dir, "logs"))
        from miro_runtime.wire.client import default_socket
        self.sock_path = os.path.abspath(d.socket or default_socket(self.state_dir))
        self.read_gid, self.admin_gid = _gid(d.socket_group), _gid(d.admin_group)
        self.uid = os.getuid()
        self.session = None
        self.stopping = None  # an asyncio.Event, made on the loop in main()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mirod-io")
        self.predict_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mirod-predict")
        self.kv_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirod-kv")
        from miro_runtime.kv.service import KVService, KVShare  # torch-free until the first generation
        self.kv = KVService(os.path.join(self.state_dir, "kv"), KVShare(**{
            k: v for k, v in vars(cfg.kv).items() if k != "enabled"}))
        self.conns = 0
        self.counters = {"requests": 0, "errors": 0, "refused": 0, "connections": 0}
        self.lat = {}  # method -> recent latencies (s), for status and metrics
        self.started = time.time()

    # ------------------------------------------------------------------ start-up
    def _lock_state(self):
        os.makedirs(self.state_dir, exist_ok=True)
        self._lockfh = open(os.path.join(self.state_dir, "mirod.lock"), "w")
        try:
            fcntl.flock(self._lockfh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"mirod: another mirod owns the state directory {self.state_dir}", file=sys.stderr)
            raise SystemExit(EXIT_ALREADY_RUNNING) from None

    def _claim_socket(self):
        """Never steal a live daemon's socket; replace a stale one."""
        if os.path.exists(self.sock_path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2.0)
            try:
                probe.connect(self.sock_path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.sock_path)  # stale: nobody listens
                self.log.event("socket_stale_replaced", path=self.sock_path)
            except OSError as e:
                raise SystemExit(f"mirod: cannot probe existing socket {self.sock_path}: {e}") from None
            else:
                probe.close()
                print(f"mirod: a live daemon already serves {self.sock_path}; not replacing it", file=sys.stderr)
                raise SystemExit(EXIT_ALREADY_RUNNING)
            finally:
                probe.close()
        os.makedirs(os.path.dirname(self.sock_path), exist_ok=True)

    def _open_session(self):
        from miro_runtime.profilers import ResourceMonitor
        from miro_runtime.session.session import Session
        lcfg = self.cfg.learning
        lcfg.run_dir = self.state_dir
        self.session = Session(lcfg, self.cfg.session, log_=self.log, monitor=ResourceMonitor(),
                               retrain_from_store=self.retrain_from_store)
        self.session.open()

    async def main(self) -> int:
        self._lock_state()
        os.makedirs(self.logs_dir, exist_ok=True)
        d = self.cfg.daemon
        self.log = EventLog(os.path.join(self.logs_dir, "mirod.jsonl"), max_bytes=d.log_max_bytes,
                            backups=d.log_backups, component="daemon", level=d.log_level)
        self._claim_socket()
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)  # handlers only enqueue; main() acts
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        systemd.notify("STATUS=opening the state directory")
        try:
            await loop.run_in_executor(None, self._open_session)  # torch and the store: seconds on a board
        except Exception as e:
            from miro_runtime.storage import StoreError
            from miro_runtime.session.session import SessionError
            if not isinstance(e, (SessionError, StoreError)):
                raise
            self.log.event("error", component="daemon", error=str(e), state_dir=self.state_dir)
            print(f"mirod: {e}", file=sys.stderr)
            systemd.notify(f"STATUS=cannot open the state directory: {e}")
            raise SystemExit(EXIT_STATE) from None
        # before READY, with nothing competing: a fresh state dir would otherwise pay torch's one-time
        # imports at the first sample, where ingest threads starve them of the GIL (measured: >4 s)
        await loop.run_in_executor(None, _warm_engine)
        self.trainer = threading.Thread(target=self.session.run_trainer, name="mirod-trainer", daemon=True)
        self.trainer.start()
        self.server = await asyncio.start_unix_server(self._serve, path=self.sock_path, limit=1 << 16,
                                                     backlog=1024)
        os.chmod(self.sock_path, int(d.socket_mode, 8))
        if self.read_gid is not None:
            os.chown(self.sock_path, -1, self.read_gid)
        self.log.event("started", pid=os.getpid(), socket=self.sock_path, state_dir=self.state_dir,
                       logs_dir=self.logs_dir, config=self.cfg.to_dict(), config_sources=self.cfg.source)
        systemd.notify("READY=1\nSTATUS=serving on " + self.sock_path)
        helpers = [asyncio.ensure_future(c) for c in (self._watchdog(), self._reloader(), self._inbox(),
                                                       self._metrics(), self._status_notes())]
        await self.stopping.wait()
        await self._shutdown(helpers)
        return 0

    async def _shutdown(self, helpers):
        """Stop accepting, let the trainer finish or checkpoint its step, flush, exit in bounded time."""
        systemd.notify("STOPPING=1\nSTATUS=stopping: finishing the current step")
        self.log.event("stopping")
        self.server.close()
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        self.session.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.trainer.join, self.cfg.daemon.shutdown_timeout_s)
        clean = not self.trainer.is_alive()
        for h in helpers:
            h.cancel()
        self.session.close() if clean else None
        self.log.event("stopped", clean=clean, uptime_s=round(time.time() - self.started, 1))
        self.log.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.predict_pool.shutdown(wait=False, cancel_futures=True)
        # a generation in flight may finish within the same bound (its cold blocks are deleted); queued ones
        # are cancelled. One still running after that is abandoned: KV is a cache, and the next start
        # deletes the cold blocks it leaves.
        try:
            await asyncio.wait_for(loop.run_in_executor(None, functools.partial(
                self.kv_pool.shutdown, wait=True, cancel_futures=True)), self.cfg.daemon.shutdown_timeout_s)
            self.kv.close()
        except asyncio.TimeoutError:
            log.warning("a KV generation was still running at shutdown: abandoned")
            os._exit(0 if clean else 1)  # its worker thread would otherwise hold the interpreter's exit
        if not clean:  # the step did not finish in time: the last checkpoint and the store are intact
            os._exit(1)

    # ------------------------------------------------------------------ helpers on the loop
    async def _watchdog(self):
        every = systemd.watchdog_interval() if self.cfg.daemon.watchdog else None
        if not every:
            return
        while True:  # pinged from the loop itself: a blocked loop stops the pings and systemd restarts us
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def _status_notes(self):
        while True:
            await asyncio.sleep(5)
            s = self.session
            systemd.notify(f"STATUS={s.state}; tasks trained {s.done}; samples {s.counters['ingested_train']}")

    async def _reloader(self):
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            self.reload()

    def reload(self) -> dict:
        """SIGHUP / config_reload: apply what can change live, say what needs a restart."""
        systemd.reloading()
        try:
            new = self._load()
        except ConfigError as e:
            self.log.event("config_rejected", error=str(e))
            systemd.notify("READY=1")
            return {"applied": {}, "restart_needed": {}, "error": str(e)}
        applied, restart = {}, {}
        old, fresh = self.cfg.to_dict(), new.to_dict()
        for table in fresh:
            for k, v in fresh[table].items():
                if k == "state_dir" or old[table].get(k) == v:
                    continue
                if k in LIVE[table]:
                    self._apply(table, k, v)
                    applied[f"{table}.{k}"] = v
                else:
                    restart[f"{table}.{k}"] = v
        self.log.event("config_reloaded", applied=applied, restart_needed=restart, sources=new.source)
        systemd.notify("READY=1")
        return {"applied": applied, "restart_needed": restart}

    def _load(self) -> DaemonConfig:
        new = load(self.config_path, self.state_dir)
        for k, v in self.overrides:
            new.set(k, v, "command line")
        new.validate()
        return new

    def _apply(self, table, key, value):
        setattr(self.cfg.section(table), key, value)
        if table == "learning" and self.session is not None:
            setattr(self.session.cfg, key, value)
        if table == "kv" and hasattr(self.kv.share, key):
            setattr(self.kv.share, key, value)
        if table == "daemon" and key == "log_level":
            self.log.level = value

    # ------------------------------------------------------------------ connections
    async def _serve(self, reader, writer):
        sock = writer.get_extra_info("socket")
        peer = peer_of(sock)
        self.counters["connections"] += 1
        self.conns += 1
        d = self.cfg.daemon
        try:
            if self.conns > d.max_connections:
                await self._send(writer, P.error_response(None, P.BUSY, f"too many connections "
                                                                        f"(max_connections={d.max_connections})"))
                return
            while not self.stopping.is_set():
                try:
                    head = await asyncio.wait_for(reader.readexactly(4), d.idle_timeout_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                (n,) = P.HEADER.unpack(head)
                if n > d.max_message_bytes:
                    await self._send(writer, P.error_response(None, P.TOO_LARGE, f"message of {n} bytes is over the "
                                                              f"limit of {d.max_message_bytes} (max_message_bytes)"))
                    self.counters["errors"] += 1
                    return  # the rest of the frame cannot be skipped safely: close
                try:
                    body = await asyncio.wait_for(reader.readexactly(n), d.idle_timeout_s)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return  # truncated frame: nothing was acted on
                resp = await self._handle(body, peer)
                if not await self._send(writer, resp):
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

    async def _handle(self, body: bytes, peer: Peer) -> dict:
        self.counters["requests"] += 1
        rid = None
        t0 = time.perf_counter()
        try:
            rid, method, params = P.parse_request(body)
            if method not in READ_ONLY and method not in MUTATING:
                raise P.ProtocolError(P.METHOD_NOT_FOUND, f"unknown method {method!r}; methods: "
                                                          f"{', '.join(sorted(READ_ONLY | MUTATING))}")
            self._authorise(method, peer)
            result = await getattr(self, "m_" + method)(params)
            self._latency(method, time.perf_counter() - t0)
            return {"id": rid, "result": result}
        except P.ProtocolError as e:
            self.counters["errors"] += 1
            rid = getattr(e, "id", rid)
            if e.code != P.PERMISSION_DENIED:
                self.log.event("request_error", level="debug", code=e.code, error=e.message, peer=peer.to_dict())
            return P.error_response(rid, e.code, e.message)
        except Exception as e:  # a bug in a handler: an error response, never a dead daemon
            self.counters["errors"] += 1
            log.exception("handler failed")
            self.log.event("error", component="socket", error=f"{type(e).__name__}: {e}", peer=peer.to_dict())
            return P.error_response(rid, P.INTERNAL_ERROR, f"{type(e).__name__}: {e}")

    def _authorise(self, method: str, peer: Peer):
        admin = peer.uid in (0, self.uid) or (self.admin_gid is not None and self.admin_gid in peer.groups)
        if admin:
            return
        reader = self.read_gid is not None and self.read_gid in peer.groups
        if method in READ_ONLY and reader:
            return
        self.counters["refused"] += 1
        self.log.event("peer_refused", method=method, peer=peer.to_dict())
        what = "mutating" if method in MUTATING else "read-only"
        raise P.ProtocolError(P.PERMISSION_DENIED,
                              f"uid {peer.uid} may not call {what} method {method!r}: "
                              + ("mutating methods are for the daemon's uid, root and the admin group"
                                 if method in MUTATING else "read-only methods are for the socket group and admins"))

    def _latency(self, method, dt):
        q = self.lat.setdefault(method, [])
        q.append(dt)
        if len(q) > 1000:
            del q[:500]

    async def _run(self, fn, *a, pool=None):
        from miro_runtime.session.session import SessionError
        try:
            return await asyncio.get_running_loop().run_in_executor(pool or self.pool, fn, *a)
        except SessionError as e:
            code = {"params": P.INVALID_PARAMS, "conflict": P.CONFLICT, "busy": P.BUSY, "not-ready": P.NOT_READY,
                    "stopping": P.STOPPING}.get(e.kind, P.INTERNAL_ERROR)
            raise P.ProtocolError(code, str(e)) from None
        except ValueError as e:  # the store's and the stream's bad-input errors
            raise P.ProtocolError(P.INVALID_PARAMS, str(e)) from None
        except Exception as e:
            from miro_runtime.storage import StoreError
            if isinstance(e, StoreError):
                raise P.ProtocolError(P.STORE_ERROR, str(e)) from None
            raise

    # ------------------------------------------------------------------ methods
    async def m_ping(self, params):
        return {"pong": True, "pid": os.getpid()}

    async def m_status(self, params):
        st = self.session.status()
        st["kv"] = {"enabled": self.cfg.kv.enabled, **self.kv.status()}
        st["daemon"] = {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3), "socket": self.sock_path,
                        "state_dir": self.state_dir, "logs_dir": self.logs_dir, "open_connections": self.conns,
                        **self.counters}
        return st

    async def m_eval(self, params):
        return await self._run(self.session.evaluate)

    async def m_task_list(self, params):
        s = self.session
        lr = s.learner
        tasks = []
        for t, spec in enumerate(s.stream.tasks if s.stream else []):
            rec = lr.per_task[t] if lr is not None and t < len(lr.per_task) else None
            tasks.append({"task": t, "classes": [s.stream.inv[c] for c in spec.classes],
                          "state": "trained" if t < s.done else "ended" if t in s.ended else "open",
                          "test_samples": int(len(s.stream.test[t][1])),
                          "avg_acc": rec and rec["avg_acc"], "energy_j": rec and rec["energy_j"]})
        return {"tasks": tasks}

    def _arrays(self, params, need_labels: bool):
        import numpy as np
        shape, dtype, data = params.get("shape"), params.get("dtype", "uint8"), params.get("data")
        if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                     and v > 0 for v in shape):
            raise P.ProtocolError(P.INVALID_PARAMS, f"shape must be [n, c, h, w] of positive integers, got {shape!r}")
        if dtype not in DTYPES:
            raise P.ProtocolError(P.INVALID_PARAMS, f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(data, str):
            raise P.ProtocolError(P.INVALID_PARAMS, "data must be a base64 string of the raw C-order bytes")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise P.ProtocolError(P.INVALID_PARAMS, f"data is not valid base64: {e}") from None
        want = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(raw) != want:
            raise P.ProtocolError(P.INVALID_PARAMS,
                                  f"data holds {len(raw)} bytes; shape {shape} of {dtype} needs {want}")
        x = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable: torch wants to own it
        labels = params.get("labels")
        if need_labels:
            if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise P.ProtocolError(P.INVALID_PARAMS, "labels must be a list of integers, one per sample")
            if len(labels) != shape[0]:
                raise P.ProtocolError(P.INVALID_PARAMS, f"{shape[0]} samples but {len(labels)} labels")
        return x, labels

    async def m_ingest(self, params):
        if self.stopping.is_set():
            raise P.ProtocolError(P.STOPPING, "the daemon is stopping; nothing was stored")
        task, split = params.get("task"), params.get("split", "train")
        if "path" in params:
            if not isinstance(params["path"], str):
                raise P.ProtocolError(P.INVALID_PARAMS, "path must be a string")
            return await self._run(self._ingest_path, params["path"], task, split)
        if isinstance(task, bool) or not isinstance(task, int):
            raise P.ProtocolError(P.INVALID_PARAMS, f"task must be an integer, got {task!r}")
        if not isinstance(split, str):
            raise P.ProtocolError(P.INVALID_PARAMS, "split must be 'train' or 'test'")

        def work():
            x, labels = self._arrays(params, need_labels=True)
            return self.session.ingest(task, split, x, labels)
        return await self._run(work)

    def _ingest_path(self, path, task=None, split=None, end=False, source=None) -> dict:
        """An .npz (arrays x, y, optional task, split) or an image folder in the folder stream's layouts."""
        import numpy as np
        if not os.path.exists(path):
            raise P.ProtocolError(P.INVALID_PARAMS, f"path {path} does not exist (on the daemon's machine)")
        if os.path.isdir(path):
            from miro_runtime.engine.streams import folder_stream
            st = folder_stream(path, seed=0)
            names = st.info.get("class_names", [])
            lab = [int(n) if str(n).isdigit() else i for i, n in enumerate(names)]
            first = self.session.open_task if self.session.open_task >= 0 and \
                self.session.open_task not in self.session.ended else self.session.open_task + 1
            out = {"acked": 0, "tasks": []}
            for t in range(len(st.tasks)):
                (x, y), (xt, yt) = st.train[t], st.test[t]
                r = self.session.ingest(first + t, "train", x, [lab[c] for c in y.tolist()])
                if len(yt):
                    self.session.ingest(first + t, "test", xt, [lab[c] for c in yt.tolist()])
                self.session.end_task(first + t)
                out["acked"] += r["acked"] + len(yt)
                out["tasks"].append(first + t)
            return out
        try:
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z or "y" not in z:
                    raise P.ProtocolError(P.INVALID_PARAMS, f"{path}: an .npz needs arrays 'x' and 'y'")
                x, y = z["x"], z["y"]
                t = int(z["task"]) if "task" in z and z["task"].ndim == 0 else task
                sp = str(z["split"]) if "split" in z else (split or "train")
        except (OSError, ValueError) as e:
            raise P.ProtocolError(P.INVALID_PARAMS, f"{path}: not a readable .npz ({e})") from None
        if x.ndim == 3:
            x = x[:, None]
        if source and self.session.already_ingested(source):
            return {"acked": 0, "already_ingested": True, "source": source}
        if t is None:
            s = self.session
            t = s.open_task if s.open_task >= 0 and s.open_task not in s.ended else s.open_task + 1
        r = self.session.ingest(int(t), sp, x, [int(v) for v in np.asarray(y).reshape(-1)], source=source)
        if end:
            self.session.end_task(int(t))
        return r

    async def m_task_end(self, params):
        task = params.get("task")
        if task is None:
            task = self.session.open_task
        if isinstance(task, bool) or not isinstance(task, int):
            raise P.ProtocolError(P.INVALID_PARAMS, f"task must be an integer, got {task!r}")
        res = await self._run(self.session.end_task, task)
        if params.get("wait"):  # wait until it is trained and evaluated
            timeout = float(params.get("timeout", 600))
            t0 = time.monotonic()
            while self.session.done <= task and time.monotonic() - t0 < timeout and not self.stopping.is_set():
                await asyncio.sleep(0.05)
            res["trained"] = self.session.done > task
            if res["trained"] and self.session.learner.per_task:
                rec = self.session.learner.per_task[task]
                res.update({k: rec.get(k) for k in ("acc", "avg_acc", "energy_j", "energy_provenance")})
        return res

    async def m_predict(self, params):
        k = params.get("k", 3)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise P.ProtocolError(P.INVALID_PARAMS, f"k must be an integer >= 1, got {k!r}")

        def work():
            x, _ = self._arrays(params, need_labels=False)
            return self.session.predict(x, k)
        return await self._run(work, pool=self.predict_pool)

    async def m_kv_generate(self, params):
        if not self.cfg.kv.enabled:
            raise P.ProtocolError(P.NOT_READY, "KV generation is off (kv.enabled = false)")
        unknown = set(params) - {"prompt", "max_new_tokens", "policy", "hot_budget"}
        if unknown:
            raise P.ProtocolError(P.INVALID_PARAMS, f"unknown kv_generate params {sorted(unknown)}; known: prompt, "
                                                    "max_new_tokens, policy, hot_budget")
        args = (params.get("prompt"), params.get("max_new_tokens", 32), params.get("policy"), params.get("hot_budget"))
        try:
            self.kv.check(*args)  # bad input answered at once, not after the queue
        except ValueError as e:
            raise P.ProtocolError(P.INVALID_PARAMS, str(e)) from None
        res = await self._run(self.kv.generate, *args, pool=self.kv_pool)
        self.log.event("kv_generate", policy=res["policy"], prompt_tokens=res["prompt_tokens"],
                       new_tokens=res["new_tokens"], tokens_per_s=res["tokens_per_s"], ttft_s=res["ttft_s"],
                       hot_bytes=res["hot_bytes"], cold_bytes=res["cold_bytes"], prefix_hits=res["prefix_hits"])
        return res

    async def m_checkpoint(self, params):
        return await self._run(self.session.checkpoint)

    async def m_profile(self, params):
        s = self.session
        if not self.cfg.learning.miro:
            raise P.ProtocolError(P.NOT_READY, "Miro is off (learning.miro = false): nothing to profile")
        if s.learner is None or not s.learner.per_task:
            raise P.ProtocolError(P.NOT_READY, "Miro profiles after the first task has trained")
        fut = s.request_profile()
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=float(params.get("timeout", 600)))

    async def m_config_show(self, params):
        from miro_runtime.daemon.config import default_toml
        return {"config": self.cfg.to_dict(), "sources": self.cfg.source, "live_keys": {k: sorted(v) for k, v in
                                                                                        LIVE.items()},
                "defaults_toml": default_toml() if params.get("defaults") else None}

    async def m_config_set(self, params):
        key, value = params.get("key"), params.get("value")
        if not isinstance(key, str):
            raise P.ProtocolError(P.INVALID_PARAMS, "key must be a string 'table.key'")
        probe = DaemonConfig()
        try:
            table, name, _, new = probe.set(key, value, "config set")
            setattr(probe.section(table), name, new)
        except ConfigError as e:
            raise P.ProtocolError(P.INVALID_PARAMS, str(e)) from None
        path = overrides_path(self.cfg)
        ov = read_overrides(path)
        ov.setdefault(table, {})[name] = new
        try:  # the whole configuration must still validate before the override is kept
            trial = self._load()
            trial.set(key, new, "config set")
            trial.validate()
        except ConfigError as e:
            raise P.ProtocolError(P.INVALID_PARAMS, str(e)) from None
        write_overrides(path, ov)
        live = name in LIVE[table]
        if live:
            self._apply(table, name, new)
        self.log.event("config_set", key=key, value=new, live=live)
        return {"key": key, "value": new, "persisted": path, "applied_live": live,
                "restart_needed": not live}

    async def m_config_reload(self, params):
        return self.reload()

    async def m_shutdown(self, params):
        self.stopping.set()
        return {"stopping": True}

    async def m_logs(self, params):
        """Filtered lines of the JSON log: level (minimum), component, task, since/until (unix
        seconds), limit (the last N matches), after (a byte offset: lines appended since, for
        follow)."""
        import aiofiles
        from miro_runtime.log import LEVELS
        level = params.get("level", "debug")
        if level not in LEVELS:
            raise P.ProtocolError(P.INVALID_PARAMS, f"level must be one of {', '.join(LEVELS)}")
        comp, task = params.get("component"), params.get("task")
        since, until = params.get("since"), params.get("until")
        limit = params.get("limit", 200)
        after = params.get("after")
        for name, v in (("since", since), ("until", until)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise P.ProtocolError(P.INVALID_PARAMS, f"{name} must be unix seconds")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise P.ProtocolError(P.INVALID_PARAMS, "limit must be an integer >= 1")
        path = os.path.join(self.logs_dir, "mirod.jsonl")
        out, offset = [], 0
        minlvl = LEVELS.index(level)
        async with aiofiles.open(path, "rb") as fh:
            if isinstance(after, int) and not isinstance(after, bool) and after >= 0:
                size = os.path.getsize(path)
                await fh.seek(after if after <= size else 0)  # a rotation since: start the new file over
            data = await fh.read(8 << 20)
            offset = await fh.tell()
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if LEVELS.index(rec.get("level", "info")) < minlvl:
                continue
            if comp and rec.get("component") != comp:
                continue
            if task is not None and rec.get("task") != task:
                continue
            if since is not None and rec.get("ts", 0) < since or until is not None and rec.get("ts", 0) > until:
                continue
            out.append(rec)
        return {"lines": out[-limit:], "offset": offset, "path": path}

    # ------------------------------------------------------------------ inbox and metrics
    async def _inbox(self):
        """Ingest what producers drop into the inbox: ``*.npz`` files and image folders whose size
        held still across two scans (a producer should write elsewhere and rename in). Done ones
        move to done/, bad ones to failed/ with a ``.reason.txt`` beside them. An .npz file's
        identity (name, size, mtime) is committed with its samples, so a kill between storing it and
        moving it never ingests it twice; an image folder is several commits and may be, after a kill."""
        d = self.cfg.daemon
        if not d.inbox_dir:
            return
        import aiofiles.os
        inbox = os.path.abspath(d.inbox_dir)
        for sub in ("done", "failed"):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        seen: dict = {}
        while True:
            await asyncio.sleep(d.inbox_scan_s)
            try:
                names = sorted(await aiofiles.os.listdir(inbox))
            except OSError as e:
                self.log.event("inbox_failed", component="inbox", error=str(e))
                continue
            for name in names:
                p = os.path.join(inbox, name)
                if name.startswith(".") or name in ("done", "failed") or \
                        not (name.endswith(".npz") or os.path.isdir(p)):
                    continue
                sig = await asyncio.get_running_loop().run_in_executor(self.pool, _signature, p)
                if seen.get(name) != sig:  # still being written (or new): look again next scan
                    seen[name] = sig
                    continue
                seen.pop(name, None)
                try:  # an .npz is ingested exactly once: its identity is committed with its samples
                    res = await self._run(self._ingest_path, p, None, None, False, f"{name}:{sig[0]}:{sig[1]}")
                    dest = os.path.join(inbox, "done", name)
                    self.log.event("inbox_ingested", component="inbox", path=p, result=res)
                except Exception as e:
                    why = e.message if isinstance(e, P.ProtocolError) else f"{type(e).__name__}: {e}"
                    dest = os.path.join(inbox, "failed", name)
                    self.log.event("inbox_failed", component="inbox", path=p, error=why)
                    async with aiofiles.open(dest + ".reason.txt", "w") as fh:
                        await fh.write(why + "\n")
                await aiofiles.os.replace(p, dest)

    async def _metrics(self):
        d = self.cfg.daemon
        if not d.metrics_file:
            return
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, self.write_metrics, d.metrics_file)
            except Exception as e:
                self.log.event("error", component="metrics", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(d.metrics_every_s)

    def write_metrics(self, path):
        """Prometheus text format, written atomically (temp file + rename: the textfile collector's rule)."""
        from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
        st = self.session.status()
        reg = CollectorRegistry()

        def g(name, doc, value, **labels):
            if value is None:
                return
            m = Gauge(name, doc, list(labels), registry=reg)
            (m.labels(**labels) if labels else m).set(float(value))
        g("miro_up", "1 while mirod runs", 1)
        g("miro_uptime_seconds", "seconds since mirod started", time.time() - self.started)
        g("miro_tasks_trained", "tasks trained and evaluated", st["tasks_trained"])
        g("miro_classes_seen", "classes seen so far", st["classes_seen"])
        g("miro_samples_ingested", "train samples acknowledged", st["counters"]["ingested_train"], split="train")
        g("miro_steps", "training steps", st.get("steps"))
        g("miro_training_paused", "1 while the training policy pauses learning", 1 if st["paused"] else 0)
        g("miro_flash_records", "samples in the flash tier", (st.get("flash") or {}).get("records"))
        g("miro_memory_fill", "samples in the RAM episodic memory", (st.get("memory") or {}).get("size"))
        g("miro_last_avg_accuracy", "average accuracy after the last task", st.get("last_avg_acc"))
        e = st.get("energy") or {}
        g("miro_energy_joules", "energy of the trained tasks", e.get("tasks_j"), provenance=e.get("provenance") or "")
        g("miro_requests", "control requests served", self.counters["requests"])
        g("miro_peers_refused", "requests refused by SO_PEERCRED", self.counters["refused"])
        write_to_textfile(path, reg)


def _warm_engine():
    """Pay torch's one-time costs before the first sample arrives: importing the engine, and the
    first optimizer (torch.optim imports its compiler stack lazily: 1.5 s on a 2-core x86 box)."""
    import torch

    import miro_runtime.engine.learner  # noqa: F401
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


def _signature(path):
    if os.path.isdir(path):
        tot, n = 0, 0
        for root, _, files in os.walk(path):
            for f in files:
                try:
                    tot += os.path.getsize(os.path.join(root, f))
                    n += 1
                except OSError:
                    pass
        return (n, tot)
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def setup_logging(level="info"):
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))
    root = logging.getLogger("miro")
    root.handlers[:] = [h]
    root.setLevel({"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                   "error": logging.ERROR}[level])
    root.propagate = False


def run_daemon(config_path=None, state_dir=None, socket_path=None, overrides=(), retrain_from_store=False) -> int:
    from miro_runtime.wire.client import default_state_dir
    try:
        cfg = load(config_path, state_dir or os.environ.get("MIRO_STATE_DIR") or None)
        overrides = list(overrides)
        if socket_path:
            overrides.append(("daemon.socket", socket_path))
        for k, v in overrides:
            cfg.set(k, v, "command line")
        if not cfg.daemon.state_dir:
            cfg.daemon.state_dir = default_state_dir()
        cfg.validate()
    except ConfigError as e:
        print(f"mirod: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.daemon.log_level)
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack on stderr
    d = Daemon(cfg, config_path, overrides, retrain_from_store)
    try:
        return asyncio.run(d.main())
    except ConfigError as e:
        print(f"mirod: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mirod", description="miro-runtime daemon: learns continually from data "
                                                           "clients send over a Unix socket")
    ap.add_argument("--config", default=os.environ.get("MIROD_CONFIG"), help="TOML file (default: none)")
    ap.add_argument("--state-dir", default=None, help="state directory (default: $MIRO_STATE_DIR, "
                                                      "$STATE_DIRECTORY, ~/.local/state/miro)")
    ap.add_argument("--socket", default=None, help="control socket path")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", help="override a config key")
    ap.add_argument("--retrain-from-store", action="store_true",
                    help="the checkpoints are gone on purpose: start over on the samples the store holds")
    a = ap.parse_args(argv)
    overrides = []
    for item in a.set:
        if "=" not in item:
            ap.error(f"--set {item!r}: expected TABLE.KEY=VALUE")
        overrides.append(tuple(item.split("=", 1)))
    return run_daemon(a.config, a.state_dir, a.socket, overrides, a.retrain_from_store)


if __name__ == "__main__":
    sys.exit(main())
