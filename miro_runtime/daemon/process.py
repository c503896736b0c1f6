"""The mirod process, like gunicorn's Arbiter: it owns the state directory (an exclusive lock),
claims the control socket (never a live daemon's; a stale one is replaced), opens the session and
runs its trainer thread, and serves the control socket (server.py), the inbox and the metrics
file on one asyncio loop. Signal handlers only enqueue: SIGTERM/SIGINT stop, SIGHUP reloads (what
can change live is applied, the rest reported as needing a restart). systemd Type=notify: READY,
STATUS notes, STOPPING, RELOADING, and watchdog pings from the loop itself -- withheld while the trainer is
wedged (work pending, no progress for its bound), so systemd restarts a hung trainer as it would a hung
loop; a failed task is a STATUS note, not a restart. Shutdown finishes or checkpoints the current step
in bounded time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time

from miro_runtime.daemon import systemd
from miro_runtime.daemon.config import LIVE, ConfigError, DaemonConfig, load
from miro_runtime.daemon.handlers import Handlers
from miro_runtime.daemon.inbox import Inbox
from miro_runtime.daemon.prometheus import MetricsExport
from miro_runtime.daemon.server import ControlServer, group_id
from miro_runtime.daemon.supernode import BoardFleet, Supernode
from miro_runtime.kv.names import STATE_SUBDIR as KV_STATE_SUBDIR
from miro_runtime.kv.service import KVService, KVShare  # torch-free until the first generation
from miro_runtime.log import EventLog
from miro_runtime.session.ledger import HEALTH_OK, HEALTH_WEDGED

log = logging.getLogger("miro.daemon")

EXIT_ALREADY_RUNNING = 3
EXIT_STATE = 65  # EX_DATAERR: the state directory cannot be resumed as it is
KV_SHARE_KEYS = frozenset(f.name for f in dataclasses.fields(KVShare))  # the [kv] keys the KV service reads
STATUS_NOTE_EVERY_S = 5


class Daemon:
    """One mirod: the state directory, the socket, the session, signals, reload and shutdown."""

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
        self.read_gid, self.admin_gid = group_id(d.socket_group), group_id(d.admin_group)
        self.session = None
        self._lockfh = None  # holds the state directory's lock for the process's life
        self.log = self.server = self.trainer = None  # made in main(), once the state directory is ours
        self.stopping = self.reload_requested = None  # asyncio.Events, made on the loop in main()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mirod-io")
        self.predict_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mirod-predict")
        self.kv = KVService(os.path.join(self.state_dir, KV_STATE_SUBDIR),
                            KVShare(**{k: getattr(cfg.kv, k) for k in KV_SHARE_KEYS}))
        self.fleet = BoardFleet(cfg.fleet, None)  # its log and SuperNode once main() owns the state dir
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
            from miro_runtime.session.errors import SessionError
            from miro_runtime.storage import StoreError
            if not isinstance(e, (SessionError, StoreError)):
                raise
            self.log.event("error", component="daemon", error=str(e), state_dir=self.state_dir)
            print(f"mirod: {e}", file=sys.stderr)
            systemd.notify(f"STATUS=cannot open the state directory: {e}")
            raise SystemExit(EXIT_STATE) from None
        # before READY, with nothing competing: a fresh state dir would otherwise pay torch's one-time
        # imports at the first sample, where ingest threads starve them of the GIL (measured: >4 s)
        if self.cfg.daemon.warm_engine:
            await loop.run_in_executor(None, _warm_engine)
        self.trainer = threading.Thread(target=self.session.run_trainer, name="mirod-trainer", daemon=True)
        self.trainer.start()
        handlers = Handlers(self)
        # the KV service's worker books its energy like any request and logs plans, deferrals and SLO misses
        self.kv.metered, self.kv.log = handlers._metered, self.log.event
        self.server = ControlServer(handlers, self.cfg, self.log, self.stopping, self.read_gid, self.admin_gid)
        await self.server.listen(self.sock_path)
        self.log.event("started", pid=os.getpid(), socket=self.sock_path, state_dir=self.state_dir,
                       logs_dir=self.logs_dir, config=self.cfg.to_dict(), config_sources=self.cfg.source)
        self.fleet.log = self.log
        if self.cfg.fleet.enabled:  # after the socket serves: the SuperNode's ClientApps call it
            self.fleet.supernode = Supernode(self.cfg.fleet, self.sock_path, os.path.join(self.state_dir, "fleet"),
                                             self.log)
            self.fleet.supernode.start()
        systemd.notify("READY=1\nSTATUS=serving on " + self.sock_path)
        inbox = Inbox(self.cfg, self.log, self.pool, handlers.ingest_file)
        metrics = MetricsExport(self.cfg, self.log, self.pool, self.session.status, self.server.counters, self.started,
                                kv_status=self.kv.status)
        helpers = [asyncio.ensure_future(c) for c in (self._watchdog(), self._reloader(), inbox.run(), metrics.run(),
                                                       self._status_notes())]
        await self.stopping.wait()
        await self._shutdown(helpers, metrics)
        return 0

    async def _shutdown(self, helpers, metrics: MetricsExport):
        """Stop accepting, let the trainer finish or checkpoint its step, flush, exit in bounded time."""
        systemd.notify("STOPPING=1\nSTATUS=stopping: finishing the current step")
        self.log.event("stopping")
        loop = asyncio.get_running_loop()
        if self.fleet.supernode is not None:  # no new rounds forwarded while the trainer stops
            await loop.run_in_executor(None, self.fleet.supernode.stop)
        self.server.close()
        self.session.stop()
        await loop.run_in_executor(None, self.trainer.join, self.cfg.daemon.shutdown_timeout_s)
        clean = not self.trainer.is_alive()
        for h in helpers:
            h.cancel()
        if clean:
            if self.cfg.daemon.metrics_file:  # the counts since the last export survive a clean stop
                try:
                    metrics.write(self.cfg.daemon.metrics_file)
                except OSError as e:
                    self.log.event("error", component="metrics", error=f"{type(e).__name__}: {e}")
            self.session.close()
        self.log.event("stopped", clean=clean, uptime_s=round(time.time() - self.started, 1))
        self.log.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.predict_pool.shutdown(wait=False, cancel_futures=True)
        # the KV worker stops after its current burst (half a second of iterations); requests still queued or
        # in flight get an error. One that overruns the bound is abandoned: KV is a cache, and the next start
        # deletes the cold blocks it leaves.
        stopped = await loop.run_in_executor(None, functools.partial(self.kv.close,
                                                                     self.cfg.daemon.shutdown_timeout_s))
        if not stopped:
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
            if self.session.trainer.health() != HEALTH_WEDGED:  # so does a wedged trainer
                systemd.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def _status_notes(self):
        while True:
            await asyncio.sleep(STATUS_NOTE_EVERY_S)
            s = self.session
            health, failed = s.trainer.health(), s.ledger.failed
            note = "" if health == HEALTH_OK else f"trainer {health}" + (
                f" (failed tasks {failed})" if failed else "") + "; "
            systemd.notify(f"STATUS={note}{s.state}; tasks trained {s.done}; samples {s.counters['ingested_train']}")

    async def _reloader(self):
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            self.reload()

    # ------------------------------------------------------------------ configuration
    def reload(self) -> dict:
        """SIGHUP / config_reload: apply what can change live, say what needs a restart."""
        systemd.reloading()
        try:
            new = self.load_config()
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
                    applied[f"{table}.{k}"] = v
                else:
                    restart[f"{table}.{k}"] = v
        self.apply_all([(*key.split(".", 1), v) for key, v in applied.items()])
        self.log.event("config_reloaded", applied=applied, restart_needed=restart, sources=new.source)
        systemd.notify("READY=1")
        return {"applied": applied, "restart_needed": restart}

    def load_config(self) -> DaemonConfig:
        """The configuration as a restart would read it: file, overrides, environment, command line."""
        new = load(self.config_path, self.state_dir)
        for k, v in self.overrides:
            new.set(k, v, "command line")
        new.validate()
        return new

    def apply_all(self, changes: list):
        """Change several live keys, [(table, key, value)], those that become unset first: the trainer
        re-reads the learning keys between steps, and must never see two settings that exclude each
        other (an energy and a power budget) half-way through a change from one to the other."""
        for table, key, value in sorted(changes, key=lambda c: c[2] is not None):
            self.apply(table, key, value)

    def apply(self, table: str, key: str, value):
        """Change one live key in the running daemon and the parts that copied it."""
        setattr(self.cfg.section(table), key, value)
        if table == "learning" and self.session is not None:
            setattr(self.session.cfg, key, value)
        if table == "kv" and key in KV_SHARE_KEYS:
            setattr(self.kv.share, key, value)
        if table == "daemon" and key == "log_level":
            self.log.level = value


def _warm_engine():
    """Pay torch's one-time costs before the first sample arrives: importing the engine, and the
    first optimizer (torch.optim imports its compiler stack lazily: 1.5 s on a 2-core x86 box)."""
    import torch

    import miro_runtime.engine.learner  # noqa: F401
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
