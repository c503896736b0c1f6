"""mirod's metrics for Prometheus: the session's status as gauges in the text format, written to
``daemon.metrics_file`` every ``daemon.metrics_every_s`` (live) through a temp file and a rename,
the node_exporter textfile collector's rule."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from miro_runtime.daemon.config import DaemonConfig
from miro_runtime.log import EventLog


def write_textfile(path: str, st: dict, uptime_s: float, counters: dict):
    """The gauges of one session status (``Session.status()``) and the server's request counters."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile
    reg = CollectorRegistry()

    def g(name, doc, value, **labels):
        if value is None:
            return
        m = Gauge(name, doc, list(labels), registry=reg)
        (m.labels(**labels) if labels else m).set(float(value))
    g("miro_up", "1 while mirod runs", 1)
    g("miro_uptime_seconds", "seconds since mirod started", uptime_s)
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
    g("miro_failed_tasks", "tasks whose training failed after its retries", len(st["failed_tasks"]))
    g("miro_trainer_healthy", "1 while the trainer is healthy (no failed task, not retrying, not wedged)",
      1 if st["health"] == "ok" else 0)
    errors = Counter("miro_trainer_errors", "training jobs that raised since mirod started", registry=reg)
    errors.inc(st["trainer_errors"])
    g("miro_requests", "control requests served", counters["requests"])
    g("miro_peers_refused", "requests refused by SO_PEERCRED", counters["refused"])
    write_to_textfile(path, reg)


class MetricsExport:
    """Writes the textfile on a timer from a worker thread; a failed write is logged, not fatal.
    ``status`` is the session's status call; ``counters`` the server's (read at each write)."""

    def __init__(self, cfg: DaemonConfig, log_: EventLog, pool, status: Callable[[], dict], counters: dict,
                 started: float):
        self.cfg, self.log, self.pool = cfg, log_, pool
        self.status, self.counters, self.started = status, counters, started

    def write(self, path: str):
        write_textfile(path, self.status(), time.time() - self.started, self.counters)

    async def run(self):
        d = self.cfg.daemon
        if not d.metrics_file:
            return
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, self.write, d.metrics_file)
            except Exception as e:
                self.log.event("error", component="metrics", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(d.metrics_every_s)
