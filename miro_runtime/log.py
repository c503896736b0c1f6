"""Structured event log: one JSON object per line ({"ts", "level", "component", "event", ...}),
rotated by size, plus readable lines on stderr through ``logging``. Under systemd each stderr line
starts with its syslog priority (``<6>`` info, ``<4>`` warning, ``<3>`` error), which journald reads
as the line's level. Safe to call from several threads (the trainer, the event loop's helpers)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from miro_runtime.choices import LOG_LEVELS as LEVELS

logger = logging.getLogger("miro")

SYSLOG = {"debug": 7, "info": 6, "warning": 4, "error": 3}
PYLEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
KIND_LEVEL = {"error": "error", "peer_refused": "warning", "training_paused": "warning", "request_error": "warning",
              "online_backlog_dropped": "warning", "inbox_failed": "warning", "config_rejected": "warning"}


class EventLog:
    def __init__(self, path=None, max_bytes: int = 0, backups: int = 5, component: str = "engine",
                 level: str = "debug"):
        self.path, self.max_bytes, self.backups, self.component = path, max_bytes, backups, component
        self.level = level
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1) if path else None

    def event(self, kind: str, **fields) -> dict:
        level = fields.pop("level", None) or KIND_LEVEL.get(kind, "info")
        component = fields.pop("component", None) or self.component
        rec = {"ts": round(time.time(), 3), "level": level, "component": component, "event": kind, **fields}
        if self._fh and LEVELS.index(level) >= LEVELS.index(self.level):
            line = json.dumps(rec, default=_plain) + "\n"
            with self._lock:
                if self._fh:
                    self._fh.write(line)
                    if self.max_bytes and self._fh.tell() >= self.max_bytes:
                        self._rotate()
        logger.log(PYLEVEL[level], "%s %s %s", component, kind, json.dumps(fields, default=_plain)[:400])
        return rec

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


class SyslogPrefixFormatter(logging.Formatter):
    """``<N>component: message`` for journald (N: the syslog priority of the record's level)."""

    def format(self, record):
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
