"""``miro logs``: the daemon's structured log, filtered as journalctl filters; read from the log files
themselves when no daemon runs."""

from __future__ import annotations

import json
import os
import time

import click

from miro_runtime.choices import LOG_LEVELS
from miro_runtime.cli.control import EXIT_NO_DAEMON, socket_of, call, fail, failed, request
from miro_runtime.log import COMPONENTS


def _when(text):
    """Unix seconds, an ISO time, or an age such as 90s, 15m, 2h, 1d."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        pass
    import datetime
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r}: give unix seconds, an ISO time or an age like 15m") from None


@click.command()
@click.option("--level", type=click.Choice(LOG_LEVELS + ("warn", "err")), default="info", show_default=True,
              help="Minimum level (warn and err as journalctl spells them).")
@click.option("--component", default=None, help=f"Only the events this part produced: {' | '.join(COMPONENTS)}.")
@click.option("--task", "task_id", type=int, default=None, help="Only the events of this task.")
@click.option("--since", default=None, help="Unix seconds, ISO time, or an age (15m, 2h).")
@click.option("--until", default=None, help="Nothing after this: unix seconds, ISO time, or an age (15m, 2h).")
@click.option("-n", "--limit", default=50, show_default=True, help="Show the last N matching events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they come (Ctrl-C ends).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def logs(ctx, level, component, task_id, since, until, limit, follow, as_json):
    """The daemon's structured log, filtered. With no daemon running, the log files themselves are read
    (the crash you most want to read is the one that stopped it)."""
    level = {"warn": "warning", "err": "error"}.get(level, level)
    params = {"level": level, "limit": limit}
    for k, v in (("component", component), ("task", task_id), ("since", _when(since)), ("until", _when(until))):
        if v is not None:
            params[k] = v

    def show(lines):
        for rec in lines:
            if as_json:
                click.echo(json.dumps(rec))
            else:
                rest = {k: v for k, v in rec.items() if k not in ("ts", "level", "component", "event")}
                ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("ts", 0)))
                # whole, however long: the line a user greps for is often the long one
                click.echo(f"{ts} {rec.get('level', ''):<7} {rec.get('component', ''):<8} {rec.get('event')} "
                           f"{json.dumps(rest)}")
    from miro_runtime.wire.client import NoDaemon
    try:
        r = request(ctx, "logs", **params)
    except NoDaemon:
        lines, path = _log_files(ctx)
        if not path:
            fail(ctx, f"no daemon answers on {socket_of(ctx)} and no log file is there to read; start one with "
                      f"`miro daemon`", EXIT_NO_DAEMON)
        click.echo(f"miro: no daemon is running; reading {path}", err=True)
        from miro_runtime.log import select
        show(select(lines, level, component, params.get("task"), params.get("since"), params.get("until"))[-limit:])
        return
    except Exception as e:  # noqa: BLE001 -- the one error path
        failed(ctx, "logs", e)
    show(r["lines"])
    try:
        while follow:
            time.sleep(0.5)
            r = call(ctx, "logs", **{**params, "after": r["offset"], "limit": 10000})
            show(r["lines"])
    except KeyboardInterrupt:  # Ctrl-C ends a follow, as journalctl -f's does: quietly, exit 0
        return


def _log_files(ctx) -> tuple:
    """(lines oldest first, path) of the daemon's JSON log and its rotated backups, or ([], None)."""
    from miro_runtime.wire.client import default_state_dir
    o = ctx.find_root().obj or {}
    logs_dir = os.environ.get("LOGS_DIRECTORY", "").split(":")[0] or \
        os.path.join(o.get("state_dir") or default_state_dir(), "logs")
    path = os.path.join(logs_dir, "mirod.jsonl")
    if not os.path.exists(path):
        return [], None
    files = sorted((p for p in os.listdir(logs_dir) if p.startswith("mirod.jsonl.") and p[12:].isdigit()),
                   key=lambda p: -int(p[12:])) + ["mirod.jsonl"]  # path.5 (oldest) ... path.1, path
    lines = []
    for name in files:
        with open(os.path.join(logs_dir, name), "rb") as fh:
            lines += fh.read().splitlines()
    return lines, path
