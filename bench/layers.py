"""What the layers split (one subpackage per layer) costs a control command: `miro status --json`
(against a live mirod) and `miro --help`, from the tree before the split (BASE) and from this tree,
in the same run. Each tree is staged as it installs (storage/, profilers/, kv/ inside miro_runtime/)
and run with the same interpreter and the same launcher; the runs of the two trees alternate, so a
busy moment hits both. Wall time and peak RSS of each fresh process; every run is reported.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, scratch  # noqa: E402

from miro_runtime.cli.demo import start_daemon  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "2d3f791"  # the last commit before the split: miro_runtime/ one flat folder, cli.py, daemon.py
LINKED = ("storage", "profilers", "kv")
# the code these figures measure (run_all.py marks the section stale when it changes)
MEASURES = ("miro_runtime/__init__.py", "miro_runtime/cli", "miro_runtime/wire", "miro_runtime/choices.py",
            "miro_runtime/config.py", "miro_runtime/daemon", "setup.cfg", "pyproject.toml")

ONE_RUN = """
import json, resource, subprocess, sys, time
argv = json.loads(sys.argv[1])
t = time.perf_counter()
subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def commit() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return rev.strip() + ("+uncommitted" if dirty else "")


def stage(rev: str | None, dest: str) -> str:
    """The tree at ``rev`` (None: the working tree) laid out as a wheel installs it."""
    src = os.path.join(dest, "src")
    if rev is None:
        shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build",
                                                                                 "__pycache__", "*.egg-info"))
    else:
        blob = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(src, filter="tar")
    pkg = os.path.join(dest, "site", "miro_runtime")
    shutil.copytree(os.path.join(src, "miro_runtime"), pkg, symlinks=True)
    for name in LINKED:
        link = os.path.join(pkg, name)
        if os.path.islink(link):
            os.unlink(link)
        shutil.copytree(os.path.join(src, name), link)
    return os.path.join(dest, "site")


def entry(site: str) -> str:
    """The `miro` console script's module in that tree (cli.py before the split, cli/main.py after)."""
    mod = "miro_runtime.cli.main" if os.path.isdir(os.path.join(site, "miro_runtime", "cli")) else "miro_runtime.cli"
    return f"import sys; sys.path.insert(0, {site!r}); from {mod} import main; sys.argv[0] = 'miro'; main()"


def one(argv) -> dict:
    out = subprocess.run([sys.executable, "-S", "-c", ONE_RUN, json.dumps(argv)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15, help="fresh processes per tree and command")
    args = ap.parse_args()
    root = scratch("miro-bench-layers-")
    trees = {"before": stage(BASE, os.path.join(root, "before")), "after": stage(None, os.path.join(root, "after"))}
    proc, sock = start_daemon(os.path.join(root, "state"))
    cmds = {"status": ["--socket", sock, "status", "--json"], "help": ["--help"]}
    runs = {t: {c: [] for c in cmds} for t in trees}
    try:
        for t in trees:  # one warm-up each: the first process pays for a cold page cache
            one([sys.executable, "-c", entry(trees[t]), *cmds["status"]])
        for _ in range(args.runs):
            for c, argv in cmds.items():
                for t, site in trees.items():
                    runs[t][c].append(one([sys.executable, "-c", entry(site), *argv]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    out = {"machine": machine(), "commit": commit(), "base": BASE, "runs_per_cell": args.runs, "runs": runs}
    for c in cmds:
        for key in ("wall_s", "peak_rss_mb"):
            b = statistics.median(r[key] for r in runs["before"][c])
            a = statistics.median(r[key] for r in runs["after"][c])
            out[f"{c}_{key}_before"], out[f"{c}_{key}_after"], out[f"{c}_{key}_ratio"] = b, a, a / b
    out["within_10pct"] = all(out[f"status_{k}_ratio"] <= 1.10 for k in ("wall_s", "peak_rss_mb"))
    emit(out)


def render(r: dict) -> str:
    def spread(c, t, key, scale=1.0):
        xs = [x[key] * scale for x in r["runs"][t][c]]
        return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"
    rows = ["| command | tree | wall ms, median (min-max) | peak RSS MB, median (min-max) |", "|---|---|---:|---:|"]
    for c, label in (("status", "`miro status --json`"), ("help", "`miro --help`")):
        for t in ("before", "after"):
            rows.append(f"| {label} | {t} | {spread(c, t, 'wall_s', 1e3)} | {spread(c, t, 'peak_rss_mb')} |")
    verdict = "within" if r["within_10pct"] else "NOT within"
    return "\n".join([
        f"Commit {r['commit']} against {r['base']} (the flat package before the split), {r['runs_per_cell']} fresh "
        "processes per tree and command, alternating; each tree staged as a wheel installs it and run by the same "
        "interpreter against one live mirod.", "", *rows, "",
        f"- `miro status`: after/before {r['status_wall_s_ratio']:.2f}x wall time, "
        f"{r['status_peak_rss_mb_ratio']:.2f}x peak RSS -- {verdict} the 10% the layers issue allows. "
        f"`miro --help`: {r['help_wall_s_ratio']:.2f}x wall, "
        f"{r['help_peak_rss_mb_ratio']:.2f}x RSS (its options are now built from the run configuration's fields)."])


if __name__ == "__main__":
    main()
