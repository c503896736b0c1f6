"""`python -m miro_runtime.cli`: the `miro` command."""

from miro_runtime.cli.main import main

main(prog_name="miro")
