"""Resume many damaged copies of one run directory, each in a forked child running the real CLI
(`miro run --resume --run-dir D --json`), two at a time. Importing torch once and forking keeps a
case at about a second; a child killed by a signal shows up as such. Prints one JSON list.
An optional second argument, a JSON list of commands ("{d}" stands for the case's directory), runs
each command over every case, one command after the other (read-only checks before a resume)."""
import json
import os
import sys

import torch

import miro_runtime.cli.main as cli
import miro_runtime.session.experiment  # noqa: F401
from miro_runtime.engine.streams import split_digits

# pay the one-time costs once, before forking: sklearn's import, torch.optim's lazy compiler imports
split_digits(5, 0)
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


RESUME = ["run", "--resume", "--run-dir", "{d}", "--json"]


def run_case(d, argv=RESUME, tag=""):
    out, err = (os.path.join(d, "..", os.path.basename(d) + tag + ext) for ext in (".out", ".err"))
    pid = os.fork()
    if pid == 0:  # child: the CLI as a user runs it, its output in files
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fo, fe = os.open(out, flags), os.open(err, flags)
        os.dup2(fo, 1)
        os.dup2(fe, 2)
        code = 1
        try:
            cli.main([a.replace("{d}", d) for a in argv], standalone_mode=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an escaped exception: print it as Python would, and say so
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid, out, err


def run_all(cases, argv, tag, results):
    running = {}
    queue = list(cases)
    while queue or running:
        while queue and len(running) < 2:
            d = queue.pop(0)
            pid, out, err = run_case(d, argv, tag)
            running[pid] = (d, out, err)
        pid, status = os.wait()
        d, out, err = running.pop(pid)
        res = {"case": d, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
               "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        with open(out) as fh:
            lines = fh.read().strip().splitlines()
        with open(err) as fh:
            res["stderr"] = fh.read()[-3000:]
        try:
            res["acc_matrix"] = json.loads(lines[-1])["acc_matrix"] if lines else None
        except (ValueError, KeyError, TypeError):
            res["acc_matrix"] = None
        if tag:
            res["cmd"] = argv[0] if argv[0] != "store" else " ".join(argv[:2])
        results.append(res)


def main():
    cases = json.loads(sys.argv[1])
    results = []
    if len(sys.argv) > 2:
        for i, argv in enumerate(json.loads(sys.argv[2])):
            run_all(cases, argv, f".{i}", results)
    else:
        run_all(cases, RESUME, "", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
