"""`make bench`: run every benchmark in its own process, keep each JSON result in bench/results/,
and write BENCHMARKS.md from them. ``--only NAME`` reruns one and re-renders with the others kept.

Each result records the commit it ran on, whether the working tree had uncommitted changes, and the
bench's wall time; BENCHMARKS.md shows them beside each section and marks a section **stale** when
the code it measures (its bench file, bench/common.py and the packages in the bench's ``MEASURES``)
changed between that commit and HEAD, or had uncommitted changes when it ran."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCHES = [("storage", "Tiered store (`bench/storage.py`)"),
           ("cl", "Continual learning with CarM (`bench/cl.py`)"),
           ("latent", "Real data: split Fashion-MNIST, the SmallCNN and EfficientNet-Lite0 with latent replay "
                      "(`bench/latent.py`)"),
           ("miro", "Miro: energy-aware reconfiguration (`bench/miro.py`)"),
           ("miro_v2", "Miro v2: a budget, changing conditions, adapting (`bench/miro_v2.py`)"),
           ("daemon", "mirod: socket ingest while training, latency, CLI cost (`bench/daemon.py`)"),
           ("rep", "REP: prompt learning made cheap (`bench/rep.py`)"),
           ("rep_fmnist", "REP on a real dataset: split Fashion-MNIST (`bench/rep_fmnist.py`)"),
           ("kv", "KV-cache path on the tiers (`bench/kv.py`)"),
           ("layers", "Control commands before and after the layers split (`bench/layers.py`)"),
           ("fleet", "A fleet of boards: federated continual learning on Flower (`bench/fleet.py`)"),
           ("gpu", "The GPU path: CUDA training and NVML energy on an NVIDIA H200 (`bench/gpu.py`)")]
# what a bench writes besides its result: not a change to the code it measures
OUTPUTS = ("bench/results/", "BENCHMARKS.md", "miro_accuracy_vs_energy.png", "bench/miro_v2_budget.png",
           "kv_passkey.png")


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def head() -> str:
    r = git("rev-parse", "--short", "HEAD")
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def dirty_files() -> list:
    """Uncommitted changes in the tree, the benches' own outputs left out."""
    r = git("status", "--porcelain")
    files = [line[3:].split(" -> ")[-1] for line in r.stdout.splitlines() if line.strip()]
    return [f for f in files if not f.startswith(OUTPUTS)]


def measured_paths(name: str) -> list:
    mod = importlib.import_module(name)
    return [f"bench/{name}.py", "bench/common.py", *mod.MEASURES]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", help="run only these benches (others re-rendered from results)")
    args = ap.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    sys.path.insert(0, HERE)
    for name, _ in BENCHES:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")) or (args.only and name not in args.only):
            continue
        if getattr(importlib.import_module(name), "NEEDS_CUDA", False) and not _cuda():
            print(f"== bench/{name}.py: no CUDA here; its last result is kept", file=sys.stderr, flush=True)
            continue
        print(f"== bench/{name}.py", file=sys.stderr, flush=True)
        commit, dirty = head(), dirty_files()  # before the run: what the figures were measured on
        t0 = time.time()
        r = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")], stdout=subprocess.PIPE, text=True,
                           cwd=ROOT)
        if r.returncode:
            sys.exit(f"bench/{name}.py failed with exit code {r.returncode}")
        result = json.loads(r.stdout.strip().splitlines()[-1])
        result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        result["run"] = {"commit": commit, "dirty": bool(dirty), "dirty_files": dirty,
                         "wall_s": round(time.time() - t0, 1)}
        with open(os.path.join(HERE, "results", f"{name}.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        log_run(name, result)
        print(f"   done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    write_markdown()


RUNS = os.path.join(HERE, "results", "runs.jsonl")  # one line per bench run: its verdicts, kept when it is rerun


def verdicts(name: str, res: dict) -> list:
    """The lines of a bench's section that judge a target (``**met**`` / ``**NOT met**``), as rendered."""
    text = importlib.import_module(name).render(res)
    lines = text if isinstance(text, list) else text.splitlines()
    return [ln.lstrip("- ").strip() for ln in lines if "**met**" in ln or "**NOT met**" in ln]


def log_run(name: str, res: dict) -> None:
    """Append this run's verdicts to the run log, so that a rerun does not erase what an earlier run found."""
    entry = {"bench": name, "date": res.get("date"), "commit": (res.get("run") or {}).get("commit"),
             "verdicts": verdicts(name, res)}
    with open(RUNS, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _verdict(line: str) -> tuple:
    """'target **0.66x** (>= 0.8x: **NOT met**) (figures). More.' -> (the target with its figures masked, the
    verdict, the line up to the verdict and the figures in brackets right after it)."""
    marks = [(line.find(m), m) for m in ("**met**", "**NOT met**") if m in line]
    at, mark = min(marks)
    label = re.sub(r"[\d.,+-]+", "#", re.sub(r"\*\*[^*]*\*\*", "", line[:at]))
    end = at + len(mark)
    if line[end:].startswith(" ("):  # the figures that go with the verdict
        depth, i = 0, end + 1
        for i in range(end + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[i], 0)
            if depth == 0:
                break
        end = i + 1
    return label, mark.strip("*"), line[:end]


def earlier_runs(name: str, res: dict) -> str:
    """Earlier runs of this bench (the run log) whose verdicts differ from this run's, each with its figures:
    every run made for a figure is reported, not only the last."""
    if not os.path.exists(RUNS):
        return ""
    with open(RUNS) as fh:
        log = [json.loads(line) for line in fh if line.strip()]
    now = {label: verdict for label, verdict, _ in map(_verdict, verdicts(name, res))}
    this = (res.get("date"), (res.get("run") or {}).get("commit"))
    out = []
    for e in log:
        if e["bench"] != name or (e["date"], e["commit"]) == this:
            continue
        differ = [shown for label, verdict, shown in map(_verdict, e["verdicts"])
                  if label in now and verdict != now[label]]
        if differ:
            since = git("diff", "--name-only", e["commit"], this[1], "--", *measured_paths(name)).stdout.split() \
                if e["commit"] and this[1] else []
            out.append(f"- run {e['date']} on commit {e['commit']}"
                       + (f" (measured code changed before the run above: {', '.join(since[:5])})" if since else "")
                       + ": " + "; ".join(differ))
    if not out:
        return ""
    return "\n".join(["Earlier runs of this bench (`bench/results/runs.jsonl`) whose verdicts differ from the run "
                      "above, as they came out:", "", *out])


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def provenance(name: str, res: dict, now: str) -> str:
    """'Run <date> on commit <sha> (<N> s).' and, where the figures may no longer hold, why."""
    run = res.get("run")
    if not run and res.get("commit"):  # a bench that kept its own commit (layers.py): "<sha>[+uncommitted]"
        sha, _, extra = res["commit"].partition("+")
        run = {"commit": sha, "dirty_files": ["(uncommitted changes, files not recorded)"] if extra else []}
    if not run:
        return (f"Run {res.get('date', '?')}, commit not recorded. **Stale**: run before results recorded their "
                "commit, so nothing shows it measured the code at HEAD.")
    sha = run["commit"]
    text = f"Run {res.get('date', '?')} on commit {sha}" + (f" ({run['wall_s']:.0f} s)." if "wall_s" in run else ".")
    paths = measured_paths(name)
    touched = [f for f in run.get("dirty_files", []) if f.startswith("(") or any(
        f == p or f.startswith(p.rstrip("/") + "/") for p in paths)]
    if touched:
        return text + (" **Stale**: it ran with uncommitted changes to the code it measures ("
                       + ", ".join(touched[:5]) + (", ..." if len(touched) > 5 else "") + ").")
    if sha == now:
        return text
    diff = git("diff", "--name-only", sha, "HEAD", "--", *paths)
    if diff.returncode:
        return text + f" **Stale**: HEAD is {now}, and commit {sha} cannot be compared with it (not found)."
    changed = diff.stdout.split()
    if not changed:
        return text + f" HEAD is {now}; the code this bench measures is unchanged since."
    return text + (f" **Stale**: HEAD is {now}, and the code this bench measures changed since ("
                   + ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "") + ").")


def write_markdown():
    parts = ["# Benchmarks", "",
             "Written by `make bench` (`bench/run_all.py`) from the JSON results in `bench/results/`; every bench",
             "prints one JSON object as its last line and can run alone (`python bench/<name>.py`). Beside each",
             "section: the commit it ran on and its wall time; a section is marked **stale** where the code it",
             "measures changed after that commit. Every run's verdicts go to `bench/results/runs.jsonl`; where an",
             "earlier run of a bench judged a target otherwise, the section says so.", ""]
    machine = None
    now = head()
    for name, title in BENCHES:
        path = os.path.join(HERE, "results", f"{name}.json")
        if not os.path.exists(path):
            parts += [f"## {title}", "", "_Not run yet._", ""]
            continue
        with open(path) as fh:
            res = json.load(fh)
        machine = machine or res.get("machine")
        mod = importlib.import_module(name)
        note = provenance(name, res, now)
        if getattr(mod, "NEEDS_CUDA", False) and "**Stale**" in note and not _cuda():
            note += " Not rerun: the machine that ran `make bench` last has no CUDA; a rerun needs a GPU."
        parts += [f"## {title}", "", note, "", mod.render(res), ""]
        earlier = earlier_runs(name, res)
        if earlier:
            parts += [earlier, ""]
    if machine:
        parts[7:7] = ["Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".", ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as fh:
        fh.write("\n".join(parts))
    print("wrote BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
