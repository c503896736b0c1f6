"""`miro` command line: a thin shell over the library. This module holds the click group, its global
options, and the list of commands; each command lives with its concern:

    run.py       in-process, no daemon: run (options from options.py), inspect, store, rep
    control.py   clients of mirod's control socket (status, eval, ingest, task, ...) and `miro daemon`
    kv.py        KV-cache inference
    service.py   the systemd unit, and `miro demo`

Only the commands import the engine, torch or numpy, when they run: ``miro status`` loads neither."""

from __future__ import annotations

import logging
import sys

import click

from miro_runtime.cli.control import (checkpoint, config, daemon, eval_, ingest, logs, predict, profile, status,
                                      task)
from miro_runtime.cli.kv import kv
from miro_runtime.cli.options import config_from_options
from miro_runtime.cli.run import inspect, rep, run, store
from miro_runtime.cli.service import demo, service


@click.group()
@click.version_option(package_name="miro-runtime")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision to stderr.")
@click.option("--state-dir", envvar="MIRO_STATE_DIR", default=None,
              help="The daemon's state directory [env MIRO_STATE_DIR; default $STATE_DIRECTORY or "
                   "~/.local/state/miro].")
@click.option("--socket", "socket_path", envvar="MIRO_SOCKET", default=None,
              help="The control socket [env MIRO_SOCKET; default $RUNTIME_DIRECTORY/mirod.sock, else "
                   "STATE_DIR/mirod.sock].")
@click.pass_context
def main(ctx, verbose, state_dir, socket_path):
    """miro: on-device continual learning over RAM + flash (CarM) with energy-aware tuning (Miro)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ctx.obj = {"state_dir": state_dir, "socket": socket_path}


for command in (run, inspect, store, rep,
                daemon, status, eval_, ingest, task, predict, config, profile, checkpoint, logs,
                kv, service, demo):
    main.add_command(command)

__all__ = ["main", "run", "config_from_options"]  # `miro` is main; tests drive run and config_from_options

if __name__ == "__main__":
    main()
