"""`mirod`: the long-running runtime. An asyncio process owning a state directory (flash tier,
checkpoints, config, logs); a ``Session`` learns in a worker thread so the event loop always
answers on the control socket. This module reads the command line and the configuration and runs
the process (process.py); server.py serves the socket, handlers.py holds its methods.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from miro_runtime.daemon.config import ConfigError, load
from miro_runtime.log import SyslogPrefixFormatter

EXIT_CONFIG = 78  # EX_CONFIG


def setup_logging(level="info"):
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(SyslogPrefixFormatter("%(name)s: %(message)s"))
    root = logging.getLogger("miro")
    root.handlers[:] = [h]
    root.setLevel({"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                   "error": logging.ERROR}[level])
    root.propagate = False


def run_daemon(config_path=None, state_dir=None, socket_path=None, overrides=(), retrain_from_store=False) -> int:
    """Run mirod in this process until it stops; the exit status."""
    from miro_runtime.daemon.process import Daemon
    from miro_runtime.wire.client import default_state_dir
    try:
        cfg = load(config_path, state_dir or os.environ.get("MIRO_STATE_DIR") or None)
        overrides = list(overrides)
        if socket_path:
            overrides.append(("daemon.socket", socket_path))
        for k, v in overrides:
            cfg.set(k, v, "command line")
        if not cfg.daemon.state_dir:
            cfg.daemon.state_dir = default_state_dir()
        cfg.validate()
    except ConfigError as e:
        print(f"mirod: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.daemon.log_level)
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack on stderr
    try:  # a socket or admin group that does not exist is a configuration error too
        return asyncio.run(Daemon(cfg, config_path, overrides, retrain_from_store).main())
    except ConfigError as e:
        print(f"mirod: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mirod", description="miro-runtime daemon: learns continually from data "
                                                           "clients send over a Unix socket")
    from miro_runtime import __version__
    ap.add_argument("--version", action="version", version=f"mirod (miro-runtime) {__version__}")
    ap.add_argument("--config", default=os.environ.get("MIROD_CONFIG"), help="TOML file (default: none)")
    ap.add_argument("--state-dir", default=None, help="state directory (default: $MIRO_STATE_DIR, "
                                                      "$STATE_DIRECTORY, ~/.local/state/miro)")
    ap.add_argument("--socket", default=None, help="control socket path")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", help="override a config key")
    ap.add_argument("--retrain-from-store", action="store_true",
                    help="the checkpoints are gone on purpose: start over on the samples the store holds")
    a = ap.parse_args(argv)
    overrides = []
    for item in a.set:
        if "=" not in item:
            ap.error(f"--set {item!r}: expected TABLE.KEY=VALUE")
        overrides.append(tuple(item.split("=", 1)))
    return run_daemon(a.config, a.state_dir, a.socket, overrides, a.retrain_from_store)
