"""The one error a session raises for a request it refuses. Standard library only: the daemon's
dispatch and the ledger import it without numpy."""

from __future__ import annotations


class SessionError(ValueError):
    """A request the session refuses; ``kind`` says why (params, conflict, busy, not-ready, state, stopping)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
