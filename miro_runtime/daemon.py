"""`mirod`: the long-running daemon. Not built yet: it will wrap ``miro_runtime.Experiment``
behind a control socket (see ../shared/reference/daemon.md). Until then it says so and exits."""

import sys


def main():
    print("mirod: the daemon is not implemented yet; use `miro run` (same engine, in-process)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
