"""mirod's configuration: one TOML file with three tables, every knob with a documented default.

    [daemon]    the process: socket, permissions, logs, inbox, metrics, timeouts
    [learning]  the learner: every RunConfig field (strategy, memory, flash_budget, epochs, online, ...)
    [session]   the open-ended session: class cap, snapshots, backlog, the training pause policy
    [kv]        KV-cache inference over the socket: model, policy, the KV namespace's RAM and flash share

Precedence: defaults < the TOML file < ``<state dir>/overrides.toml`` (what ``miro config set``
writes) < environment ``MIROD_<TABLE>_<KEY>`` (e.g. ``MIROD_LEARNING_MEMORY=40``). Each value is
typed by ``miro_runtime.config.typed`` (the one conversion: a TOML value or a spelled string, to the
field's declared type) and checked against its allowed values; an error names the key. No torch or numpy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Optional

from miro_runtime.choices import KV_POLICIES, LOG_LEVELS, RUN_CHOICES
from miro_runtime.config import RunConfig, typed
from miro_runtime.session.config import SessionConfig  # noqa: F401  (stdlib only: no numpy, no torch)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10 boards
    import tomli as tomllib


@dataclass
class DaemonSection:
    state_dir: str = ""  # "" -> $STATE_DIRECTORY, else ~/.local/state/miro (overridden by --state-dir)
    socket: str = ""  # "" -> $RUNTIME_DIRECTORY/mirod.sock, else <state_dir>/mirod.sock
    socket_mode: str = "0660"
    socket_group: str = ""  # group owning the socket; its members may call read-only methods
    admin_group: str = ""  # members may also call mutating methods (besides the daemon's uid and root)
    max_message_bytes: int = 16 << 20
    idle_timeout_s: float = 300.0  # a connection silent this long is closed
    max_connections: int = 64
    logs_dir: str = ""  # "" -> $LOGS_DIRECTORY, else <state_dir>/logs
    log_level: str = "info"  # debug | info | warning | error (the JSON file and stderr)
    log_max_bytes: int = 10 << 20  # the JSON-lines log rotates at this size
    log_backups: int = 5
    inbox_dir: str = ""  # "" -> no inbox; else *.npz files and image folders dropped here are ingested
    inbox_scan_s: float = 2.0
    metrics_file: str = ""  # "" -> none; else Prometheus text written atomically (node_exporter textfile)
    metrics_every_s: float = 15.0
    shutdown_timeout_s: float = 20.0  # SIGTERM: the current step, a checkpoint and a flush within this
    watchdog: bool = True  # ping systemd's watchdog from the event loop when WATCHDOG_USEC is set


@dataclass
class KVSection:
    enabled: bool = True  # serve kv_generate on the control socket
    model: str = "builtin-tiny"  # or a local transformers model directory (the llm extra; policy full only)
    policy: str = "full"  # a request may ask for another
    ram_bytes: int = 32 << 20  # the KV namespace's share of RAM: a generation's hot budget (the most a request gets)
    flash_bytes: int = 256 << 20  # its share of flash: stored prompt prefixes are capped here
    block_tokens: int = 16
    max_new_tokens: int = 512  # a request asking for more is refused by name
    reuse_prefixes: bool = True  # keep prompt prefixes of lossless generations in <state_dir>/kv


LIVE = {  # what SIGHUP / config set change in a running daemon; everything else needs a restart
    "daemon": {"log_level", "idle_timeout_s", "max_message_bytes", "inbox_scan_s", "metrics_every_s",
               "shutdown_timeout_s", "max_connections"},
    "learning": {"epochs", "swap_ratio", "checkpoint_every", "monitor_every_s", "miro_budget", "lr"},
    "session": {"snapshot_every", "online_backlog", "pause_ram_floor_mb", "pause_battery_floor",
                "pause_on_throttle", "ingest_timeout_s"},
    "kv": {"enabled", "policy", "ram_bytes", "flash_bytes", "max_new_tokens", "reuse_prefixes"},
}
TABLES = ("daemon", "learning", "session", "kv")
CHOICES = {
    **{("learning", k): v for k, v in RUN_CHOICES.items() if k != "stream"},
    ("daemon", "log_level"): LOG_LEVELS,
    ("kv", "policy"): KV_POLICIES,
}
# learning keys that mean nothing to a daemon (its data comes from clients)
NOT_FOR_DAEMON = {"stream", "tasks", "data_dir", "download", "synthetic", "run_dir"}


class ConfigError(ValueError):
    pass


def _learning_defaults() -> RunConfig:
    # the daemon's defaults differ from `miro run`'s where the setting differs: it learns online from
    # batches as they arrive, and keeps every sample (a flash budget is a deployment decision)
    return RunConfig(online=True, flash_budget=None, run_dir="")


@dataclass
class DaemonConfig:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    learning: RunConfig = field(default_factory=_learning_defaults)
    session: SessionConfig = field(default_factory=SessionConfig)
    kv: KVSection = field(default_factory=KVSection)
    source: list = field(default_factory=list)  # where values came from (file, overrides, env)

    def to_dict(self) -> dict:
        learning = {k: v for k, v in dataclasses.asdict(self.learning).items() if k not in NOT_FOR_DAEMON}
        return {"daemon": dataclasses.asdict(self.daemon), "learning": learning,
                "session": dataclasses.asdict(self.session), "kv": dataclasses.asdict(self.kv)}

    def section(self, name: str):
        if name not in TABLES:
            raise ConfigError(f"unknown table [{name}]; tables are {', '.join(TABLES)}")
        return getattr(self, name)

    def set(self, key: str, raw, origin: str = "set") -> tuple:
        """Set 'table.key' from a TOML value or a string (env, CLI) -> (table, key, old, new)."""
        if "." not in key:
            raise ConfigError(f"{origin}: key {key!r} must be table.key (daemon.*, learning.*, session.*, kv.*)")
        table, name = key.split(".", 1)
        sec = self.section(table)
        known = {f.name: f for f in fields(sec)}
        if name not in known or (table == "learning" and name in NOT_FOR_DAEMON):
            allowed = sorted(k for k in known if not (table == "learning" and k in NOT_FOR_DAEMON))
            raise ConfigError(f"{origin}: unknown key {key!r}; [{table}] has {', '.join(allowed)}")
        old = getattr(sec, name)
        try:
            new = typed(raw, typing.get_type_hints(type(sec))[name], f"{table}.{name}", f"{origin}:")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if new == 0 and known[name].metadata.get("zero_is_none"):  # flash_budget = 0: unbounded
            new = None
        choices = CHOICES.get((table, name))
        if choices and new not in choices:
            raise ConfigError(f"{origin}: {table}.{name} = {new!r} is not one of {', '.join(choices)}")
        setattr(sec, name, new)
        return table, name, old, new

    def validate(self) -> None:
        d, s = self.daemon, self.session
        problems = []
        try:
            mode = int(d.socket_mode, 8)
            if not 0 <= mode <= 0o777:
                raise ValueError
        except ValueError:
            problems.append(f"daemon.socket_mode = {d.socket_mode!r} must be an octal mode such as 0660")
        for k in ("max_message_bytes", "max_connections", "log_max_bytes"):
            if getattr(d, k) < 1:
                problems.append(f"daemon.{k} must be >= 1, got {getattr(d, k)}")
        for k in ("idle_timeout_s", "inbox_scan_s", "metrics_every_s", "shutdown_timeout_s"):
            if not getattr(d, k) > 0:
                problems.append(f"daemon.{k} must be > 0, got {getattr(d, k)}")
        if d.log_backups < 0:
            problems.append(f"daemon.log_backups must be >= 0, got {d.log_backups}")
        if not 1 <= s.max_classes <= 100000:
            problems.append(f"session.max_classes must lie in 1..100000, got {s.max_classes}")
        for k in ("snapshot_every", "online_backlog", "max_inflight"):
            if getattr(s, k) < 1:
                problems.append(f"session.{k} must be >= 1, got {getattr(s, k)}")
        for k in ("pause_ram_floor_mb", "pause_battery_floor", "ingest_timeout_s"):
            if getattr(s, k) < 0:
                problems.append(f"session.{k} must be >= 0, got {getattr(s, k)}")
        k = self.kv
        for name in ("ram_bytes", "block_tokens", "max_new_tokens"):
            if getattr(k, name) < 1:
                problems.append(f"kv.{name} must be >= 1, got {getattr(k, name)}")
        if k.flash_bytes < 0:
            problems.append(f"kv.flash_bytes must be >= 0, got {k.flash_bytes}")
        try:
            self.learning.validate(names="key")
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))


def _apply_table(cfg: DaemonConfig, data: dict, origin: str):
    for table, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: top-level key {table!r} must be a table ([daemon], [learning], [session], "
                              "[kv])")
        for k, v in values.items():
            cfg.set(f"{table}.{k}", v, origin)


def load(path: Optional[str] = None, state_dir: Optional[str] = None, env=None) -> DaemonConfig:
    """Defaults, then the file, then the state dir's overrides, then the environment; validated."""
    env = os.environ if env is None else env
    cfg = DaemonConfig()
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        _apply_table(cfg, data, path)
        cfg.source.append(path)
    sd = state_dir or cfg.daemon.state_dir
    if sd:
        cfg.daemon.state_dir = sd
    ov = overrides_path(cfg)
    if ov and os.path.exists(ov):
        try:
            with open(ov, "rb") as fh:
                _apply_table(cfg, tomllib.load(fh), ov)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"overrides file {ov} is not valid TOML: {e}") from None
        cfg.source.append(ov)
    for name, value in sorted(env.items()):
        if name.startswith("MIROD_") and name.count("_") >= 2:
            table, _, key = name[len("MIROD_"):].lower().partition("_")
            cfg.set(f"{table}.{key}", value, f"environment {name}")
            cfg.source.append(name)
    cfg.validate()
    return cfg


def overrides_path(cfg: DaemonConfig) -> Optional[str]:
    return os.path.join(cfg.daemon.state_dir, "overrides.toml") if cfg.daemon.state_dir else None


def write_overrides(path: str, values: dict) -> None:
    """{table: {key: value}} as TOML (scalars only), written atomically."""
    lines = []
    for table in sorted(values):
        lines.append(f"[{table}]")
        for k in sorted(values[table]):
            lines.append(f"{k} = {_toml_value(values[table][k])}")
        lines.append("")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_overrides(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def default_toml() -> str:
    """The documented default configuration (``miro config show --defaults``)."""
    cfg = DaemonConfig()
    out = ["# mirod configuration: every key with its default. Keys marked (live) change on SIGHUP",
           "# or `miro config set`; the others need a restart.", ""]
    for table in TABLES:
        out.append(f"[{table}]")
        for k, v in cfg.to_dict()[table].items():
            live = " # (live)" if k in LIVE[table] else ""
            choices = CHOICES.get((table, k))
            hint = f" # one of: {', '.join(choices)}" if choices else ""
            out.append(f"{'# ' if v is None else ''}{k} = {_toml_value(v) if v is not None else '(unset)'}"
                       f"{live}{hint}")
        out.append("")
    return "\n".join(out)
