"""`miro` command line: a thin shell over the library. This module holds the click group, its global
options, and the list of commands; each command lives with its concern:

    run.py       in-process, no daemon: run (options from options.py), inspect, store, rep
    control.py   clients of mirod's control socket (status, eval, ingest, task, ...) and `miro daemon`
    settings.py  `miro config`; budget.py `miro budget`
    kv.py        KV-cache inference
    service.py   the systemd unit, and `miro demo`

and `miro completion SHELL`, the shell completion script, here.

Only the commands import the engine, torch or numpy, when they run: ``miro status`` loads neither.
A command's module is imported when the command runs (or --help lists it): ``miro status`` loads
control.py alone, not run's options, kv or fleet (about half of the CLI's start-up here)."""

from __future__ import annotations

import logging
import sys

import click

# command -> (its module in miro_runtime.cli, the click command's name there)
COMMANDS = {
    "run": ("run", "run"), "inspect": ("run", "inspect"), "store": ("run", "store"), "rep": ("run", "rep"),
    "daemon": ("control", "daemon"), "status": ("control", "status"), "eval": ("control", "eval_"),
    "ingest": ("control", "ingest"), "task": ("control", "task"), "predict": ("control", "predict"),
    "profile": ("control", "profile"), "checkpoint": ("control", "checkpoint"),
    "config": ("settings", "config"), "budget": ("budget", "budget"), "logs": ("logs", "logs"),
    "kv": ("kv", "kv"), "fleet": ("fleet", "fleet"), "service": ("service", "service"),
    "demo": ("service", "demo"),
}


class MiroGroup(click.Group):
    """The group, taking its global options after the subcommand too (``miro status --state-dir X``,
    as systemctl and journalctl take theirs): they are moved before it, up to a ``--``. Its commands
    are imported on first use (``COMMANDS``)."""

    GLOBAL = {"--state-dir": True, "--socket": True, "-v": False, "--verbose": False}  # option -> takes a value

    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in COMMANDS and name not in self.commands:
            module, attr = COMMANDS[name]
            # __import__, not importlib.import_module: the latter bypasses `python -X importtime`'s table
            self.add_command(getattr(__import__(f"miro_runtime.cli.{module}", fromlist=[attr]), attr), name)
        return self.commands.get(name)

    def parse_args(self, ctx, args):
        if args and (args[0] in COMMANDS or args[0] in self.commands):
            head, rest, moved, i = [args[0]], args[1:], [], 0
            while i < len(rest) and rest[i] != "--":
                name = rest[i].split("=", 1)[0]
                if name in self.GLOBAL:
                    takes = self.GLOBAL[name] and "=" not in rest[i]
                    moved += rest[i:i + 1 + takes]
                    del rest[i:i + 1 + takes]
                else:
                    i += 1
            args = moved + head + rest
        return super().parse_args(ctx, args)


EXIT_CODES = """Exit codes (sysexits.h where one fits): 0 done; 1 a failure the message names (damage
that inspect or store verify found, a run that failed); 2 a usage error (a flag or a value; store verify:
a store that cannot be opened at all); 3 another mirod owns the state directory; 65 the daemon refused the
request (bad input, a conflict); 69 no daemon answers on the socket; 70 miro status: the daemon answered
but its trainer is unhealthy (a task failed, a job is failing, or it is wedged; status is still printed);
77 permission denied (the socket's group, or a mutating method for a read-only peer); 78 a bad
configuration (miro daemon), or a unit miro service install refuses to write (it could not start).

Shell completion: `miro completion bash|zsh|fish` prints the script (see its --help for where it goes);
it is click's, so `_MIRO_COMPLETE=bash_source miro` (zsh_source, fish_source) prints the same."""
SHELLS = ("bash", "zsh", "fish")


@click.group(cls=MiroGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
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


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the completion script for SHELL. Load it from the shell's startup file:

    \b
      bash  ~/.bashrc:  eval "$(miro completion bash)"
      zsh   ~/.zshrc:   eval "$(miro completion zsh)"
      fish  miro completion fish > ~/.config/fish/completions/miro.fish
    """
    from click.shell_completion import get_completion_class
    script = get_completion_class(shell)(main, {}, "miro", "_MIRO_COMPLETE")
    click.echo(script.source(), nl=False)


main.add_command(completion)

__all__ = ["main", "COMMANDS"]

if __name__ == "__main__":
    main()
