"""Help as a user reads it: every option of every `miro` command and subcommand says what it does, -h
works everywhere, no help prints a literal %%, `miro run --help` lists each strategy's method options,
shell completion is documented and works, and the scripts beside it (mirod, the examples) answer --help
without side effects."""
import glob
import os
import subprocess
from dataclasses import fields

import click
import pytest
from click.testing import CliRunner

from conftest import MIRO, PY, REPO
from miro_runtime.choices import RUN_CHOICES, STRATEGIES
from miro_runtime.cli.main import main
from miro_runtime.cli.options import BY_HAND
from miro_runtime.config import RunConfig


def commands(cmd=main, path=()) -> list:
    """(argv path, command) of the group and every command under it, recursively."""
    out = [(list(path), cmd)]
    if isinstance(cmd, click.Group):  # click's own API: miro's group imports a command when asked for it
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            out += commands(cmd.get_command(ctx, name), (*path, name))
    return out


COMMANDS = commands()


def test_the_walk_reaches_every_level():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "run", "status", "task end", "config set", "store verify", "rep pretrain", "completion"} <= names
    assert len(COMMANDS) > 30
    from miro_runtime.cli.main import COMMANDS as LAZY  # each lazily loaded command is the one its name says
    assert {p[0] for p, _ in COMMANDS if len(p) == 1} == set(LAZY) | {"completion"}
    assert all(cmd.name == p[0] for p, cmd in COMMANDS if len(p) == 1)


def test_every_option_of_every_command_has_help():
    missing = [f"miro {' '.join(p)} {'/'.join(o.opts)}".replace("  ", " ") for p, cmd in COMMANDS for o in cmd.params
               if isinstance(o, click.Option) and "--help" not in o.opts and not (o.help or "").strip()]
    assert not missing, "options without help: " + ", ".join(missing)


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) or "miro" for p, _ in COMMANDS])
def test_help_and_h_everywhere_with_no_literal_percent(path):
    runner = CliRunner()
    long = runner.invoke(main, [*path, "--help"], prog_name="miro")
    short = runner.invoke(main, [*path, "-h"], prog_name="miro")
    assert long.exit_code == 0 and short.exit_code == 0, (long.output, short.output)
    assert long.output == short.output and long.output.startswith("Usage: miro")
    assert "%%" not in long.output


def test_run_help_comes_from_the_config_and_lists_each_methods_options():
    opts = {o.name: o for o in main.get_command(click.Context(main), "run").params if isinstance(o, click.Option)}
    for f in fields(RunConfig):
        assert f.metadata.get("help", "").strip(), f"RunConfig.{f.name}: give it about(help)"
        if f.name in BY_HAND:
            continue
        assert opts[f.name].help.startswith(f.metadata["help"]), f.name
        assert all(c in opts[f.name].help for c in RUN_CHOICES.get(f.name, ())), f.name
    out = CliRunner().invoke(main, ["run", "--help"], prog_name="miro").output
    methods = out.split("Method options (--method-opt KEY=VALUE")[1]
    from miro_runtime.engine.strategies import STRATEGIES as CLASSES
    flat = " ".join(methods.split())
    for name in STRATEGIES:
        assert name in methods, name
        if CLASSES[name].Options is not None:
            row = flat.split(f" {name} ", 1)[1]
            assert all(f"{f.name}=" in row for f in fields(CLASSES[name].Options)), name
    assert "r_max=8" in flat and "g_layers=0,1" in flat and "train_mask=true" in flat


def miro(*args, **env):
    return subprocess.run([*MIRO, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_shell_completion_is_documented_and_works():
    assert "miro completion" in miro("--help").stdout
    for shell, word in (("bash", "complete -o nosort -F _miro_completion miro"), ("zsh", "compdef"),
                        ("fish", "complete --no-files --command miro")):
        r = miro("completion", shell)
        assert r.returncode == 0 and word in r.stdout and "_MIRO_COMPLETE" in r.stdout, (shell, r.stderr)
    assert miro("completion", "tcsh").returncode == 2
    # what the bash script asks of `miro` on <TAB>: subcommands, then options
    r = miro(_MIRO_COMPLETE="bash_complete", COMP_WORDS="miro sta", COMP_CWORD="1")
    assert r.stdout.split() == ["plain,status"], r.stdout + r.stderr
    r = miro(_MIRO_COMPLETE="bash_complete", COMP_WORDS="miro logs --le", COMP_CWORD="2")
    assert "plain,--level" in r.stdout.split()
    assert miro(_MIRO_COMPLETE="bash_source").stdout == miro("completion", "bash").stdout


SCRIPTS = [[PY, "-m", "miro_runtime.daemon"]] + [[PY, p] for p in sorted(glob.glob(os.path.join(REPO, "examples",
                                                                                                  "*.py")))]


@pytest.mark.parametrize("argv", SCRIPTS, ids=[os.path.basename(a[-1]) for a in SCRIPTS])
def test_mirod_and_the_examples_answer_help_with_no_side_effects(argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MIRO_SOCKET"}
    for flag in ("--help", "-h"):
        r = subprocess.run([*argv, flag], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert r.returncode == 0 and r.stdout.startswith("usage: ") and "%%" not in r.stdout, r.stderr
    assert os.listdir(tmp_path) == [], "--help did something"
