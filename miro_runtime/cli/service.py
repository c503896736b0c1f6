"""mirod as a user installs or meets it: ``miro service`` prints, installs or removes its systemd unit;
``miro demo`` starts one on a temporary state directory and streams a small benchmark through it."""

from __future__ import annotations

import sys

import click

EXIT_FAILED = 1  # a failure the message names

# as miro_runtime.daemon.unit's (a test checks they agree); not imported from there, so `miro --help` stays light
DEFAULT_CONFIG = "/etc/miro/mirod.toml"
DEFAULT_UNIT_PATH = "/etc/systemd/system/mirod.service"
PROTECT_HOME = ("yes", "tmpfs", "read-only", "no")


def unit_options(f):
    """The options that shape the unit, shared by `unit` and `install`."""
    for opt in reversed((
        click.option("--user", "user", default=None, help="User= for the unit (default: a DynamicUser)."),
        click.option("--group", "group", default="miro", show_default=True, help="Group owning the socket."),
        click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                     help="The config file ExecStart passes to mirod (install writes the defaults there if absent)."),
        click.option("--exec", "exec_path", default=None, metavar="PATH",
                     help="The mirod executable ExecStart runs (default: this installation's)."),
        click.option("--protect-home", type=click.Choice(PROTECT_HOME), default="yes", show_default=True,
                     help="ProtectHome= for the unit: read-only (with --user) runs a mirod installed under "
                          "/home or /root."),
    )):
        f = opt(f)
    return f


@click.group()
def service():
    """systemd: print, install or remove the mirod unit."""


@service.command()
@unit_options
def unit(user, group, config_path, exec_path, protect_home):
    """Print the unit file (and, on stderr, why it would not start, if it would not)."""
    from miro_runtime.daemon.unit import check, fix_for, unit_file
    click.echo(unit_file(user=user, group=group, config=config_path, exec_path=exec_path, protect_home=protect_home),
               nl=False)
    problems = check(exec_path, protect_home, user)
    if problems:
        click.echo(f"miro: warning: service unit: {', and '.join(problems)}; {fix_for(problems)}", err=True)


@service.command()
@click.option("--path", default=DEFAULT_UNIT_PATH, show_default=True, help="Where to write the unit.")
@unit_options
@click.option("--no-reload", is_flag=True, help="Do not run systemctl daemon-reload.")
@click.pass_context
def install(ctx, path, user, group, config_path, exec_path, protect_home, no_reload):
    """Write the unit and, when there is none, the default config file (then run systemctl
    daemon-reload when systemd is there). Refuses a unit that would hide mirod from itself."""
    from miro_runtime.cli.control import EXIT_DENIED, fail
    from miro_runtime.daemon.main import EXIT_CONFIG
    from miro_runtime.daemon.unit import UnitProblem, install_unit
    try:
        lines = install_unit(path, user=user, group=group, config=config_path, exec_path=exec_path,
                             protect_home=protect_home, reload=not no_reload)
    except UnitProblem as e:
        fail(ctx, f"service install: {e.why}; {e.fix}", EXIT_CONFIG)
    except PermissionError as e:
        fail(ctx, f"service install: cannot write {e.filename}: permission denied; run it as root (sudo), or pass "
                  "--path and --config where this user may write", EXIT_DENIED)
    except OSError as e:
        fail(ctx, f"service install: cannot write {e.filename}: {e.strerror}; pass --path and --config where "
                  "files can be written", EXIT_FAILED)
    for line in lines:
        click.echo(line)


@service.command()
@click.option("--path", default=DEFAULT_UNIT_PATH, show_default=True, help="The unit to remove.")
@click.option("--no-reload", is_flag=True, help="Do not run systemctl daemon-reload.")
def uninstall(path, no_reload):
    """Remove the unit (the state directory and the config file are left alone)."""
    from miro_runtime.daemon.unit import uninstall_unit
    for line in uninstall_unit(path, reload=not no_reload):
        click.echo(line)


@click.command()
@click.option("--tasks", default=5, show_default=True, help="Tasks of split-digits to stream.")
@click.option("--epochs", default=3, show_default=True, help="Training epochs per task.")
@click.option("--keep", is_flag=True, help="Keep the temporary state directory.")
def demo(tasks, epochs, keep):
    """Start mirod on a temporary state dir, stream split-digits through its socket, show the
    accuracy matrix, energy per task and a few predictions, stop it cleanly."""
    from miro_runtime.cli.demo import run_demo
    sys.exit(run_demo(tasks=tasks, epochs=epochs, keep=keep))
