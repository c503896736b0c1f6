"""mirod's metrics for Prometheus: the daemon's status in the text format, written to
``daemon.metrics_file`` every ``daemon.metrics_every_s`` (live) through a temp file and a rename,
the node_exporter textfile collector's rule.

Names follow https://prometheus.io/docs/practices/naming/: a ``miro_`` prefix, base units in the name
(``_seconds``, ``_bytes``, ``_joules``, ``_ratio``), ``_total`` on every counter and on nothing else, short
labels. A counter never goes back across a restart: it is either read from what the state directory
stores (tasks trained, their energy) or kept in ``<state_dir>/metrics-counters.json`` -- what the
daemon counts in memory since it started (requests, samples ingested, trainer errors, KV tokens) is
added to the total stored there, which is saved before each export. A figure that may go down (the
samples in flash, the model's steps, which roll back with the checkpoint after a kill) is a gauge.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Callable, Iterator, Optional

from miro_runtime.daemon.config import DaemonConfig
from miro_runtime.log import EventLog

COUNTERS_FILE = "metrics-counters.json"  # in the state directory: it goes with the state it counts
COUNTER, GAUGE = "counter", "gauge"

# What mirod counts in memory from its start (zero after a restart): the key in COUNTERS_FILE, and where
# the figure is in the status (section, key). Each is exported as the stored total plus this figure.
SINCE_START = {
    "samples_ingested_train": ("counters", "ingested_train"),
    "samples_ingested_test": ("counters", "ingested_test"),
    "ingest_batches": ("counters", "ingest_batches"),
    "samples_predicted": ("counters", "predictions"),
    "trainer_errors": (None, "trainer_errors"),
    "requests": ("daemon", "requests"),
    "request_errors": ("daemon", "errors"),
    "requests_refused": ("daemon", "refused"),
    "connections": ("daemon", "connections"),
    "kv_requests": ("kv", "requests"),
    "kv_errors": ("kv", "errors"),
    "kv_tokens": ("kv", "tokens"),
}


class StoredCounters:
    """The totals of the SINCE_START counters over every run of this state directory: the totals saved
    by the last run, plus what this run has counted. Saved (fsync, rename) before each export, so an
    exported value is never above the stored one and a counter never goes back; a kill loses at most
    what was counted since the last export."""

    def __init__(self, path: str):
        self.path = path
        self.base: dict = {}
        self.saved: Optional[dict] = None  # what the file holds as of this run's last save
        self.problem: Optional[str] = None  # an unreadable file: the totals start over, and the export says why
        try:
            with open(path) as fh:
                data = json.load(fh)
            self.base = {k: float(v) for k, v in data.items() if k in SINCE_START}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self.problem = f"{path} is unreadable ({type(e).__name__}); the counters in it start over from 0"

    def update(self, since_start: dict) -> dict:
        """The totals with this run's figures added, saved (when they changed) before they are returned."""
        totals = dict(self.base)
        for k, v in since_start.items():
            totals[k] = self.base.get(k, 0.0) + v
        if totals != self.saved:  # an idle daemon does not rewrite the file on flash every few seconds
            self._save(totals)
            self.saved = totals
        return totals

    def _save(self, totals: dict):
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(totals, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def since_start(st: dict) -> dict:
    """The SINCE_START figures the status has (the KV ones only when KV status is part of it)."""
    out = {}
    for key, (section, name) in SINCE_START.items():
        src = st if section is None else st.get(section)
        if src is not None and src.get(name) is not None:
            out[key] = float(src[name])
    return out


def energy_source(provenance: Optional[str]) -> str:
    """A short label for the energy figures: all measured, all estimated, or a mix of both."""
    p = provenance or ""
    measured, estimated = "measured:" in p, "estimated:" in p
    return "mixed" if measured and estimated else "measured" if measured else "estimated" if estimated else "unknown"


def families(st: dict, uptime_s: float, totals: dict) -> Iterator[tuple]:
    """(name, type, help, [(labels, value)]) for each metric of one status; a figure the status does not
    have yet (None: no sample, no KV generation) is left out rather than exported as 0."""
    def one(name, kind, doc, value, **labels):
        return name, kind, doc, [] if value is None else [(labels, value)]

    yield one("miro_up", GAUGE, "1 while mirod runs.", 1)
    yield one("miro_uptime_seconds", GAUGE, "Seconds since mirod started.", uptime_s)
    # tasks trained: the ledger's count, stored with the checkpoint -- a counter that survives restarts
    # (it starts over only when the state does: a new state directory, or --retrain-from-store)
    yield one("miro_tasks_trained_total", COUNTER, "Tasks trained and evaluated in this state directory.",
              st["tasks_trained"])
    yield one("miro_failed_tasks", GAUGE, "Tasks whose training failed after its retries.", len(st["failed_tasks"]))
    yield one("miro_classes_seen", GAUGE, "Classes the model has seen.", st["classes_seen"])
    yield ("miro_samples_ingested_total", COUNTER, "Samples acknowledged, by split (kept across restarts).",
           [({"split": s}, totals[f"samples_ingested_{s}"]) for s in ("train", "test")
            if f"samples_ingested_{s}" in totals])
    yield one("miro_ingest_batches_total", COUNTER, "Ingest batches acknowledged (kept across restarts).",
              totals.get("ingest_batches"))
    yield one("miro_samples_predicted_total", COUNTER, "Samples predicted (kept across restarts).",
              totals.get("samples_predicted"))
    yield one("miro_online_pending_samples", GAUGE, "Samples waiting for online training.",
              st["counters"].get("online_pending"))
    # steps roll back to the checkpoint's after a kill: a gauge, not a counter
    yield one("miro_training_steps", GAUGE, "Training steps of the current model.", st.get("steps"))
    yield one("miro_training_paused", GAUGE, "1 while the training policy pauses learning.", 1 if st["paused"] else 0)
    yield one("miro_trainer_healthy", GAUGE, "1 while the trainer is healthy (no failed task, not retrying, "
              "not wedged).", 1 if st["health"] == "ok" else 0)
    yield one("miro_trainer_errors_total", COUNTER, "Training jobs that raised (kept across restarts).",
              totals.get("trainer_errors"))
    mem, flash = st.get("memory") or {}, st.get("flash") or {}
    yield one("miro_memory_samples", GAUGE, "Samples in the RAM episodic memory.", mem.get("size"))
    yield one("miro_memory_capacity_samples", GAUGE, "Capacity of the RAM episodic memory.", mem.get("capacity"))
    yield one("miro_flash_samples", GAUGE, "Train samples in the flash tier.", flash.get("records"))
    yield one("miro_flash_test_samples", GAUGE, "Test samples in the flash tier.", flash.get("test_records"))
    yield one("miro_flash_bytes", GAUGE, "Bytes of the train samples in the flash tier.", flash.get("bytes"))
    yield one("miro_average_accuracy_ratio", GAUGE, "Average accuracy over the tasks seen, after the last trained "
              "task (0-1).", st.get("last_avg_acc"))
    e = st.get("energy") or {}
    # the trained tasks' energy is stored with their records: it survives restarts, so a counter
    yield one("miro_energy_joules_total", COUNTER, "Energy of the trained tasks; source: measured, estimated or "
              "mixed.", e.get("tasks_j"), source=energy_source(e.get("provenance")))
    b = st.get("budget") or {}
    mode = b.get("mode")
    # the budget a task may spend: joules per task, or a power budget's bucket (what it may hold)
    yield one("miro_energy_budget_joules", GAUGE, "The energy budget: joules per task (mode task) or the power "
              "budget's bucket size (mode power).", b.get("task_j") if mode == "task" else b.get("bucket_j"),
              mode=mode)
    yield one("miro_energy_budget_remaining_joules", GAUGE, "Joules the task in training (else the open task) may "
              "still spend; below 0: overspent.", b.get("remaining_j"), mode=mode)
    # the trips are kept in the checkpoint with the budget's bookkeeping: a counter
    yield one("miro_budget_guard_trips_total", COUNTER, "Tasks whose training the budget guard stopped.",
              len(b["guard_trips"]) if b else None)
    yield ("miro_energy_budget_spent_joules", GAUGE, "Joules booked on the budget, by kind: train, profile, eval, "
           "predict, kv (from the last checkpoint's figures after a kill: a gauge).",
           [({"kind": k}, v) for k, v in (b.get("spent_j") or {}).items()])
    yield one("miro_requests_total", COUNTER, "Control requests served (kept across restarts).",
              totals.get("requests"))
    yield one("miro_request_errors_total", COUNTER, "Control requests answered with an error (kept across "
              "restarts).", totals.get("request_errors"))
    yield one("miro_requests_refused_total", COUNTER, "Requests refused: the peer (SO_PEERCRED) may not call the "
              "method (kept across restarts).", totals.get("requests_refused"))
    yield one("miro_connections_total", COUNTER, "Control connections accepted (kept across restarts).",
              totals.get("connections"))
    kv = st.get("kv")
    if kv is None:
        return
    yield one("miro_kv_requests_total", COUNTER, "KV generations requested (kept across restarts).",
              totals.get("kv_requests"))
    yield one("miro_kv_errors_total", COUNTER, "KV generations that failed (kept across restarts).",
              totals.get("kv_errors"))
    yield one("miro_kv_tokens_generated_total", COUNTER, "Tokens the KV service generated (kept across restarts).",
              totals.get("kv_tokens"))
    yield one("miro_kv_ram_share_bytes", GAUGE, "The KV namespace's RAM share (kv.ram_bytes).", kv.get("ram_bytes"))
    yield one("miro_kv_flash_share_bytes", GAUGE, "The KV namespace's flash share (kv.flash_bytes).",
              kv.get("flash_bytes"))
    yield ("miro_kv_flash_bytes", GAUGE, "Bytes the KV namespace holds in flash: kind prefix (stored prompt "
           "prefixes) or cold (cold blocks of a generation).",
           [({"kind": k}, kv[f"flash_{k}_bytes"]) for k in ("prefix", "cold")
            if kv.get(f"flash_{k}_bytes") is not None])
    yield one("miro_kv_prefix_chunks", GAUGE, "Prompt-prefix chunks stored in flash.", kv.get("prefix_chunks"))
    last = kv.get("last") or {}
    yield one("miro_kv_last_hot_bytes", GAUGE, "Hot (RAM) KV bytes of the last generation.", last.get("hot_bytes"))
    yield one("miro_kv_last_cold_bytes", GAUGE, "Cold (flash) KV bytes of the last generation.",
              last.get("cold_bytes"))


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _value(v) -> str:
    f = float(v)
    return "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf") if math.isinf(f) else repr(f)


def exposition(fams) -> str:
    """The text format (version 0.0.4): HELP and TYPE before each metric's samples."""
    out = []
    for name, kind, doc, samples in fams:
        if not samples:
            continue
        out += [f"# HELP {name} {_escape(doc, False)}", f"# TYPE {name} {kind}"]
        for labels, v in samples:
            lab = ",".join(f'{k}="{_escape(str(x), True)}"' for k, x in labels.items())
            out.append(f"{name}{{{lab}}} {_value(v)}" if lab else f"{name} {_value(v)}")
    return "\n".join(out) + "\n"


def write_textfile(path: str, text: str):
    """Through a temp file and a rename: the collector never reads half a file (and skips the temp file,
    whose name does not end in .prom)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class MetricsExport:
    """Writes the textfile on a timer from a worker thread; a failed write is logged, not fatal.
    ``status`` is the session's status call; ``counters`` the server's (read at each write);
    ``kv_status`` the KV service's status call (its figures are left out without it)."""

    def __init__(self, cfg: DaemonConfig, log_: EventLog, pool, status: Callable[[], dict], counters: dict,
                 started: float, kv_status: Optional[Callable[[], dict]] = None):
        self.cfg, self.log, self.pool = cfg, log_, pool
        self.status, self.counters, self.started, self.kv_status = status, counters, started, kv_status
        self.stored: Optional[StoredCounters] = None  # read when the export starts (none without a metrics file)

    def snapshot(self) -> dict:
        st = self.status()
        st["daemon"] = dict(self.counters)
        if self.kv_status is not None:
            st["kv"] = self.kv_status()
        return st

    def write(self, path: str):
        """One export; run() awaits each before the next, so the counters file has one writer."""
        st = self.snapshot()
        totals = self.stored.update(since_start(st))
        write_textfile(path, exposition(families(st, time.time() - self.started, totals)))

    async def run(self):
        d = self.cfg.daemon
        if not d.metrics_file:
            return
        self.stored = StoredCounters(os.path.join(os.path.abspath(d.state_dir), COUNTERS_FILE))
        if self.stored.problem:
            self.log.event("metrics_counters_reset", level="warning", component="metrics", error=self.stored.problem)
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, self.write, d.metrics_file)
            except Exception as e:
                self.log.event("error", component="metrics", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(d.metrics_every_s)
