"""SessionConfig: what an open-ended session adds to a RunConfig (the daemon's TOML ``[session]``
table). Standard library only: the daemon's config, and through it the control commands, import it
without numpy or torch. Each field's help (``about``) is the line the daemon's example TOML prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from miro_runtime.config import about


@dataclass
class SessionConfig:
    """What the session adds to a RunConfig (the daemon's TOML holds both)."""

    max_classes: int = field(default=256, metadata=about("The most classes the session's head grows to."))
    snapshot_every: int = field(default=50, metadata=about(
        "Training steps between predict snapshots (one is also taken after every task)."))
    online_backlog: int = field(default=20000, metadata=about(
        "Online: untrained samples held; beyond it the oldest go untrained."))
    pause_ram_floor_mb: float = field(default=64.0, metadata=about(
        "Training pauses while available RAM is under this many MB."))
    pause_battery_floor: float = field(default=10.0, metadata=about(
        "... or while the battery is under this % and unplugged."))
    pause_on_throttle: bool = field(default=False, metadata=about("... or while the CPU is thermally throttled."))
    ingest_timeout_s: float = field(default=30.0, metadata=about(
        "A client waits this long for the writer, then gets 'busy'."))
    max_inflight: int = field(default=8, metadata=about("Ingests being written at once; more wait (backpressure)."))
