"""mirod as a user installs or meets it: ``miro service`` prints, installs or removes its systemd unit;
``miro demo`` starts one on a temporary state directory and streams a small benchmark through it."""

from __future__ import annotations

import sys

import click


@click.group()
def service():
    """systemd: print, install or remove the mirod unit."""


@service.command()
@click.option("--user", "user", default=None, help="User= for the unit (default: a DynamicUser).")
@click.option("--group", "group", default="miro", show_default=True, help="Group owning the socket.")
@click.option("--config", "config_path", default="/etc/miro/mirod.toml", show_default=True)
def unit(user, group, config_path):
    """Print the unit file."""
    from miro_runtime.daemon.unit import unit_file
    click.echo(unit_file(user=user, group=group, config=config_path), nl=False)


@service.command()
@click.option("--path", default="/etc/systemd/system/mirod.service", show_default=True)
@click.option("--user", "user", default=None)
@click.option("--group", "group", default="miro", show_default=True)
@click.option("--config", "config_path", default="/etc/miro/mirod.toml", show_default=True)
@click.option("--no-reload", is_flag=True, help="Do not run systemctl daemon-reload.")
def install(path, user, group, config_path, no_reload):
    """Write the unit (and run systemctl daemon-reload when systemd is there)."""
    from miro_runtime.daemon.unit import install_unit
    for line in install_unit(path, user=user, group=group, config=config_path, reload=not no_reload):
        click.echo(line)


@service.command()
@click.option("--path", default="/etc/systemd/system/mirod.service", show_default=True)
@click.option("--no-reload", is_flag=True)
def uninstall(path, no_reload):
    """Remove the unit (the state directory is left alone)."""
    from miro_runtime.daemon.unit import uninstall_unit
    for line in uninstall_unit(path, reload=not no_reload):
        click.echo(line)


@click.command()
@click.option("--tasks", default=5, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary state directory.")
def demo(tasks, epochs, keep):
    """Start mirod on a temporary state dir, stream split-digits through its socket, show the
    accuracy matrix, energy per task and a few predictions, stop it cleanly."""
    from miro_runtime.cli.demo import run_demo
    sys.exit(run_demo(tasks=tasks, epochs=epochs, keep=keep))
