"""Typed records that cross module boundaries: what a result *is*, with documented fields and units,
turned into JSON only at the edges (the log, the socket, summary.json, checkpoints). Standard
library only: control commands and the daemon's event loop import them without torch or numpy."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Position:
    """Where training stands in a stream: task ``task``, epoch ``epoch``, ``batch`` batches of that
    epoch done. A checkpoint stores it; a resume continues from it."""

    task: int = 0
    epoch: int = 0
    batch: int = 0

    @classmethod
    def start_of(cls, task: int) -> "Position":
        """The first step of ``task``."""
        return cls(task, 0, 0)

    def within(self, task: int) -> "Position":
        """This position if it lies in ``task``, else the start of ``task``."""
        return self if self.task == task else Position.start_of(task)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Position":
        """From a checkpoint's or a client's ``{"task", "epoch", "batch"}`` (a Position passes through)."""
        if isinstance(d, Position):
            return d
        return cls(int(d.get("task", 0)), int(d.get("epoch", 0)), int(d.get("batch", 0)))


def as_dict(rec) -> dict:
    """A record as the JSON-able dict sent at the edges (a plain dict passes through)."""
    if rec is None or isinstance(rec, dict):
        return rec
    to = getattr(type(rec), "to_dict", None)
    return to(rec) if to is not None else asdict(rec)
