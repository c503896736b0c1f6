"""REP benchmark: what swift prompt selection + AToM + ALD buy over L2P and DualPrompt.

1. Cost: per-step training time and memory of rep-l2p vs l2p and rep-dualprompt vs dualprompt on a
   ViT-S/16-wide backbone at 224x224 (196 patch tokens; random weights: cost does not depend on
   them), swift query from a ViT-Ti/16. The four methods step in turn, interleaved in one process,
   on the same batch; ALD's clock is drawn over a 10-task run of 1,000 steps per task.
2. Accuracy: a small ViT pretrained here with `miro rep pretrain` on classes 0-4 of ``--stream`` (with
   LayerDrop, so that it tolerates ALD's dropped layers as stochastic-depth-trained ViTs do), then
   class-incremental prompt learning on classes 5-9 (two tasks), every method on the same backbone
   and data order, several seeds (REP and its base method are compared seed by seed, on the same
   data order); ablations switch one REP component off each. ``--stream split-digits`` (the default:
   16x16, 2x2 patches) or ``split-fashion-mnist`` (28x28, 4x4 patches, on a per-class subset that is the
   same for every seed: ``STREAMS``); bench/rep_fmnist.py runs the second as its own section.

The step-time ratios are measured ``--repeats`` times (whole interleaved measurements one after
another); every repeat is reported and the verdict takes the worst. The accuracy verdict is two-sided:
the 90% interval (Student's t over seeds) of REP minus base, seed by seed, must lie within +-1.5
points. ``--quick`` runs part 1 only (a few minutes); ``--smoke`` is for checking the code runs, not
for figures. Last line of stdout: one JSON object with ``step_time_ratio_l2p`` and
``step_time_ratio_dualprompt`` (REP / base, the worst repeat).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, median, scratch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = (("l2p", "rep-l2p"), ("dualprompt", "rep-dualprompt"))
RUN_STEPS = 10_000  # ALD's clock for the cost part: a 10-task run of 1,000 steps per task
ACC_CLASSES = "5-9"
ACC_TASKS = 2
STEP_TARGET = 0.7  # REP step time <= 0.7x the base method's
ACC_MARGIN = 0.015  # REP's final accuracy within 1.5 points of the base method's, both ways
QUERY_EPOCHS = 40  # the swift query's pretraining
HYPER = ("gamma", "theta_bar", "alpha", "tau", "r_max")  # REP's knobs, as the runs had them
# per stream: input and patch side, and the images used (None: all). Fashion-MNIST's 30,000 base images for
# 30 epochs would be hours on one core: pretraining sees 600 per class, the prompt runs 200 per class, and
# 300 test images per class decide each accuracy -- the same images for every seed (chosen by their CRC)
STREAMS = {"split-digits": dict(image_size=16, patch_size=2, pretrain_per_class=None, per_class=None,
                                test_per_class=None, what="digits"),
           "split-fashion-mnist": dict(image_size=28, patch_size=4, pretrain_per_class=600, per_class=200,
                                       test_per_class=300, what="Fashion-MNIST classes")}
# the code these figures measure (run_all.py marks the section stale when it changes)
MEASURES = ("miro_runtime/engine", "miro_runtime/session", "miro_runtime/cli", "miro_runtime/config.py",
            "miro_runtime/choices.py")


def interleaved(backbone: str, query: str, stream, X, Y, steps: int, run_steps: int, root: str, seed: int = 0,
                rep_opts=None) -> dict:
    """The four methods step in turn on the same batch, one process (item 1's method); ALD's clock is
    drawn uniformly over a run of ``run_steps`` steps. -> {method: (step times s, strategy)}."""
    import torch

    from miro_runtime.config import RunConfig
    from miro_runtime.engine.strategies import build_model, make_strategy
    strats = {}
    for pair in PAIRS:
        for name in pair:
            method = {"query_backbone": query, **(rep_opts or {})} if name.startswith("rep") else {}
            cfg = RunConfig(strategy=name, backbone=backbone, run_dir=root, method=method, seed=seed)
            torch.manual_seed(seed)
            s = make_strategy(name, build_model(cfg, stream), cfg, None, stream)
            s.begin_task(0)
            strats[name] = s
    rng = np.random.default_rng(seed)
    times = {n: [] for n in strats}
    for i in range(steps + 1):  # step 0 warms up each (allocator, first-call costs): not counted
        clock = int(rng.integers(0, run_steps))
        for n, s in strats.items():
            s.steps_done = clock  # ALD's keep probabilities at this point of the run
            t0 = time.perf_counter()
            s.observe(X, Y)
            if i:
                times[n].append(time.perf_counter() - t0)
    return {n: (times[n], strats[n]) for n in strats}


def cost(root: str, steps: int, batch: int, threads: int, seed: int = 0) -> dict:
    import torch

    from miro_runtime.engine.rep.vit import SIZES, ViTSpec, build
    from miro_runtime.engine.streams import from_arrays
    torch.set_num_threads(threads)
    files = {}
    for size in ("small", "tiny"):
        files[size] = os.path.join(root, f"vit_{size}16_224.pt")
        torch.manual_seed(seed)
        torch.save(build(ViTSpec(224, 16, **SIZES[size])).state_dict(), files[size])
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (4 * batch, 3, 32, 32), dtype=np.uint8)  # resized to 224 inside, as real data is
    y = np.arange(len(x)) % 4
    stream = from_arrays("cost", x, y, x, y, 2)
    X, Y = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch] % 2)
    res = interleaved(files["small"], files["tiny"], stream, X, Y, steps, RUN_STEPS, root, seed)
    out = {"batch": batch, "steps": steps, "threads": threads, "backbone": "ViT-S/16 width (384, 12 layers, 6 heads), "
           "224x224, 196 patch tokens", "swift_query": "ViT-Ti/16 (192, 12 layers, 3 heads)", "methods": {},
           "run_steps": RUN_STEPS, "hyper": {k: getattr(res["rep-l2p"][1].opts, k) for k in HYPER},
           "query_weights_mb": os.path.getsize(files["tiny"]) / 2**20}
    for n, (times, s) in res.items():
        c = s.cost()
        a = s.model.applied()
        out["methods"][n] = {"step_ms": median(times) * 1e3, "step_ms_all": [v * 1e3 for v in times],
                             "query_ms": c["query_ms"], "peak_mem_mb": c["peak_mem_mb"],
                             "step_mem_mb": c["step_mem_mb"], "mem_source": c["peak_mem_source"],
                             "merge_counts": a["merge_schedule"], "layer_keep_rate": a["layer_keep_rate"]}
    for base, rep in PAIRS:
        m = out["methods"]
        out[f"step_time_ratio_{base}"] = m[rep]["step_ms"] / m[base]["step_ms"]
        out[f"peak_mem_ratio_{base}"] = m[rep]["peak_mem_mb"] / m[base]["peak_mem_mb"]
        out[f"step_mem_ratio_{base}"] = m[rep]["step_mem_mb"] / m[base]["step_mem_mb"]
    return out


def acc_config_cost(root, backbone, query, stream, batch, gamma, run_steps, steps, rep_opts=None) -> dict:
    """Item 1's interleaved timing on the accuracy configuration: its pretrained backbone and swift
    query, a batch of its first task's real images, ALD's clock over its run's steps, REP's options
    as its runs have them."""
    import torch
    x, y = stream.train[0]
    X, Y = torch.from_numpy(x[:batch]), torch.from_numpy(y[:batch])
    res = interleaved(backbone, query, stream, X, Y, steps, run_steps, root,
                      rep_opts={"gamma": str(gamma), **(rep_opts or {})})
    out = {"steps": steps, "batch": batch, "hyper": {k: getattr(res["rep-l2p"][1].opts, k) for k in HYPER},
           "step_ms": {n: median(t) * 1e3 for n, (t, _) in res.items()},
           "layers_run": {n: sum(s.model.applied()["layer_keep_rate"]) for n, (_, s) in res.items()}}
    for base, rep in PAIRS:
        out[f"step_time_ratio_{base}"] = out["step_ms"][rep] / out["step_ms"][base]
    return out


ACC_RUNS = [("l2p", {}), ("rep-l2p", {}), ("rep-l2p", {"atom": "false"}), ("rep-l2p", {"ald": "false"}),
            ("rep-l2p", {"swift": "false"}), ("dualprompt", {}), ("rep-dualprompt", {})]


def label(name, opts):
    off = [k for k, v in opts.items() if v == "false"]
    names = ["swift selection" if k == "swift" else k.upper() for k in off]
    return name + (f" (no {', no '.join(names)})" if off else "")


def pretrain_cmd(root, size, epochs, batch, lr, layer_drop, stream: str = "split-digits"):
    """`miro rep pretrain` on classes 0-4 (digits: 16x16, 64 patches of 2x2), as a user without weights would."""
    st = STREAMS[stream]
    out = os.path.join(root, f"{stream}04_{size}.pt")
    cut = ["--per-class", str(st["pretrain_per_class"])] if st["pretrain_per_class"] else []
    return out, [sys.executable, "-m", "miro_runtime.cli", "rep", "pretrain", "--stream", stream,
                 "--classes", "0-4", "--out", out, "--size", size, "--image-size", str(st["image_size"]),
                 "--patch-size", str(st["patch_size"]), *cut,
                 "--epochs", str(epochs), "--batch-size", str(batch), "--lr", str(lr), "--threads", "1",
                 "--layer-drop", str(layer_drop), "--json"]


def pretrain_both(root, size, pre_epochs, layer_drop, query_epochs: int = QUERY_EPOCHS,
                  stream: str = "split-digits", query: bool = True) -> tuple:
    """The backbone and the swift query's small ViT (micro: 64 wide, 6 layers, about 1/8 of the
    backbone's compute), pretrained side by side, one thread each. ``query=False`` (the swift query
    is the backbone's own first blocks): the backbone only, and None for the query."""
    import json
    cmds = [pretrain_cmd(root, size, pre_epochs, 32, 5e-4, layer_drop, stream)]
    if query:
        cmds.append(pretrain_cmd(root, "micro", query_epochs, 64, 2e-3, 0.0, stream))
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _, c in cmds]
    out = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode:
            raise RuntimeError(f"miro rep pretrain failed: {se[-2000:]}")
        pre = json.loads(so.strip().splitlines()[-1])
        pre["wall_s"] = time.perf_counter() - t0
        out.append(pre)
    return out[0], (out[1] if query else None)


def prompt_stream(stream: str, tasks: int, seed: int = 0):
    """Classes 5-9 of ``stream`` in ``tasks`` tasks, cut to the stream's per-class subset."""
    from miro_runtime.engine.streams import limit_per_class, make_stream, select_classes
    s = STREAMS[stream]
    st = select_classes(make_stream(stream, None, seed, None), list(range(5, 10)), tasks)
    return limit_per_class(st, s["per_class"], s["test_per_class"]) if s["per_class"] else st


def linear_probe(backbone: str, seed: int = 0, stream: str = "split-digits") -> float:
    """Upper reference: a logistic regression on the frozen backbone's [CLS] features, trained on all of
    classes 5-9 at once (no increments, no prompts), the prompt runs' images."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from miro_runtime.engine.rep.vit import cls_feature, load_backbone, preprocess
    vit, spec, _ = load_backbone(backbone)
    st = prompt_stream(stream, 1, seed)

    def feats(parts):
        x = np.concatenate([a for a, _ in parts])
        y = np.concatenate([b for _, b in parts])
        with torch.no_grad():
            f = cls_feature(vit, preprocess(torch.from_numpy(x), spec.image_size)).numpy()
        return f, y
    (fx, fy), (tx, ty) = feats(st.train), feats(st.test)
    clf = LogisticRegression(max_iter=2000).fit(fx, fy)
    return float(clf.score(tx, ty))


def paired_gap(row: dict, ref: dict) -> float:
    """Mean of ``row`` minus ``ref`` final accuracy over the seeds both ran (a pair may run more seeds)."""
    ref_acc = {x["seed"]: x["acc"] for x in ref["runs"]}
    return float(np.mean([x["acc"] - ref_acc[x["seed"]] for x in row["runs"] if x["seed"] in ref_acc]))


def t_interval(d: list, level: float = 0.90) -> Optional[list]:
    """Two-sided interval of the mean of paired differences (Student's t, n - 1 degrees of freedom)."""
    if len(d) < 2:
        return None
    from scipy import stats
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    return [float(np.mean(d) - half), float(np.mean(d) + half)]


def within(iv: Optional[list], margin: float = ACC_MARGIN) -> str:
    """met: the whole interval lies within +-margin; NOT met: all of it outside; else not shown."""
    if iv is None:
        return "not shown"
    if -margin <= iv[0] and iv[1] <= margin:
        return "met"
    return "NOT met" if iv[0] > margin or iv[1] < -margin else "not shown"


def not_worse(iv: Optional[list], margin: float = ACC_MARGIN) -> str:
    """One-sided (non-inferiority, 95%: the two-sided 90% interval's lower end): met when REP is shown
    to be at most ``margin`` worse than its base; NOT met when the whole interval is below -margin."""
    if iv is None:
        return "not shown"
    return "met" if iv[0] >= -margin else ("NOT met" if iv[1] < -margin else "not shown")


def accuracy(root: str, seeds: list, epochs: int, threads: int, size: str, pre_epochs: int, gamma: float,
             batch: int, layer_drop: float, timing_steps: int = 16, repeats: int = 1,
             query_epochs: int = QUERY_EPOCHS, stream: str = "split-digits", rep_opts=None,
             more_seeds: Optional[dict] = None) -> dict:
    """``rep_opts``: REP's method options for every REP run and the timing (over gamma and the micro
    query); ``query_backbone`` empty there means the swift query is the backbone's own first
    ``query_layers`` blocks, and no micro query is pretrained. ``more_seeds``: {base: seeds} -- that pair
    (base and its REP method, nothing else) also runs these seeds, after every row has run ``seeds``."""
    from miro_runtime import RunConfig, run
    rep_opts = dict(rep_opts or {})
    st = prompt_stream(stream, ACC_TASKS)
    run_steps = sum(epochs * math.ceil(len(y) / batch) for _, y in st.train)
    own_query = rep_opts.get("query_backbone") == ""
    pre, query = pretrain_both(root, size, pre_epochs, layer_drop, query_epochs, stream, query=not own_query)
    bb = pre["out"]
    qpath = "" if own_query else query["out"]
    probe = linear_probe(bb, stream=stream)
    timings = [acc_config_cost(root, bb, qpath, st, batch, gamma, run_steps, timing_steps, rep_opts)
               for _ in range(repeats)]
    rows = {}

    def one(name: str, opts: dict, seed: int) -> None:
        method = dict(opts)
        if name.startswith("rep"):
            method = {"gamma": str(gamma), "query_backbone": qpath, **rep_opts, **opts}
        cfg = RunConfig(stream=stream, strategy=name, backbone=bb, classes=ACC_CLASSES, tasks=ACC_TASKS,
                        epochs=epochs, seed=seed, threads=threads, checkpoint_every=0, method=method,
                        batch_size=batch, train_per_class=STREAMS[stream]["per_class"],
                        run_dir=os.path.join(root, f"{label(name, opts)}-{seed}".replace(" ", "_")))
        # the seed's own class order over 5-9, cut to the stream's subset (test sets too)
        s = run(cfg, stream=prompt_stream(stream, ACC_TASKS, seed))
        row = rows.setdefault(label(name, opts), {"method": name, "options": opts, "runs": []})
        row["runs"].append({"seed": seed, "acc": s["final_avg_acc"], "step_ms": s["step_ms"],
                            "peak_mem_mb": s["peak_mem_mb"], "step_mem_mb": s["step_mem_mb"],
                            "query_ms": s["query_ms"], "train_s": s["train_s"], "acc_matrix": s["acc_matrix"],
                            "layers_run": sum(s["layer_keep_rate"]),
                            "class_order": s["stream"]["class_order"]})
        print(f"  seed {seed} {label(name, opts)}: {100 * s['final_avg_acc']:.1f}%, {s['step_ms']:.0f} ms/step",
              file=sys.stderr, flush=True)
    for seed in seeds:  # seeds outermost: each seed's runs are back to back, same machine state
        for name, opts in ACC_RUNS:
            one(name, opts, seed)
    for base, extra in (more_seeds or {}).items():
        for seed in extra:
            for name in (base, dict(PAIRS)[base]):
                one(name, {}, seed)
    for row in rows.values():
        accs = [x["acc"] for x in row["runs"]]
        row.update(acc=float(np.mean(accs)), acc_std=float(np.std(accs)),
                   step_ms=median([x["step_ms"] for x in row["runs"]]),
                   peak_mem_mb=median([x["peak_mem_mb"] for x in row["runs"]]),
                   step_mem_mb=median([x["step_mem_mb"] for x in row["runs"]]),
                   layers_run=float(np.mean([x["layers_run"] for x in row["runs"]])))
    out = {"stream": stream, "subset": {k: v for k, v in STREAMS[stream].items() if k != "what"},
           "pretrain": pre, "query_pretrain": query, "linear_probe_acc": probe, "seeds": seeds, "epochs": epochs,
           "gamma": gamma, "rep_opts": rep_opts, "more_seeds": {b: list(x) for b, x in (more_seeds or {}).items()},
           "run_steps": run_steps,
           "batch": batch, "classes": ACC_CLASSES, "tasks": ACC_TASKS, "rows": rows,
           "train_images": int(sum(len(y) for _, y in st.train)), "test_images": int(sum(len(y) for _, y in st.test)),
           "hyper": timings[0]["hyper"], "margin": ACC_MARGIN}
    for base, rep in PAIRS:
        # seed by seed: the same seed gives both methods the same data order
        assert [x["seed"] for x in rows[rep]["runs"]] == [x["seed"] for x in rows[base]["runs"]]
        d = [r["acc"] - b["acc"] for r, b in zip(rows[rep]["runs"], rows[base]["runs"])]
        out[f"acc_gap_{base}"] = float(np.mean(d))
        out[f"acc_gap_se_{base}"] = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        out[f"acc_gap_runs_{base}"] = [float(x) for x in d]
        out[f"acc_gap_90_{base}"] = t_interval(d)
        out[f"acc_within_{base}"] = within(out[f"acc_gap_90_{base}"])
        out[f"acc_not_worse_{base}"] = not_worse(out[f"acc_gap_90_{base}"])
        # two timings: item 1's method (interleaved steps, one process) on this configuration -- the
        # verdict -- and the whole runs' own medians, taken minutes apart on a shared machine
        out[f"step_time_ratios_{base}"] = [t[f"step_time_ratio_{base}"] for t in timings]
        out[f"step_time_ratio_{base}"] = max(out[f"step_time_ratios_{base}"])  # the worst repeat
        out[f"runs_step_time_ratio_{base}"] = median([r["step_ms"] / b["step_ms"]
                                                      for r, b in zip(rows[rep]["runs"], rows[base]["runs"])])
    out["interleaved"] = timings[0]
    out["interleaved_repeats"] = timings
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stream", default="split-digits", choices=sorted(STREAMS), help="the accuracy part's stream")
    ap.add_argument("--no-cost", action="store_true",
                    help="skip the cost part at 224x224 (it does not depend on the stream: bench/rep.py has it)")
    ap.add_argument("--quick", action="store_true", help="the cost part only (a few minutes)")
    ap.add_argument("--smoke", action="store_true",
                    help="for checking the code runs, not for figures: 1 step per method, 1 repeat, 2 seeds, "
                         "1 epoch of pretraining and of each task")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per method (cost part)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="whole interleaved step-time measurements (cost part and accuracy configuration), all "
                         "reported, the worst judged; one takes about a minute here")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="the accuracy part's seeds are first-seed, ...")
    ap.add_argument("--more-seeds", action="append", default=[], metavar="BASE=FIRST-LAST",
                    help="that pair (e.g. l2p: l2p and rep-l2p) also runs these seeds, after the others")
    ap.add_argument("--rep-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a REP method option for the accuracy part's REP runs and its timing (repeatable); "
                         "query_backbone= (empty) takes the swift query from the backbone's own first "
                         "query_layers blocks")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--acc-batch", type=int, default=64, help="batch size of the accuracy part's runs")
    ap.add_argument("--size", default="mini", help="the accuracy part's backbone (miro rep pretrain --size)")
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--layer-drop", type=float, default=0.3, help="miro rep pretrain --layer-drop for the backbone")
    ap.add_argument("--gamma", type=float, default=0.02,
                    help="ALD's decay per step in the accuracy part: over its ~120 steps the keep probability "
                         "falls most of the way to its floor (the cost part's default is for a 10,000-step run)")
    a = ap.parse_args(argv)
    bad = [o for o in a.rep_opt if "=" not in o]
    if bad:
        ap.error(f"--rep-opt wants KEY=VALUE, got {bad[0]!r}")
    rep_opts = dict(o.split("=", 1) for o in a.rep_opt)
    more = {}
    for o in a.more_seeds:
        base, _, span = o.partition("=")
        first, _, last = span.partition("-")
        if base not in dict(PAIRS) or not (first.isdigit() and last.isdigit()) or int(last) < int(first):
            ap.error(f"--more-seeds wants BASE=FIRST-LAST with BASE one of {[b for b, _ in PAIRS]}, got {o!r}")
        more[base] = list(range(int(first), int(last) + 1))
        # a seed run twice would enter the paired figures twice: twice the weight and a too-small standard error
        both = sorted(set(more[base]) & set(range(a.first_seed, a.first_seed + a.seeds)))
        if both:
            ap.error(f"--more-seeds {o!r}: seeds {both} are already among --first-seed {a.first_seed} "
                     f"--seeds {a.seeds}; each seed runs once")
    if a.smoke:
        a.steps, a.repeats, a.seeds, a.epochs, a.pretrain_epochs = 1, 1, 2, 1, 1
        more = {b: x[:1] for b, x in more.items()}
    root = scratch("miro-bench-rep-")
    res = {"machine": machine(), "quick": a.quick, "smoke": a.smoke, "repeats": a.repeats, "stream": a.stream}
    if not a.no_cost:
        print("cost: interleaved steps at 224x224 ...", file=sys.stderr, flush=True)
        res["cost_repeats"] = [cost(root, a.steps or (8 if a.quick else 16), a.batch, a.threads)
                               for _ in range(a.repeats)]
        res["cost"] = res["cost_repeats"][0]
        for base, _ in PAIRS:  # the worst repeat is the figure judged
            res[f"step_time_ratios_{base}"] = [c[f"step_time_ratio_{base}"] for c in res["cost_repeats"]]
            res[f"step_time_ratio_{base}"] = max(res[f"step_time_ratios_{base}"])
            res[f"peak_mem_ratio_{base}"] = res["cost"][f"peak_mem_ratio_{base}"]
        res["target_met"] = all(res[f"step_time_ratio_{b}"] <= STEP_TARGET for b, _ in PAIRS)
    if not a.quick:
        print("accuracy: pretrain + class-incremental runs ...", file=sys.stderr, flush=True)
        seeds = list(range(a.first_seed, a.first_seed + a.seeds))
        res["accuracy"] = accuracy(root, seeds, a.epochs, a.threads, a.size, a.pretrain_epochs,
                                   a.gamma, a.acc_batch, a.layer_drop, timing_steps=2 if a.smoke else 16,
                                   repeats=a.repeats, query_epochs=1 if a.smoke else QUERY_EPOCHS,
                                   stream=a.stream, rep_opts=rep_opts, more_seeds=more)
        acc = res["accuracy"]
        res["accuracy_within_1_5"] = {b: acc[f"acc_within_{b}"] for b, _ in PAIRS}
        res["accuracy_not_worse_1_5"] = {b: acc[f"acc_not_worse_{b}"] for b, _ in PAIRS}
        res["speedup_holds_on_accuracy_config"] = {b: acc[f"step_time_ratio_{b}"] <= STEP_TARGET for b, _ in PAIRS}
    emit(res)


def hyper_text(h: dict) -> str:
    return (f"gamma {h['gamma']:g}, theta_bar {h['theta_bar']:g}, alpha {h['alpha']:g}, tau {h['tau']}; "
            f"AToM r_max {h['r_max']}")


def ratios(r: dict, key: str, b: str) -> str:
    xs = r.get(f"{key}s_{b}", [r[f"{key}_{b}"]])
    return ", ".join(f"{x:.2f}x" for x in xs) + (f" (spread {max(xs) - min(xs):.2f})" if len(xs) > 1 else "")


def gap_verdict(a: dict, b: str) -> str:
    """The two-sided verdict; for a result from before it was recorded, judged here from the seeds' runs."""
    iv = a.get(f"acc_gap_90_{b}")
    if f"acc_within_{b}" not in a:
        rep = dict(PAIRS)[b]
        iv = t_interval([x["acc"] - y["acc"] for x, y in zip(a["rows"][rep]["runs"], a["rows"][b]["runs"])])
    ivs = f"90% interval {100 * iv[0]:+.1f} to {100 * iv[1]:+.1f}" if iv else "no interval (one seed)"
    return f"{ivs} -- two-sided **{within(iv)}**, not worse by more than the margin: **{not_worse(iv)}**"


def acc_note(a: dict) -> str:
    """Where we lose on the accuracy configuration, said from its figures."""
    rows, full = a["rows"], a["rows"]["rep-l2p"]
    what = STREAMS[a.get("stream", "split-digits")]["what"]
    parts = [f"- Where we lose, on this small configuration: no prompt method comes near a joint linear probe on "
             f"the same frozen features ({100 * a['linear_probe_acc']:.1f}%: a logistic regression on the backbone's "
             f"[CLS] features, all of {what} {a['classes']} at once, same held-out set): with L2P's train-time mask "
             "each task's head rows are trained only against each other, so the first task's classes can out-score "
             "the second's (see each run's acc_matrix)"]
    if "train_images" in a:
        parts[0] += (f"; the backbone saw {a['pretrain'].get('train_samples', '?')} images in pretraining, the "
                     f"prompt runs {a['train_images']}, and {a['test_images']} held-out images decide each accuracy")
    parts[0] += (". The gap is therefore taken seed by seed (same data order) and judged by its 90% interval, "
                 "two-sided: **met** when the whole interval lies within the margin, **NOT met** when all of it "
                 "lies outside (either way: REP more than the margin better counts as not within it), **not "
                 "shown** when it straddles a bound -- a handful of seeds often cannot tell. Beside it the "
                 "one-sided verdict (REP no more than the margin worse than its base: the interval's lower end at "
                 "or above -margin, a 95% one-sided bound), since REP is a cost-saving method and its better "
                 "accuracy is not a loss.")
    no_atom = rows.get("rep-l2p (no ATOM)")
    if no_atom:
        t = no_atom["step_ms"] / full["step_ms"]
        if t < 0.95:
            why = " -- at this token count AToM's matching and scatter cost more than the merged tokens save."
        elif t <= 1.05:
            why = (" -- at this token count AToM's matching and scatter cost about what the merged tokens save; the "
                   "time comes from ALD and the swift query.")
        else:
            why = " -- AToM's merged tokens save more than its matching costs."
        parts.append(f"Without AToM the step takes {t:.2f}x rep-l2p's here" + why)
    no_swift = rows.get("rep-l2p (no swift selection)")
    if no_swift:
        d = 100 * paired_gap(no_swift, full)
        parts.append(f"Without swift selection (the backbone's own [CLS] as the query) rep-l2p scored {d:+.1f} "
                     "points against the full rep-l2p (on the seeds both ran).")
    return " ".join(parts)


def render(r) -> str:
    lines = [] if "cost" in r else [f"The cost part (224x224, random weights) does not depend on the stream: "
                                    f"see the REP section above. Stream: {r['stream']}."]
    if "cost" in r:
        lines = render_cost(r)
    if "accuracy" in r:
        lines += render_accuracy(r)
    return "\n".join(lines)


def render_cost(r) -> list:
    c = r["cost"]
    m = c["methods"]
    costs = r.get("cost_repeats", [c])
    hyper = c.get("hyper")
    lines = [f"**Cost** ({c['backbone']}; swift query {c['swift_query']}; random weights, since cost does not depend "
             f"on them; batch {c['batch']}, {c['threads']} torch threads; median of {c['steps']} interleaved steps "
             f"per method after one warm-up, {len(costs)} repeat(s) of the whole measurement, every one shown; "
             f"ALD's clock drawn uniformly over a {c.get('run_steps', RUN_STEPS):,}-step run"
             + (f"; {hyper_text(hyper)}" if hyper else "") + ").", "",
             "| method | step ms (per repeat) | of base (per repeat) | query ms | peak step MB | median step MB | "
             "layers run per step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for base, rep in PAIRS:
        for n in (base, rep):
            x = m[n]
            steps = " / ".join(f"{k['methods'][n]['step_ms']:.0f}" for k in costs)
            of = " / ".join(f"{k['methods'][n]['step_ms'] / k['methods'][base]['step_ms']:.2f}x" for k in costs)
            lines.append(f"| {n} | {steps} | {of} | {x['query_ms']:.0f} | {x['peak_mem_mb']:.0f} | "
                         f"{x['step_mem_mb']:.0f} | {sum(x['layer_keep_rate']):.1f} |")
    qmb = c.get("query_weights_mb")
    lines += ["", f"- Target REP step time <= {STEP_TARGET}x the base method's, every repeat (the worst judged): "
              f"rep-l2p {ratios(r, 'step_time_ratio', 'l2p')}, rep-dualprompt "
              f"{ratios(r, 'step_time_ratio', 'dualprompt')} -- **{'met' if r['target_met'] else 'NOT met'}**.",
              f"- Memory (first repeat) is measured on the CPU as the bytes autograd keeps for the backward pass plus "
              f"parameters and buffers ({m['l2p']['mem_source']}). Peak step memory, REP / base: l2p "
              f"{r['peak_mem_ratio_l2p']:.2f}x, dualprompt {r['peak_mem_ratio_dualprompt']:.2f}x. Where we lose: the "
              "swift query's own weights" + (f" ({qmb:.0f} MB as stored)" if qmb else "") + " count against REP, "
              "and ALD lowers the typical step's memory but not the peak -- a step that happens to keep every "
              "layer needs what the base method needs, less only AToM's merged tokens."]
    return lines


def render_accuracy(r) -> list:
    lines = []
    c = r.get("cost", {})
    hyper = c.get("hyper")
    a = r["accuracy"]
    stream = a.get("stream", "split-digits")
    what = STREAMS[stream]["what"]
    sub = a.get("subset", {})
    cut = (f"; {sub['pretrain_per_class']} images per class in pretraining, {sub['per_class']} per class in "
           f"the prompt runs, {sub['test_per_class']} test images per class, the same for every seed"
           if sub.get("per_class") else "")
    p, q = a["pretrain"], a["query_pretrain"]
    g, steps = a["gamma"], a.get("run_steps", 0)
    h = a.get("hyper")
    cost_g = hyper["gamma"] * c.get("run_steps", RUN_STEPS) if hyper else None
    ro = a.get("rep_opts") or {}
    if q is None:  # the swift query is the backbone's own first blocks
        qtext = (f"the swift query the backbone's own first {ro.get('query_layers', '?')} blocks' [CLS] (no "
                 "second model)")
    else:
        qtext = (f"the swift query's `{q['size']}` ViT ({q['spec']['hidden_dim']} wide, {q['spec']['num_layers']} "
                 f"layers) likewise without layer drop ({q['test_acc']:.1%} held-out, {q['seconds']:.0f} s)")
    lines += ["", f"**Accuracy** ({stream}{cut}: a `{p['size']}` ViT ({p['spec']['hidden_dim']} wide, "
              f"{p['spec']['num_layers']} layers, {p['spec']['image_size']}x{p['spec']['image_size']} input, "
              f"{(p['spec']['image_size'] // p['spec']['patch_size']) ** 2} patches) pretrained by `miro rep "
              f"pretrain --layer-drop {p.get('layer_drop', 0)}` on {what} 0-4 ({p['epochs']} epochs, "
              f"{p['test_acc']:.1%} held-out, {p['seconds']:.0f} s), and {qtext}; "
              f"then {what} {a['classes']} in {a['tasks']} "
              f"class-incremental tasks, {a['epochs']} epochs each at batch {a['batch']} ({steps} steps), same "
              f"backbone, tasks and data order for every method of a seed; mean ± sd over seeds {a['seeds']}"
              + "".join(f" ({b} and {dict(PAIRS)[b]} also seeds {x[0]}-{x[-1]}: {len(a['seeds']) + len(x)} runs "
                        "each)" for b, x in a.get("more_seeds", {}).items() if x) + "; "
              f"ALD gamma {g:.3g} per step (gamma x steps = {g * steps:.1f}: the decaying part of the keep "
              f"probability ends at {100 * math.exp(-g * steps):.0f}% of its start"
              + (f"; the cost part's run has gamma x steps = {cost_g:g}" if cost_g is not None else "")
              + ")" + (f"; other knobs {hyper_text(h).split(', ', 1)[1]}" if h else "")
              + (f"; REP options given: `{' '.join(f'{k}={v}' for k, v in ro.items())}`" if ro else "") + ").", "",
              "| method | seeds | final avg acc | step ms (runs) | of base | layers run per step | median step MB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in a["rows"].items():
        base = "l2p" if "l2p" in row["method"] else "dualprompt"
        lines.append(f"| {name} | {len(row['runs'])} | {100 * row['acc']:.1f} ± {100 * row['acc_std']:.1f} | "
                     f"{row['step_ms']:.0f} | "
                     f"{row['step_ms'] / a['rows'][base]['step_ms']:.2f}x | {row['layers_run']:.1f} | "
                     f"{row['step_mem_mb']:.0f} |")

    def gap(b):
        runs = a.get(f"acc_gap_runs_{b}")
        se = a.get(f"acc_gap_se_{b}")
        return (f"{100 * a[f'acc_gap_{b}']:+.1f}" + (f" ± {100 * se:.1f} (standard error)" if se else "")
                + (" (seeds: " + ", ".join(f"{100 * x:+.1f}" for x in runs) + ")" if runs else ""))
    lines += ["", f"- REP minus base, final average accuracy, seed by seed then averaged, against within "
              f"±{100 * a.get('margin', ACC_MARGIN):.1f} points: " + "; ".join(
                  f"{rep} {gap(b)} points, {gap_verdict(a, b)}" for b, rep in PAIRS) + "."]
    t = a["interleaved"]
    lines.append(
        f"- Step time on this configuration, measured as in item 1 (the four methods step in turn on one "
        f"batch of {t['batch']} of its real images, {t['steps']} steps each after a warm-up, one process, "
        f"ALD's clock drawn over the run's {steps} steps), REP / base per repeat: " + ", ".join(
            f"{rep} {ratios(a, 'step_time_ratio', b)} (<= {STEP_TARGET} in the worst: "
            f"**{'holds' if r['speedup_holds_on_accuracy_config'][b] else 'does NOT hold'}**)"
            for b, rep in PAIRS) + ". From the whole runs' own median steps, paired by seed (runs minutes "
        "apart, so the machine's drift enters): " + ", ".join(
            f"{rep} {a[f'runs_step_time_ratio_{b}']:.2f}x" for b, rep in PAIRS) + ".")
    full = a["rows"]["rep-l2p"]
    abl = [(name, row) for name, row in a["rows"].items() if name.startswith("rep-l2p (")]
    if abl:
        lines.append("- Ablations against rep-l2p, on the seeds both ran: " + "; ".join(
            f"{name[len('rep-l2p ('):-1]}: {100 * paired_gap(row, full):+.1f} points, step time "
            f"{row['step_ms'] / full['step_ms']:.2f}x" for name, row in abl) + ".")
    lines.append(acc_note(a))
    return lines


if __name__ == "__main__":
    main()
