"""The GPU path on a machine with an NVIDIA GPU (run it there by hand; CI and the 2-core box have none):

1. records NVML's answers (power in mW, the total-energy counter in mJ, every 50 ms) over an idle
   third, a bf16 matrix-product load and an idle third, into a fixture the tests replay
   (tests/fixtures/nvml_<gpu>.json: the meters' arithmetic checked on real readings);
2. compares the two NVML meters of profilers/nvml.py over one window of that load: the energy
   counter against integrated power polling;
3. runs ``miro run --device cuda`` on the embedded digits for er and carm with ``--energy-source
   nvml`` and ``auto``: training on the GPU end to end, the energy measured (NVML) and said so.

``--out DIR`` is where the fixture and the result go. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEASURES = ["profilers/nvml.py", "profilers/measurement.py", "miro_runtime/engine/strategies/"]
NEEDS_CUDA = True  # `make bench` on a machine without CUDA keeps the last result (run_all.py)


def _load(stop: threading.Event, started: threading.Event):
    """bf16 8192^3 products back to back until ``stop``: the GPU near its power limit."""
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    started.set()
    while not stop.is_set():
        a @ a
        torch.cuda.synchronize()


def record(seconds: float) -> dict:
    """NVML's answers every 50 ms: idle, loaded, idle (a third each)."""
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(h)
    info = {"gpu": name if isinstance(name, str) else name.decode(),
            "driver": str(pynvml.nvmlSystemGetDriverVersion()),
            "power_limit_mw": pynvml.nvmlDeviceGetPowerManagementLimit(h)}
    stop, started = threading.Event(), threading.Event()
    load = threading.Thread(target=_load, args=(stop, started), daemon=True)
    samples, t0 = [], time.monotonic()
    while (t := time.monotonic() - t0) < seconds:
        if t > seconds / 3 and not load.is_alive() and not stop.is_set():
            load.start()
            started.wait(30)
        if t > 2 * seconds / 3:
            stop.set()
        samples.append({"t_s": round(time.monotonic() - t0, 4), "power_mw": pynvml.nvmlDeviceGetPowerUsage(h),
                        "energy_mj": pynvml.nvmlDeviceGetTotalEnergyConsumption(h)})
        time.sleep(0.05)
    stop.set()
    load.join(60)
    counter_j = (samples[-1]["energy_mj"] - samples[0]["energy_mj"]) / 1e3
    polled_j = sum((b["t_s"] - a["t_s"]) * (a["power_mw"] + b["power_mw"]) / 2e3 for a, b in zip(samples, samples[1:]))
    return {**info, "period_s": 0.05, "samples": samples, "counter_j": counter_j, "trapezoid_j": polled_j}


def meters(seconds: float) -> dict:
    """profilers/nvml.py's two meters over one window of the load."""
    sys.path.insert(0, ROOT)
    from miro_runtime.profilers.nvml import NvmlMeter, NvmlPowerMeter
    counter, polled = NvmlMeter(0), NvmlPowerMeter(0, hz=20.0)
    stop, started = threading.Event(), threading.Event()
    load = threading.Thread(target=_load, args=(stop, started), daemon=True)
    load.start()
    started.wait(30)
    counter.begin_window("w")
    polled.begin_window("w")
    time.sleep(seconds)
    a, b = counter.end_window("w"), polled.end_window("w")
    stop.set()
    load.join(60)
    polled.close()
    return {"seconds": a.seconds, "counter_j": a.joules, "polled_j": b.joules,
            "polled_over_counter": b.joules / a.joules,
            "provenance": [a.summary(), b.summary()]}


def runs() -> list:
    """``miro run --device cuda`` end to end: accuracy, steps, energy and what measured it."""
    import tempfile
    out, rows = tempfile.mkdtemp(prefix="miro-gpu-"), []
    for strategy, source, more in (("er", "nvml", []), ("er", "auto", []), ("carm", "nvml", []), ("der", "nvml", []),
                                   ("carm", "nvml", ["--miro"]), ("carm", "nvml", ["--energy-budget", "60"])):
        run_dir = os.path.join(out, f"run-{strategy}-{source}-{len(rows)}")
        t0 = time.time()
        argv = ["run", "--device", "cuda", "--strategy", strategy, "--epochs", "2", "--energy-source", source,
                "--run-dir", run_dir, "--json", *more]
        r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", *argv], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
        row = {"strategy": strategy, "energy_source": source, "flags": more, "exit": r.returncode,
               "wall_s": time.time() - t0}
        if r.returncode == 0:
            s = json.loads(r.stdout.strip().splitlines()[-1])
            row.update(final_avg_acc=s["final_avg_acc"], steps=s["steps"], energy_j=s["energy_j"],
                       energy_provenance=s["energy_provenance"], device=s["config"]["device"],
                       guard_trips=sum(bool((t.get("budget") or {}).get("guard_tripped")) for t in s["per_task"]))
        else:
            row["stderr"] = r.stderr[-2000:]
        rows.append(row)
    return rows


def render(res: dict) -> str:
    """The BENCHMARKS.md section, from a result."""
    rec, m = res["recording"], res["meters"]
    out = [f"{res['gpu']} (driver {res['driver']}, torch {res['torch']}), "
           f"{res.get('run', {}).get('machine', 'a machine with an NVIDIA GPU')}. Every energy figure here is "
           "measured by NVML (its provenance is in each row). The recording's 106 samples are the test fixture "
           "`tests/fixtures/nvml_h200.json`.", "",
           f"- NVML energy counter over the recording (idle, bf16 load, idle; {rec['n']} samples every 50 ms): "
           f"{rec['counter_j']:.0f} J; the reported power integrated over the same samples: {rec['trapezoid_j']:.0f} J "
           f"({rec['trapezoid_j'] / rec['counter_j']:.3f}x); peak reported power {rec['max_power_mw'] / 1e3:.0f} W of "
           f"a {rec['power_limit_mw'] / 1e3:.0f} W limit.",
           f"- The two meters of profilers/nvml.py over one {m['seconds']:.1f} s window opened as the load began: "
           f"counter {m['counter_j']:.0f} J, power polled at 20 Hz {m['polled_j']:.0f} J "
           f"({m['polled_over_counter']:.2f}x). The reported power is a one-second average that climbs for about a "
           "second after the load starts while the counter already counts at the limit: a short window polled "
           "misses that ramp, which is why `nvml_meter` takes the counter wherever the GPU has one.", "",
           "`miro run --device cuda --epochs 2` on the embedded digits:", "",
           "| strategy | flags | energy source | exit | final avg acc | steps | energy (J) | guard trips | wall (s) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["runs"]:
        ok = r["exit"] == 0
        flags = " ".join(r.get("flags") or []) or "-"
        out.append(f"| {r['strategy']} | {flags} | {r['energy_source']} | {r['exit']} | "
                   + (f"{r['final_avg_acc']:.3f} | {r['steps']} | {r['energy_j']:.0f} | {r.get('guard_trips', 0)} | "
                      if ok else "- | - | - | - | ") + f"{r['wall_s']:.0f} |")
    prov = sorted({r["energy_provenance"] for r in res["runs"] if r["exit"] == 0})
    out += ["", "Energy provenance of the runs: " + "; ".join(prov) + ". `auto` found NVML and no RAPL on that "
            "machine. One seed each: the accuracies say the path works, not which strategy is better. The "
            "first call's carm runs failed (the swap worker handed GPU logits to numpy); the rows are from the "
            "call after the fix." if res.get("run", {}).get("note") else ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where the fixture and result go")
    ap.add_argument("--seconds", type=float, default=6.0, help="the recording's length (a third loaded)")
    ap.add_argument("--runs-only", action="store_true", help="only the `miro run --device cuda` part")
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here; run it on a machine with an NVIDIA GPU")
    os.makedirs(a.out, exist_ok=True)
    if a.runs_only:
        print(json.dumps({"runs": runs()}))
        return
    rec = record(a.seconds)
    tag = rec["gpu"].replace("NVIDIA ", "").replace(" ", "_").lower()
    with open(os.path.join(a.out, f"nvml_{tag}.json"), "w") as fh:
        json.dump(rec, fh, indent=0)
    res = {"gpu": rec["gpu"], "driver": rec["driver"], "torch": torch.__version__,
           "recording": {k: rec[k] for k in ("counter_j", "trapezoid_j", "power_limit_mw")} |
           {"n": len(rec["samples"]), "max_power_mw": max(s["power_mw"] for s in rec["samples"])},
           "meters": meters(3.0), "runs": runs()}
    with open(os.path.join(a.out, "gpu.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
