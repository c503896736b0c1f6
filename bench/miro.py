"""Miro benchmark: accuracy per joule of the Miro controller (profiling included) against every
static configuration of the same grid run to completion, on split-digits and a synthetic stream.
Writes the accuracy-vs-joules plot next to BENCHMARKS.md. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, scratch  # noqa: E402

from miro_runtime import RunConfig, run  # noqa: E402
from miro_runtime.control.miro import default_grid  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT = "miro_accuracy_vs_energy.png"
STREAMS = {"split-digits": {"stream": "split-digits"},
           "synthetic": {"stream": "synthetic", "model": "cnn",
                         "synthetic": {"shape": [1, 16, 16], "num_classes": 10, "per_class": 200}}}


def one(sk, seed, root, tag, **kw):
    cfg = RunConfig(**sk, strategy="carm", seed=seed, checkpoint_every=0, run_dir=os.path.join(root, tag), **kw)
    s = run(cfg)
    return {"acc": s["final_avg_acc"], "energy_j": s["energy_j"], "provenance": s["energy_provenance"],
            "profiling_energy_j": s.get("profiling_energy_j"),
            "decisions": [d["winner"] for d in s.get("miro_decisions", []) if not d.get("mid_task")],
            # rounds after task 0 that ran a profile (the rest: the cap fitted fewer than two), reactions
            "later_rounds_profiled": sum(any(not c["from_window"] for c in d["candidates"])
                                         for d in s.get("miro_decisions", [])
                                         if d["task"] > 0 and not d.get("mid_task")),
            "reactions": sum(bool(d.get("mid_task")) for d in s.get("miro_decisions", []))}


def agg(runs):
    acc = np.array([r["acc"] for r in runs])
    j = np.array([r["energy_j"] for r in runs])
    return {"acc": float(acc.mean()), "acc_std": float(acc.std()), "energy_j": float(j.mean()),
            "energy_std": float(j.std()), "acc_per_j": float(np.mean(acc / j)),
            "runs": [[float(a), float(e)] for a, e in zip(acc, j)]}  # (accuracy, joules) per seed


def bootstrap(static: dict, miro: list, dkey: str, n: int = 2000, seed: int = 0) -> dict:
    """90% intervals of Miro's ratio to the best static configuration in hindsight and to the default,
    resampling seeds (the same seeds for every configuration: a seed round is one block) and picking
    the best in hindsight anew inside each resample, as the point figure does."""
    keys = list(static)
    s = np.array([[a / e for a, e in static[k]["runs"]] for k in keys])  # (configs, seeds)
    m = np.array([r["acc"] / r["energy_j"] for r in miro])  # (seeds,)
    rng = np.random.default_rng(seed)
    vb, vd = [], []
    for _ in range(n):
        idx = rng.integers(0, m.size, m.size)
        means = s[:, idx].mean(axis=1)
        vb.append(m[idx].mean() / means.max())
        vd.append(m[idx].mean() / means[keys.index(dkey)])
    return {"vs_best_90": [float(np.percentile(vb, 5)), float(np.percentile(vb, 95))],
            "vs_default_90": [float(np.percentile(vd, 5)), float(np.percentile(vd, 95))], "resamples": n}


RULES = ("acc-per-joule", "top-half-acc-per-joule")  # the first is judged: its objective is the acceptance's


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=16)
    args = ap.parse_args(argv)
    seeds = list(range(args.seeds))
    root = scratch("miro-bench-miro-")
    default = RunConfig()
    grid = default_grid(default)
    out = {"machine": machine(), "seeds": seeds, "grid": [k.key() for k in grid], "rules": list(RULES),
           "streams": {}}
    t0 = time.time()
    for sname, sk in STREAMS.items():
        static = {k.key(): [] for k in grid}
        miro = {r: [] for r in RULES}
        # seed-major order, shuffled within each round: every configuration and Miro run once per
        # round, so slow drift of this shared machine's speed spreads over all of them, and no run
        # always comes first or last in its round (a position effect would favour one of them)
        for s in seeds:
            jobs = [("static", kn) for kn in grid] + [("miro", rule) for rule in RULES]
            for i in np.random.default_rng([s, 3]).permutation(len(jobs)):
                kind, what = jobs[i]
                if kind == "static":
                    static[what.key()].append(one(sk, s, root, f"{sname}-{what.key()}-{s}", memory=what.memory,
                                                  flash_budget=what.flash_budget, swap_ratio=what.swap_ratio,
                                                  epochs=what.epochs))
                else:
                    miro[what].append(one(sk, s, root, f"{sname}-miro-{what}-{s}", miro=True, miro_rule=what))
            print(f"[{sname}] seed {s} done at {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        static = {k: agg(v) for k, v in static.items()}
        variants = {}
        for rule, mruns in miro.items():
            v = agg(mruns)
            v["profiling_energy_j"] = float(np.mean([r["profiling_energy_j"] for r in mruns]))
            v["profiling_share"] = float(np.mean([r["profiling_energy_j"] / r["energy_j"] for r in mruns]))
            v["decisions"] = [r["decisions"] for r in mruns]
            v["later_rounds_profiled"] = int(sum(r["later_rounds_profiled"] for r in mruns))
            v["later_rounds"] = int(sum(len(r["decisions"]) - 1 for r in mruns))
            v["reactions"] = int(sum(r["reactions"] for r in mruns))
            variants[rule] = v
        best_key = max(static, key=lambda k: static[k]["acc_per_j"])
        dkey = next(k.key() for k in grid if (k.memory, k.flash_budget, k.swap_ratio, k.epochs) ==
                    (default.memory, default.flash_budget, default.swap_ratio, default.epochs))
        out["streams"][sname] = {
            "static": static, "miro": variants, "best_static": best_key, "default_static": dkey,
            "vs_best": {r: v["acc_per_j"] / static[best_key]["acc_per_j"] for r, v in variants.items()},
            "vs_default": {r: v["acc_per_j"] / static[dkey]["acc_per_j"] for r, v in variants.items()},
            "interval": {r: bootstrap(static, miro[r], dkey) for r in RULES},
            "provenance": miro[RULES[0]][0]["provenance"]}
    judged = RULES[0]
    out["acceptance"] = {
        "miro_ge_0.9x_best_static": all(s["vs_best"][judged] >= 0.9 for s in out["streams"].values()),
        "miro_ge_1.2x_default": all(s["vs_default"][judged] >= 1.2 for s in out["streams"].values())}
    out["plot"] = PLOT
    out["bench_s"] = time.time() - t0
    plot(out)
    emit(out)


def plot(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(out["streams"]), figsize=(6 * len(out["streams"]), 4.5))
    for ax, (sname, s) in zip(np.atleast_1d(axes), out["streams"].items()):
        for key, v in s["static"].items():
            mk = "s" if key == s["default_static"] else "o"
            ax.errorbar(v["energy_j"], 100 * v["acc"], xerr=v["energy_std"], yerr=100 * v["acc_std"], fmt=mk,
                        color="tab:blue", alpha=0.8, capsize=2)
            ax.annotate(key.replace("swap=0.5,", "").replace("flash=", "f").replace("mem=", "m")
                        .replace("epochs=", "e"), (v["energy_j"], 100 * v["acc"]), fontsize=6, alpha=0.7)
        for m, color, label in ((s["miro"]["acc-per-joule"], "tab:red", "Miro, rule acc-per-joule (profiling incl.)"),
                                (s["miro"]["top-half-acc-per-joule"], "tab:orange",
                                 "Miro, paper's rule: top half by accuracy")):
            ax.errorbar(m["energy_j"], 100 * m["acc"], xerr=m["energy_std"], yerr=100 * m["acc_std"], fmt="*",
                        color=color, markersize=14, capsize=2, label=label)
        ax.plot([], [], "o", color="tab:blue", label="static grid (square: default)")
        ax.set_xlabel("energy per run, J (estimated: CPU-seconds x 4 W/core)")
        ax.set_ylabel("final average accuracy, %")
        ax.set_title(sname)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, PLOT), dpi=110)


def where_09(r: dict) -> str:
    """Where the 0.9x line falls in each stream's interval (judged rule), said from the figures."""
    rule, parts = r["rules"][0], []
    for sname, st in r["streams"].items():
        iv = st.get("interval", {}).get(rule)
        if not iv:
            continue
        lo, hi = iv["vs_best_90"]
        where = "inside" if lo <= 0.9 <= hi else ("below" if hi < 0.9 else "above")
        parts.append(f"{sname} {lo:.2f}-{hi:.2f} (0.9 {where} it)")
    return (" The 90% intervals of Miro / best in hindsight: " + "; ".join(parts) + ".") if parts else ""


def same_as_static(r: dict) -> str:
    """When Miro ran one configuration on every task of every seed, how far its accuracy per joule
    lies from that static configuration's run: its profiling plus run-to-run noise."""
    parts = []
    for sname, st in r["streams"].items():
        m = st["miro"][r["rules"][0]]
        chosen = {k for run in m["decisions"] for k in run}
        if len(chosen) == 1 and (k := chosen.pop()) in st["static"]:
            ratio = m["acc_per_j"] / st["static"][k]["acc_per_j"]
            parts.append(f"{sname} {k} ({ratio:.2f}× its accuracy per joule)")
    if not parts:
        return ""
    return (" Miro (judged rule) ran one configuration on every task of every seed: " + "; ".join(parts) +
            " -- its profiling plus run-to-run noise (async swap timing moves a run's accuracy by points; with "
            "carm-sync a Miro run equals the static run of what it adopts, tested).")


def reactions(r: dict) -> str:
    n = [m["reactions"] for st in r["streams"].values() for m in st["miro"].values() if "reactions" in m]
    if not n:
        return ""
    return (" Mid-task reactions to resource pressure during the bench: " + str(sum(n)) +
            (" (no RAM, battery or thermal pressure arose on this machine)." if not sum(n) else "."))


def render(r: dict) -> str:
    lines = [f"CarM runs, seeds {r['seeds']}, run seed-major (every configuration and Miro once per seed round, in a "
             f"shuffled order, so machine drift spreads evenly); static grid = {len(r['grid'])} configurations "
             f"({', '.join(r['grid'])}); accuracy per joule = mean over seeds of final accuracy / run energy; "
             f"torch threads per run: {r['machine'].get('torch_threads_per_run', r['machine'].get('torch_threads'))}. "
             f"Energy is **estimated**: {next(iter(r['streams'].values()))['provenance']}. Plot: `{r['plot']}`.", "",
             f"![accuracy vs energy]({r['plot']})", ""]
    labels = {"acc-per-joule": "**Miro**, rule acc-per-joule (judged)",
              "top-half-acc-per-joule": "Miro, paper's default rule (top half by accuracy, then accuracy/J)"}
    for sname, s in r["streams"].items():
        lines += [f"**{sname}**", "", "| configuration | accuracy % | energy J | accuracy / kJ |",
                  "|---|---:|---:|---:|"]
        rows = sorted(s["static"].items(), key=lambda kv: -kv[1]["acc_per_j"])
        for key, v in rows:
            tag = (" (best static)" if key == s["best_static"]
                   else " (default)" if key == s["default_static"] else "")
            lines.append(f"| {key}{tag} | {100 * v['acc']:.1f} ± {100 * v['acc_std']:.1f} | "
                         f"{v['energy_j']:.1f} ± {v['energy_std']:.1f} | {1000 * v['acc_per_j']:.1f} |")
        for rule, m in s["miro"].items():
            lines.append(f"| {labels.get(rule, rule)}; profiling {m['profiling_energy_j']:.2f} J "
                         f"({100 * m['profiling_share']:.1f}% of the run) included | {100 * m['acc']:.1f} ± "
                         f"{100 * m['acc_std']:.1f} | {m['energy_j']:.1f} ± {m['energy_std']:.1f} | "
                         f"**{1000 * m['acc_per_j']:.1f}** |")
        one_ep = [1000 * v["acc_per_j"] for k, v in s["static"].items() if k.endswith("epochs=1")]
        if one_ep:
            lines += ["", f"The {len(one_ep)} one-epoch static configurations span {min(one_ep):.1f}-{max(one_ep):.1f} "
                          f"accuracy/kJ ({100 * (max(one_ep) / min(one_ep) - 1):.0f}% apart): the best in hindsight "
                          "is the top of that spread."]
        def ci(rule, k, s=s):
            iv = s.get("interval", {}).get(rule)
            return f" [90%: {iv[k][0]:.2f}-{iv[k][1]:.2f}]" if iv else ""
        lines += [""] + [f"- {labels.get(rule, rule)}: **{s['vs_best'][rule]:.2f}×**{ci(rule, 'vs_best_90')} the best "
                         f"static configuration in hindsight, **{s['vs_default'][rule]:.2f}×**"
                         f"{ci(rule, 'vs_default_90')} the default; choices per task (seed 0): "
                         f"{s['miro'][rule]['decisions'][0]}." for rule in s["miro"]] + [""]
    cv = [v["energy_std"] / v["energy_j"] for st in r["streams"].values() for v in st["static"].values()]
    judged = r["rules"][0]
    rounds = "; ".join(f"{sname} {m['later_rounds_profiled']} of {m['later_rounds']}"
                       for sname, st in r["streams"].items() for m in [st["miro"][judged]] if "later_rounds" in m)
    lines += ["**Reading.** Epochs dominate the energy of a run here (5 epochs cost about 4-5× one), while the "
              "1-epoch configurations cost about the same and differ in accuracy mostly by memory size: what Miro "
              "wins over the default is the epochs decision, made on task 0 by one cheap profile (an arm that "
              "cannot win even at 100% accuracy is not profiled). Task 0 has no replay, so that profile stands "
              "for every memory and flash size with its epochs, and the tie goes to the largest hierarchy of the "
              "grid (mem=40, flash=2000). After task 0 a profile trains on replay too, and the 10% cap must fit "
              "two of them (the incumbent and a challenger) for a switch to be measured"
              + (f"; rounds after task 0 that profiled (judged rule, all seeds): {rounds}" if rounds else "")
              + ". Intervals: seeds resampled (the same seeds for every configuration), the best static "
              "configuration in hindsight picked anew in each resample. **Where Miro loses:** it pays its "
              "profiling, and it cannot know ahead which of the one-epoch configurations will come out best in "
              "hindsight: their accuracy moves by several points with the seed, and the estimate meter's "
              f"run-to-run spread on this shared machine is {100 * min(cv):.0f}-{100 * max(cv):.0f}% of a run's "
              "energy, so the best of six close configurations in hindsight is partly the luckiest draw."
              + where_09(r) + same_as_static(r) + reactions(r) + " The paper's rule (top half by accuracy "
              "first) buys accuracy with energy whenever the profile of a 5-epoch arm fits the cap.", ""]
    a = r["acceptance"]
    lines.append(f"Acceptance (rule {r['rules'][0]}): " + ", ".join(f"{k}: **{'met' if v else 'NOT met'}**"
                                                                    for k, v in a.items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
