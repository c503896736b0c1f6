"""``miro config``: show, set, unset and reload the running daemon's configuration (TOML in, TOML out)."""

from __future__ import annotations

import click

from miro_runtime.cli.control import EXIT_DAEMON_ERROR, call, fail
from miro_runtime.cli.render import emit


@click.group()
def config():
    """Show, set or reload the daemon's configuration."""


@config.command(name="show")
@click.argument("key", required=False)
@click.option("--defaults", is_flag=True, help="Print the documented default TOML (no daemon needed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_context
def config_show(ctx, key, defaults, as_json):
    """The running daemon's configuration as TOML (live keys marked, its sources in a comment), or one
    KEY (TABLE.KEY) as `key = value`. An unset setting is shown commented out: `# key = none (unset)`."""
    from miro_runtime.daemon.config import ConfigError, DaemonConfig, to_toml, toml_line
    if defaults:
        from miro_runtime.daemon.config import default_toml
        click.echo(default_toml(), nl=False)
        return
    if key is not None:
        try:
            table, name, _ = DaemonConfig().field_of(key, "config show")
        except ConfigError as e:
            fail(ctx, str(e), EXIT_DAEMON_ERROR)
        v = call(ctx, "config_show")["config"][table][name]
        emit({key: v}, as_json, lambda r: click.echo(toml_line(key, v)))
        return
    emit(call(ctx, "config_show"), as_json, lambda r: click.echo(to_toml(r["config"], r["live_keys"], r["sources"])))


def _key_value(ctx, words: tuple) -> tuple:
    """`KEY=VALUE` or `KEY VALUE` -> (key, value); a usage error otherwise."""
    if len(words) == 1 and "=" in words[0]:
        return tuple(words[0].split("=", 1))
    if len(words) == 2 and "=" not in words[0]:
        return words[0], words[1]
    raise click.UsageError("give TABLE.KEY=VALUE or TABLE.KEY VALUE (e.g. learning.lr=0.01)", ctx)


def _said(r) -> str:
    from miro_runtime.daemon.config import toml_line
    when = "applied now" if r["applied_live"] else "takes effect after a restart" if r["restart_needed"] else \
        "no change to the running daemon"
    return f"{toml_line(r['key'], r['value'])}  ({when}; {r['persisted']})"


@config.command(name="set", context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, required=True, metavar="TABLE.KEY=VALUE | TABLE.KEY VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def config_set(ctx, words, as_json):
    """Set TABLE.KEY to VALUE, kept in STATE_DIR/overrides.toml; applied live where it can be. VALUE may
    be negative (learning.lr -0.1 reaches the config's check), `none` for an optional setting leaves it
    unset, and a byte size may carry a unit (kv.ram_bytes=64MiB)."""
    key, value = _key_value(ctx, words)
    emit(call(ctx, "config_set", key=key, value=value), as_json, lambda r: click.echo(_said(r)))


@config.command(name="unset")
@click.argument("key", metavar="TABLE.KEY")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def config_unset(ctx, key, as_json):
    """Drop TABLE.KEY from STATE_DIR/overrides.toml: the config file's value (or the default) applies
    again, at once where the key is live, after a restart otherwise."""
    r = call(ctx, "config_unset", key=key)
    emit(r, as_json, lambda r: click.echo(_said(r) if r["removed"] else f"{r['key']} was not set by `miro config set`; "
                                          f"{_said(r)}"))


@config.command(name="reload")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def config_reload(ctx, as_json):
    """Re-read the configuration (as SIGHUP does)."""
    from miro_runtime.daemon.config import toml_line
    r = call(ctx, "config_reload")
    if r.get("error"):  # the daemon kept its configuration: a refusal, as any other
        fail(ctx, f"config reload: {r['error']}", EXIT_DAEMON_ERROR)

    def human(r):
        for title, keys in (("applied now", r["applied"]), ("takes effect after a restart", r["restart_needed"])):
            click.echo(f"# {title}: {len(keys) or 'nothing'}")
            for k, v in keys.items():
                click.echo(toml_line(k, v))
    emit(r, as_json, human)

