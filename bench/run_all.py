"""`make bench`: run every benchmark in its own process, keep each JSON result in bench/results/,
and write BENCHMARKS.md from them. ``--only NAME`` reruns one and re-renders with the others kept."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCHES = [("storage", "Tiered store (`bench/storage.py`)"),
           ("cl", "Continual learning with CarM (`bench/cl.py`)"),
           ("miro", "Miro: energy-aware reconfiguration (`bench/miro.py`)"),
           ("daemon", "mirod: socket ingest while training, latency, CLI cost (`bench/daemon.py`)"),
           ("rep", "REP: prompt learning made cheap (`bench/rep.py`)"),
           ("kv", "KV-cache path on the tiers (`bench/kv.py`)"),
           ("layers", "Control commands before and after the layers split (`bench/layers.py`)")]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", help="run only these benches (others re-rendered from results)")
    args = ap.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    sys.path.insert(0, HERE)
    for name, _ in BENCHES:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")) or (args.only and name not in args.only):
            continue
        print(f"== bench/{name}.py", file=sys.stderr, flush=True)
        t0 = time.time()
        r = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")], stdout=subprocess.PIPE, text=True,
                           cwd=ROOT)
        if r.returncode:
            sys.exit(f"bench/{name}.py failed with exit code {r.returncode}")
        result = json.loads(r.stdout.strip().splitlines()[-1])
        result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(os.path.join(HERE, "results", f"{name}.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"   done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    write_markdown()


def write_markdown():
    parts = ["# Benchmarks", "",
             "Written by `make bench` (`bench/run_all.py`) from the JSON results in `bench/results/`; every bench",
             "prints one JSON object as its last line and can run alone (`python bench/<name>.py`).", ""]
    machine = None
    for name, title in BENCHES:
        path = os.path.join(HERE, "results", f"{name}.json")
        if not os.path.exists(path):
            parts += [f"## {title}", "", "_Not run yet._", ""]
            continue
        with open(path) as fh:
            res = json.load(fh)
        machine = machine or res.get("machine")
        mod = importlib.import_module(name)
        parts += [f"## {title}", "", f"Run {res.get('date', '?')}.", "", mod.render(res), ""]
    if machine:
        parts[5:5] = ["Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".", ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as fh:
        fh.write("\n".join(parts))
    print("wrote BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
