"""The fleet's server side as processes: a Flower SuperLink, the app directory Flower ships to it (only a
pyproject.toml naming this package's ServerApp and ClientApp), the CLI connection, and one run of the ServerApp
submitted with ``flwr run`` and followed to its end. Flower is the distributed engine; this module only starts,
configures, watches and stops it. TLS and node authentication are the default; insecure mode is for 127.0.0.1
only, and only when asked for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from miro_runtime.daemon.config import LOOPBACK, split_address
from miro_runtime.daemon.supernode import flower_env, flower_program, stop_process

CONNECTION = "miro"  # the connection's name in FLWR_HOME/config.toml
STATUS_FILE = "status.json"


class FleetError(RuntimeError):
    """A fleet server that cannot start or run, with what to do about it."""


@dataclass
class ServerConfig:
    """What `miro fleet server` runs: where, how securely, and the rounds."""
    dir: str
    address: str = "127.0.0.1:9092"
    insecure: bool = False
    ca_cert: str = ""  # TLS: the CA certificate, the SuperLink's certificate and its key (PEM files)
    cert: str = ""
    key: str = ""
    node_auth: bool = False  # SuperNodes must present a registered key (`miro fleet register`); needs TLS
    rounds: int = 3
    min_boards: int = 2  # replies that must fit for a round to aggregate
    wait_boards: int = 0  # boards the run waits for before round 1 (at least min_boards)
    local_steps: int = 10
    round_timeout_s: float = 300.0
    wait_boards_s: float = 120.0
    extra_env: dict = field(default_factory=dict)

    def check(self) -> None:
        try:
            host, _ = split_address(self.address)
        except ValueError as e:
            raise FleetError(f"--address: {e}") from None
        if self.insecure and host not in LOOPBACK:
            raise FleetError(f"--insecure is allowed only on 127.0.0.1 / localhost, not {host!r}: a real fleet "
                             f"uses TLS (--ca-cert, --cert, --key) and node authentication (--node-auth)")
        if not self.insecure:
            missing = [n for n in ("ca_cert", "cert", "key") if not getattr(self, n)]
            if missing:
                flags = ", ".join("--" + m.replace("_", "-") for m in missing)
                raise FleetError(f"TLS needs --ca-cert, --cert and --key (missing {flags}); on 127.0.0.1 only, "
                                 f"--insecure runs without")
            for n in ("ca_cert", "cert", "key"):
                if not os.path.isfile(getattr(self, n)):
                    raise FleetError(f"--{n.replace('_', '-')} {getattr(self, n)}: no such file")
        if self.node_auth and self.insecure:
            raise FleetError("--node-auth needs TLS (Flower refuses node authentication with --insecure)")
        if self.rounds < 1 or self.min_boards < 1 or self.local_steps < 0:
            raise FleetError("--rounds and --min-boards must be >= 1, --local-steps >= 0")

    @property
    def home(self) -> str:
        return os.path.join(self.dir, "flwr")

    @property
    def status_path(self) -> str:
        return os.path.join(self.dir, STATUS_FILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(cfg: ServerConfig) -> str:
    """The app directory Flower builds into its bundle: a pyproject.toml naming this package's apps (they
    import from the installed package, never from the bundle) and the run's settings."""
    app = os.path.join(cfg.dir, "app")
    os.makedirs(app, exist_ok=True)
    text = f"""# written by `miro fleet server`: Flower's app bundle; the apps are the installed miro_runtime's
[project]
name = "miro-fleet"
version = "1.0.0"
description = "miro-runtime fleet: class-aligned FedAvg of mirod boards"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "miro-runtime"

[tool.flwr.app.components]
serverapp = "miro_runtime.fleet.serverapp:app"
clientapp = "miro_runtime.fleet.clientapp:app"

[tool.flwr.app.config]
rounds = {cfg.rounds}
min-boards = {cfg.min_boards}
wait-boards = {cfg.wait_boards}
local-steps = {cfg.local_steps}
round-timeout = {float(cfg.round_timeout_s)}
wait-boards-s = {float(cfg.wait_boards_s)}
status-file = {json.dumps(cfg.status_path)}
"""
    with open(os.path.join(app, "pyproject.toml"), "w") as fh:
        fh.write(text)
    return app


def write_connection(cfg: ServerConfig) -> None:
    """FLWR_HOME/config.toml: the CLI's connection to this SuperLink (TLS unless insecure)."""
    os.makedirs(cfg.home, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f"address = {json.dumps(cfg.address)}"]
    ca = json.dumps(os.path.abspath(cfg.ca_cert))  # Flower wants an absolute path here
    lines.append("insecure = true" if cfg.insecure else f"root-certificates = {ca}")
    with open(os.path.join(cfg.home, "config.toml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


class FleetServer:
    """A SuperLink and the runs submitted to it; ``stop`` ends every process it started, by PID."""

    def __init__(self, cfg: ServerConfig):
        cfg.check()
        self.cfg = cfg
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(cfg.dir, exist_ok=True)

    def env(self) -> dict:
        return {**flower_env(self.cfg.home), **self.cfg.extra_env}

    def program(self, name: str) -> str:
        exe = flower_program(name)
        if exe is None:
            raise FleetError(f"{name} is not installed: pip install 'miro-runtime[fleet]'")
        return exe

    def start(self, timeout: float = 60.0) -> None:
        c = self.cfg
        host, port = split_address(c.address)
        write_connection(c)
        # its database keeps registered node keys (and runs) across restarts of the server
        cmd = [self.program("flower-superlink"), "--host", host, "--port", str(port),
               "--disable-runtime-dependency-installation", "--database", os.path.join(c.dir, "superlink.db")]
        if c.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", c.ca_cert, "--ssl-certfile", c.cert, "--ssl-keyfile", c.key]
        if c.node_auth:
            cmd.append("--enable-supernode-auth")
        self.log = open(os.path.join(c.dir, "superlink.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise FleetError(f"flower-superlink exited with {self.proc.returncode}; see {c.dir}/superlink.log")
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise FleetError(f"flower-superlink did not listen on {c.address} within {timeout:.0f} s")

    def _flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([self.program("flwr"), *args], capture_output=True, text=True, env=self.env(),
                              timeout=timeout, cwd=self.cfg.dir)

    def submit(self) -> int:
        """Submit the ServerApp's run -> its run id."""
        app = write_app(self.cfg)
        r = self._flwr("run", app, CONNECTION, "--format", "json")
        try:
            return int(json.loads(r.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise FleetError(f"flwr run did not start the fleet's run (rc {r.returncode}): "
                             f"{(r.stdout + r.stderr).strip()[-800:]}") from None

    def run_status(self, run_id: int) -> dict:
        """Flower's word on a run: {"status": "finished:completed" ..., "details": ...}."""
        r = self._flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            run = json.loads(r.stdout)["runs"][0]
            return {"status": run.get("status"), "details": run.get("status-details")}
        except (ValueError, KeyError, IndexError, TypeError):
            return {"status": "unknown", "details": (r.stdout + r.stderr).strip()[-300:]}

    def wait(self, run_id: int, timeout: float, on_round=None) -> dict:
        """Follow a run to its end (the status file between, Flower's status to decide) -> the final status."""
        t0, seen, last_ls = time.monotonic(), 0, 0.0
        while time.monotonic() - t0 < timeout:
            st = read_status(self.cfg.status_path)
            rounds = st.get("rounds", []) if st else []
            for entry in rounds[seen:]:
                if on_round:
                    on_round(entry)
            seen = len(rounds)
            if st and st.get("state") in ("done", "failed") or time.monotonic() - last_ls > 15:
                last_ls = time.monotonic()
                fl = self.run_status(run_id)
                if str(fl["status"]).startswith("finished"):
                    return {**(read_status(self.cfg.status_path) or {}), "flower": fl}
            if self.proc is not None and self.proc.poll() is not None:
                raise FleetError(f"flower-superlink exited with {self.proc.returncode} during the run")
            time.sleep(0.5)
        raise FleetError(f"the fleet's run {run_id} did not finish within {timeout:.0f} s")

    def stop(self) -> Optional[int]:
        if self.proc is None:
            return None
        rc = stop_process(self.proc)
        self.log.close()
        return rc


def read_status(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
