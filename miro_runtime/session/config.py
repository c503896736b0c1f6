"""SessionConfig: what an open-ended session adds to a RunConfig (the daemon's TOML ``[session]``
table). Standard library only: the daemon's config, and through it the control commands, import it
without numpy or torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SessionConfig:
    """What the session adds to a RunConfig (the daemon's TOML holds both)."""

    max_classes: int = 256
    snapshot_every: int = 50  # steps between predict snapshots (and after every task)
    online_backlog: int = 20000  # online: untrained samples held; beyond it the oldest go untrained
    pause_ram_floor_mb: float = 64.0  # training pauses while available RAM is under this
    pause_battery_floor: float = 10.0  # ... or the battery is under this % and unplugged
    pause_on_throttle: bool = False  # ... or the CPU is thermally throttled
    ingest_timeout_s: float = 30.0  # a client waits this long for the writer, then gets 'busy'
    max_inflight: int = 8  # ingests being written at once; more wait (backpressure)
