"""Daemon benchmark: sustained socket ingest while mirod trains, against the flash tier's direct
ingest rate (the same samples, batches and sync mode, in the same run); status and predict latency
under that load; `miro status` / `miro --help` wall time and peak RSS against the import path every
command paid before the daemon existed (torch + the engine).

28x28 uint8 samples, 1024 per request (about 1 MiB of base64 JSON), one client, plus a second run
with two clients. While ingest runs the daemon trains an earlier task (epoch mode, SmallCNN, one
torch thread); a status loop and a predict loop (8 images) run beside it. The 20k samples/s target
is judged on the one-client runs, every run of them (the worst must reach it). Small ``--runs``,
``--seconds`` and ``--direct-n`` are for checking the code runs, not for figures.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, median, scratch  # noqa: E402

from miro_runtime.wire.client import Client, DaemonError  # noqa: E402
from miro_runtime.cli.demo import start_daemon  # noqa: E402
from miro_runtime.storage import FlashTier, SampleSpec  # noqa: E402

SHAPE = (1, 28, 28)
BATCH = 1024
TARGET = 20000  # socket ingest samples/s while training, with one client
# the code these figures measure (run_all.py marks the section stale when it changes)
MEASURES = ("miro_runtime/daemon", "miro_runtime/wire", "miro_runtime/cli", "miro_runtime/session",
            "miro_runtime/engine", "miro_runtime/config.py", "miro_runtime/choices.py", "miro_runtime/log.py",
            "storage")


def data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(0, 10, n)


def direct_rate(root, n, seed) -> float:
    """The flash tier alone: put_batch of the same batches, fsynced per batch (the daemon's mode)."""
    x, y = data(n, seed)
    f = FlashTier(os.path.join(root, f"direct{seed}"))
    f.declare_samples("samples", SampleSpec(shape=SHAPE, num_classes=10))
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        f.put_batch("samples", list(x[i:i + BATCH]), y[i:i + BATCH], np.zeros(min(BATCH, n - i), int))
    dt = time.perf_counter() - t0
    f.close()
    return n / dt


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else None


def socket_run(root, seed, seconds, clients) -> dict:
    state = os.path.join(root, f"d{seed}-{clients}")
    proc, sock = start_daemon(state, "learning.online=false", "learning.epochs=100000", "learning.strategy=carm",
                              "learning.memory=200")
    try:
        x0, y0 = data(2048, seed + 100)
        with Client(sock) as c:
            c.ingest(0, "train", x0, y0)
            c.ingest(0, "test", x0[:256], y0[:256])
            c.call("task_end", task=0)  # trains "forever": the load ingest competes with
            t0 = time.monotonic()
            while "training" not in c.call("status")["state"] and time.monotonic() - t0 < 60:
                time.sleep(0.05)
            while time.monotonic() - t0 < 60:  # the first predict snapshot (every 50 steps)
                try:
                    c.predict(x0[:8], k=3)
                    break
                except DaemonError:
                    time.sleep(0.05)
            s0, t0 = c.call("status")["steps"], time.perf_counter()
            time.sleep(3.0)  # the trainer alone: its step rate without ingest load
            steps0 = c.call("status")["steps"]
            alone = (steps0 - s0) / (time.perf_counter() - t0)
        xs, ys = data(BATCH * 64, seed)
        payloads = [{"task": 1, "split": "train", "dtype": "uint8", "shape": [BATCH, *SHAPE],
                     "labels": ys[i:i + BATCH].tolist(), "data": base64.b64encode(xs[i:i + BATCH].tobytes()).decode()}
                    for i in range(0, len(ys), BATCH)]
        stop = threading.Event()
        acked = [0] * clients
        lat = {"status": [], "predict": [], "ingest": []}
        qx = np.ascontiguousarray(x0[:8])

        def ingester(k):
            with Client(sock) as c:
                j = k
                while not stop.is_set():
                    t = time.perf_counter()
                    r = c.call("ingest", **payloads[j % len(payloads)])
                    lat["ingest"].append(time.perf_counter() - t)
                    acked[k] += r["acked"]
                    j += clients

        def poller(kind):
            with Client(sock) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    c.call("status") if kind == "status" else c.predict(qx, k=3)
                    lat[kind].append(time.perf_counter() - t)
                    time.sleep(0.02)

        threads = [threading.Thread(target=ingester, args=(k,)) for k in range(clients)]
        threads += [threading.Thread(target=poller, args=(k,)) for k in ("status", "predict")]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        dt = time.perf_counter() - t0
        with Client(sock) as c:
            st = c.call("status")
        # idle latency on the same daemon, ingest stopped (training still running)
        idle = {"status": [], "predict": []}
        with Client(sock) as c:
            for _ in range(50):
                t = time.perf_counter()
                c.call("status")
                idle["status"].append(time.perf_counter() - t)
                t = time.perf_counter()
                c.predict(qx, k=3)
                idle["predict"].append(time.perf_counter() - t)
        return {"samples_per_s": sum(acked) / dt, "acked": sum(acked), "seconds": dt,
                "train_steps_during": st["steps"] - steps0, "state": st["state"],
                "train_steps_per_s_loaded": (st["steps"] - steps0) / dt, "train_steps_per_s_alone": alone,
                "status_ms": {"p50": pct(lat["status"], 50), "p99": pct(lat["status"], 99), "n": len(lat["status"])},
                "predict_ms": {"p50": pct(lat["predict"], 50), "p99": pct(lat["predict"], 99),
                               "n": len(lat["predict"])},
                "ingest_request_ms": {"p50": pct(lat["ingest"], 50), "p99": pct(lat["ingest"], 99)},
                "idle_status_ms_p50": pct(idle["status"], 50), "idle_predict_ms_p50": pct(idle["predict"], 50)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


LAUNCHER = """
import json, resource, statistics, subprocess, sys, time
argv, runs = json.loads(sys.argv[1]), int(sys.argv[2])
walls, rss = [], []
for _ in range(runs):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    walls.append(time.perf_counter() - t)
    rss.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(json.dumps({"wall_s": statistics.median(walls), "peak_rss_mb": max(rss), "runs": runs}))
"""


def measure_cmd(argv, runs=5) -> dict:
    """Wall time (median) and peak RSS of ``runs`` fresh processes, started from a small launcher:
    a child forked from this bench (torch loaded, ~900 MB) would count the bench's pages in its
    ru_maxrss until it execs."""
    import json
    out = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, json.dumps(argv), str(runs)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def cli_costs(root) -> dict:
    bindir = os.path.dirname(sys.executable)
    miro = [os.path.join(bindir, "miro")] if os.path.exists(os.path.join(bindir, "miro")) else \
        [sys.executable, "-m", "miro_runtime.cli"]
    proc, sock = start_daemon(os.path.join(root, "cli"))
    try:
        out = {"miro_status": measure_cmd(miro + ["--socket", sock, "status", "--json"]),
               "miro_help": measure_cmd(miro + ["--help"]),
               # what every command paid before: the package imported torch and the engine
               "old_import_path": measure_cmd([sys.executable, "-c", "import torch, torchvision, "
                                               "miro_runtime.session.experiment, miro_runtime.cli.main"])}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--direct-n", type=int, default=40960)
    a = ap.parse_args()
    root = scratch("miro-bench-daemon-")
    seeds = list(range(a.runs))
    direct = [direct_rate(root, a.direct_n, s) for s in seeds]
    one = [socket_run(root, s, a.seconds, 1) for s in seeds]
    two = [socket_run(root, s, a.seconds, 2) for s in seeds]
    res = {"bench": "daemon", "machine": machine(), "seeds": seeds, "seconds": a.seconds, "batch": BATCH,
           "shape": list(SHAPE), "direct_samples_per_s": median(direct), "direct_runs": direct,
           "socket": {"1": one, "2": two}, "cli": cli_costs(root)}
    for k, runs in (("1", one), ("2", two)):
        res[f"socket_samples_per_s_{k}"] = median([r["samples_per_s"] for r in runs])
        res[f"fraction_of_direct_{k}"] = res[f"socket_samples_per_s_{k}"] / res["direct_samples_per_s"]
        for m in ("status_ms", "predict_ms"):
            res[f"{m}_p50_{k}"] = median([r[m]["p50"] for r in runs])
            res[f"{m}_p99_{k}"] = median([r[m]["p99"] for r in runs])
    # the target says one client: judged on those runs, every one of them (the worst), not the best setup
    res["target_runs_1"] = [r["samples_per_s"] for r in one]
    res["target_20k_met"] = min(res["target_runs_1"]) >= TARGET
    emit(res)


def render(r) -> str:
    c = r["cli"]
    lines = [f"28x28 uint8 samples, {r['batch']} per request (base64 in length-prefixed JSON), {r['seconds']:.0f} s "
             f"per run, median of {len(r['seeds'])} runs (seeds {r['seeds']}). While ingest runs the daemon trains "
             "an earlier task (carm, SmallCNN, epoch mode, one torch thread); a status loop and a predict loop "
             "(8 images, top-3) run beside it. Baseline: the flash tier's own `put_batch` of the same batches, "
             "fsynced per batch as the daemon's are, in the same run.", "",
             "| clients | socket ingest samples/s | of direct flash ingest | train steps/s loaded (alone) | "
             "status p50 / p99 ms | predict p50 / p99 ms |", "|---:|---:|---:|---:|---:|---:|"]
    for k in ("1", "2"):
        loaded = median([x.get("train_steps_per_s_loaded", 0) for x in r["socket"][k]])
        alone = median([x.get("train_steps_per_s_alone", 0) for x in r["socket"][k]])
        lines.append(f"| {k} | **{r[f'socket_samples_per_s_{k}']:,.0f}** | {100 * r[f'fraction_of_direct_{k}']:.0f}% | "
                     f"{loaded:.1f} ({alone:.1f}) | {r[f'status_ms_p50_{k}']:.1f} / {r[f'status_ms_p99_{k}']:.1f} | "
                     f"{r[f'predict_ms_p50_{k}']:.1f} / {r[f'predict_ms_p99_{k}']:.1f} |")
    idle_s = median([x["idle_status_ms_p50"] for x in r["socket"]["1"]])
    idle_p = median([x["idle_predict_ms_p50"] for x in r["socket"]["1"]])
    runs1 = [x["samples_per_s"] for x in r["socket"]["1"]]
    runs2 = [x["samples_per_s"] for x in r["socket"]["2"]]
    lines += ["", "- Every run, samples/s: one client " + ", ".join(f"{v:,.0f}" for v in runs1)
              + f" (spread {max(runs1) - min(runs1):,.0f}); two clients " + ", ".join(f"{v:,.0f}" for v in runs2)
              + f" (spread {max(runs2) - min(runs2):,.0f}). Direct flash-tier ingest (baseline): "
              f"{r['direct_samples_per_s']:,.0f} samples/s. Target socket ingest >= {TARGET // 1000}k samples/s "
              f"while training, with one client, every run (worst {min(runs1):,.0f}): "
              f"**{'met' if min(runs1) >= TARGET else 'NOT met'}**.",
              f"- Without ingest load (training still running): status p50 {idle_s:.1f} ms, "
              f"predict p50 {idle_p:.1f} ms.",
              f"- `miro status`: **{c['miro_status']['wall_s']:.2f} s, {c['miro_status']['peak_rss_mb']:.0f} MB** peak "
              f"RSS; `miro --help`: {c['miro_help']['wall_s']:.2f} s, {c['miro_help']['peak_rss_mb']:.0f} MB. The "
              f"import path every command paid before the daemon (torch + the engine), measured in the same run: "
              f"{c['old_import_path']['wall_s']:.2f} s, {c['old_import_path']['peak_rss_mb']:.0f} MB. "
              f"Median of {c['miro_status']['runs']} fresh "
              f"processes each, started from a small launcher (its RUSAGE_CHILDREN ru_maxrss).",
              "- Where we lose: every request is decoded (base64, JSON) and validated on the daemon's threads, "
              f"which share the GIL and the {r['machine']['cores']} cores with the trainer: the socket path "
              "reaches the fraction of the direct rate above, training slows to the loaded step rate while ingest "
              "runs flat out, and status/predict tails grow under that load (p99)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
