"""Structured event log: one JSON object per line in the run directory, plus readable lines on
stderr through ``logging`` (journald reads stderr when the daemon runs under systemd)."""

from __future__ import annotations

import json
import logging
import time

logger = logging.getLogger("miro")


class EventLog:
    def __init__(self, path=None):
        self.path = path
        self._fh = open(path, "a", buffering=1) if path else None

    def event(self, kind: str, **fields) -> dict:
        rec = {"ts": round(time.time(), 3), "event": kind, **fields}
        if self._fh:
            self._fh.write(json.dumps(rec, default=_plain) + "\n")
        logger.info("%s %s", kind, json.dumps(fields, default=_plain)[:400])
        return rec

    def close(self):
        if self._fh:
            self._fh.close()
            self._fh = None


def _plain(o):
    try:
        return o.item()
    except AttributeError:
        return str(o)
