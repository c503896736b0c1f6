"""Structured event log: one JSON object per line ({"ts", "level", "component", "event", ...}),
rotated by size, plus readable lines on stderr through ``logging``. Each record names the component
that produced it (KIND_COMPONENT). When stderr goes to journald (or any non-terminal) each stderr line
starts with its syslog priority (``<6>`` info, ``<4>`` warning, ``<3>`` error), which journald reads
as the line's level; a terminal gets the plain line. Safe to call from several threads (the trainer,
the event loop's helpers)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from miro_runtime.choices import LOG_LEVELS as LEVELS

logger = logging.getLogger("miro")

PYLEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
KIND_LEVEL = {"error": "error", "peer_refused": "warning", "training_paused": "warning",
              "online_backlog_dropped": "warning", "inbox_failed": "warning", "config_rejected": "warning",
              "kv_deferred": "warning", "kv_slo_miss": "warning", "kv_refused": "warning", "kv_admitted": "debug",
              "kv_done": "debug"}
COMPONENTS = ("daemon", "socket", "inbox", "session", "trainer", "engine", "miro", "kv", "fleet", "metrics", "run")
# event kind -> the component that produces it, so a record says where it came from whichever EventLog
# the producer was handed (the daemon hands its one log down to the session, trainer, engine and Miro).
# A kind several producers share ("error") is tagged by its caller (component=...); tests/test_log.py
# checks every kind the package emits is here or tagged so.
KIND_COMPONENT = {
    **dict.fromkeys(("started", "stopping", "stopped", "socket_stale_replaced", "config_rejected", "config_reloaded",
                     "config_set", "config_unset"), "daemon"),
    **dict.fromkeys(("request_refused", "peer_refused"), "socket"),
    **dict.fromkeys(("inbox_ingested", "inbox_failed"), "inbox"),
    **dict.fromkeys(("session_resume", "config_applied", "ingest_duplicate", "model_chosen", "task_end_requested"),
                    "session"),
    **dict.fromkeys(("task_begin", "task_trained", "task_failed", "training_paused", "training_resumed",
                     "online_backlog_dropped"), "trainer"),
    **dict.fromkeys(("task_end", "checkpoint", "checkpoint_damaged", "retrain_from_store", "resume",
                     "controller_skipped", "budget_guard", "budget_changed", "deadline_guard",
                     "training_planned", "training_plan_reached"), "engine"),
    **dict.fromkeys(("miro_decision", "miro_adopt", "miro_realised", "miro_cost_refit", "miro_time_refit",
                     "miro_replan"), "miro"),
    **dict.fromkeys(("kv_generate", "kv_plan", "kv_deferred", "kv_resumed", "kv_slo_miss", "kv_admitted",
                     "kv_done", "kv_refused"), "kv"),
    **dict.fromkeys(("fleet_round", "fleet_refused", "supernode_started", "supernode_connected", "supernode_output",
                     "supernode_exited", "supernode_stopped"), "fleet"),
    **dict.fromkeys(("run_begin", "run_end"), "run"),
}
STDERR_CHARS = 400  # of an event's fields on its stderr line; the JSON log holds them whole


class EventLog:
    def __init__(self, path=None, max_bytes: int = 0, backups: int = 5, component: str = "engine",
                 level: str = "debug"):
        self.path, self.max_bytes, self.backups, self.component = path, max_bytes, backups, component
        self.level = level
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1) if path else None

    def event(self, kind: str, **fields) -> dict:
        level = fields.pop("level", None) or KIND_LEVEL.get(kind, "info")
        component = fields.pop("component", None) or KIND_COMPONENT.get(kind) or self.component
        rec = {"ts": round(time.time(), 3), "level": level, "component": component, "event": kind, **fields}
        if self._fh and LEVELS.index(level) >= LEVELS.index(self.level):
            line = json.dumps(rec, default=_plain) + "\n"
            with self._lock:
                if self._fh:
                    self._fh.write(line)
                    if self.max_bytes and self._fh.tell() >= self.max_bytes:
                        self._rotate()
        if logger.isEnabledFor(PYLEVEL[level]):
            logger.log(PYLEVEL[level], "%s %s %s", component, kind, self._cut(json.dumps(fields, default=_plain)))
        return rec

    def _cut(self, text: str) -> str:
        """``text``, or its first STDERR_CHARS and a visible mark of what was left out and where it is."""
        if len(text) <= STDERR_CHARS:
            return text
        where = f"; whole in {self.path}" if self.path else ""
        return f"{text[:STDERR_CHARS]} ... (+{len(text) - STDERR_CHARS} chars{where})"

    def _rotate(self):
        """path -> path.1 -> ... -> path.<backups> (the oldest dropped), then a fresh path."""
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self._fh = open(self.path, "a", buffering=1)

    def close(self):
        with self._lock:
            if self._fh:
                self._fh.close()
                self._fh = None


def to_journal(stream=None) -> bool:
    """Whether lines written to ``stream`` (stderr) should carry ``<N>`` priority prefixes: yes when
    systemd says the stream is the journal (JOURNAL_STREAM names its device:inode, as sd_journal
    documents), no on a terminal (a person reads it raw), yes otherwise (a pipe or file a supervisor
    reads)."""
    try:
        fd = (stream or sys.stderr).fileno()
    except (OSError, ValueError):  # no descriptor behind it (a test's capture): not a terminal
        return True
    st = os.fstat(fd)
    if os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}":
        return True
    return not os.isatty(fd)


class SyslogPrefixFormatter(logging.Formatter):
    """``<N>component: message`` for journald (N: the syslog priority of the record's level); the plain
    line when the stream is a terminal (``journal``: decided by ``to_journal(stream)`` unless given)."""

    def __init__(self, fmt=None, stream=None, journal=None):
        super().__init__(fmt)
        self.journal = to_journal(stream) if journal is None else journal

    def format(self, record):
        if not self.journal:
            return super().format(record)
        n = 3 if record.levelno >= logging.ERROR else 4 if record.levelno >= logging.WARNING else \
            6 if record.levelno >= logging.INFO else 7
        return f"<{n}>{super().format(record)}"


def _plain(o):
    try:
        return o.item()
    except AttributeError:
        return str(o)


def select(lines, level: str = "debug", component=None, task=None, since=None, until=None) -> list:
    """The records of JSON-log ``lines`` (bytes or str) at ``level`` or above that match the filters;
    unreadable lines (one cut by a kill) are passed over. The daemon's ``logs`` method and `miro logs`
    without a daemon both filter with this."""
    out, minlvl = [], LEVELS.index(level)
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or LEVELS.index(rec.get("level", "info")) < minlvl:
            continue
        if component and rec.get("component") != component:
            continue
        if task is not None and rec.get("task") != task:
            continue
        ts = rec.get("ts", 0)
        if since is not None and ts < since or until is not None and ts > until:
            continue
        out.append(rec)
    return out
