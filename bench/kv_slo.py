"""bench/kv.py's section on concurrent requests with SLOs (kv/serving.py): one request trace -- Poisson
arrivals, prompt and output lengths from log-normal (long-tailed) distributions -- served by the four
strategies on the same model, cold tier and hot budget, in real time, one trace per seed. The TBT and
TPOT targets and the offered load are calibrated before each trace from this machine's decode step of one
request all hot (the median of three runs; one warm-up run at the start). Per trace, because one calibration
window decided whole runs: single runs range 6.7-10.6 ms within seconds on this machine, and a run whose
calibration measured 11.6 ms served its traces at the usual speed under 1.8x looser targets. The target is
judged on the means over traces, beside a paired bootstrap over the traces: per-trace attainment spreads
widely (a trace is 20 requests), and five traces moved the ratio from 1.21x to 1.38x between two runs of the
same code."""

from __future__ import annotations

import os
import statistics
import time

from common import scratch

STRATEGIES = ("orbitflow", "all-offloaded", "first-layers-hot", "no-offload")


def trace(seed: int, n: int, rate_per_s: float, prompt_median: int, new_median: int, slo_tpot_ms: float,
          slo_tbt_ms: float) -> list:
    import numpy as np

    from miro_runtime.kv.serving import Request
    rng = np.random.default_rng(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.exponential(1.0 / rate_per_s)
        p = int(np.clip(rng.lognormal(np.log(prompt_median), 0.8), 16, 8 * prompt_median))
        m = int(np.clip(rng.lognormal(np.log(new_median), 0.6), 4, 6 * new_median))
        out.append(Request(f"s{seed}-{i}", rng.integers(0, 256, p).tolist(), m, slo_tpot_ms, slo_tbt_ms, t))
    return out


def run(seeds=tuple(range(20)), n=20, threads=1, prompt_median=384, new_median=24, load=1.5, budget_share=1.0,
        smoke=False, cal_runs=3) -> dict:
    import torch

    from miro_runtime.kv.decoder import Decoder
    from miro_runtime.kv.generate import KV_SYNC
    from miro_runtime.kv.llama import Llama, LlamaConfig
    from miro_runtime.kv.serving import Server
    from miro_runtime.kv.sizes import kv_bytes
    from miro_runtime.storage import FlashTier
    torch.set_num_threads(threads)
    cfg = LlamaConfig(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=688)

    class Bench(Decoder):
        def __init__(self):
            torch.manual_seed(0)
            self._hold(Llama(cfg).eval())
    model = Bench()
    root = scratch("miro-bench-kv-slo-")
    # calibration: one request alone, all hot, at the median lengths -> its decode step, and the whole request;
    # the targets and the offered load follow it (and attainment with them). One warm-up run at the start (the
    # first calls pay for allocation and kernel set-up); then before every trace the median of ``cal_runs``
    # runs, so that a slow or fast window of this noisy machine sets one trace's targets, not the whole run's
    from miro_runtime.kv.serving import Request
    calibration = []

    def calibrate(tag: str, seed) -> dict:
        with FlashTier(os.path.join(root, f"cal-{tag}"), sync_mode=KV_SYNC) as tier:
            probe = Request("cal", [j % 256 for j in range(prompt_median)], new_median)
            srv = Server(model, tier, 10 ** 12, strategy="no-offload")
            t0 = time.perf_counter()
            r = srv.run([probe], realtime=False)
        c = {"alone_s": time.perf_counter() - t0, "step_ms": statistics.median(r["requests"]["cal"]["tbt_ms"]),
             "warm_up": seed is None, "seed": seed}
        calibration.append(c)
        return c
    calibrate("warm-up", None)
    per_req = cfg.n_layers * kv_bytes(prompt_median + new_median, cfg.n_kv_heads, cfg.head_dim)
    budget = int(budget_share * per_req)  # of one median request's whole KV
    runs = {s: [] for s in STRATEGIES}
    traces = []
    for seed in seeds:
        cal = [calibrate(f"{seed}-{i}", seed) for i in range(cal_runs)]
        alone_s = statistics.median(c["alone_s"] for c in cal)
        step_ms = statistics.median(c["step_ms"] for c in cal)
        slo_tbt, slo_tpot = 3.0 * step_ms, 2.0 * step_ms  # room for a few requests decoding together
        rate = load / alone_s  # offered load: ``load`` x what one request at a time could serve
        traces.append({"seed": seed, "step_ms": step_ms, "alone_s": alone_s, "rate_per_s": rate,
                       "slo_tbt_ms": slo_tbt, "slo_tpot_ms": slo_tpot})
        reqs = trace(seed, n, rate, prompt_median, new_median, slo_tpot, slo_tbt)
        for strat in STRATEGIES:  # the same trace, strategies one after another
            with FlashTier(os.path.join(root, f"{strat}-{seed}"), sync_mode=KV_SYNC) as tier:
                out = Server(model, tier, budget, strategy=strat, prefill_chunk=32).run(reqs)
            runs[strat].append({k: out[k] for k in ("tpot_attainment", "tbt_attainment", "p95_ms", "tokens_per_s",
                                                    "wall_s", "stats", "refused")} | {"seed": seed})
    summary = {}
    for strat, rs in runs.items():
        summary[strat] = {k: statistics.mean(r[k] for r in rs if r[k] is not None) if any(r[k] is not None for r in rs)
                          else None for k in ("tpot_attainment", "tbt_attainment", "p95_ms", "tokens_per_s")}
        summary[strat]["deferrals"] = sum(r["stats"]["deferrals"] for r in rs)
        summary[strat]["refused"] = sum(r["refused"] for r in rs)
        summary[strat]["peak_hot_share"] = max(r["stats"]["peak_hot_bytes"] for r in rs) / budget
    return {"bootstrap": bootstrap(runs, [int(x) for x in seeds]),
            "model": f"builtin decoder {cfg.dim} wide, {cfg.n_layers} layers (random weights)", "threads": threads,
            "seeds": list(seeds), "requests_per_trace": n, "prompt_median": prompt_median, "new_median": new_median,
            "load": load, "calibration": calibration, "traces": traces, "hot_budget": budget, "runs": runs,
            "slo": summary, "step_ms_alone": statistics.median(t["step_ms"] for t in traces)} | {
                k: statistics.median(t[k] for t in traces)  # the header shows the traces' medians
                for k in ("rate_per_s", "alone_s", "slo_tbt_ms", "slo_tpot_ms")}


def _ratios(runs: dict, idx: list) -> tuple:
    """orbitflow's mean TPOT and TBT attainment over the traces ``idx`` (repeats allowed) against the best
    static strategy's on the same traces, and whether its p95 is lower than every static one's."""
    def mean(strat, k):
        vs = [runs[strat][i][k] for i in idx if runs[strat][i][k] is not None]
        return statistics.mean(vs) if vs else None
    static = [k for k in STRATEGIES if k != "orbitflow"]
    out = []
    for k in ("tpot_attainment", "tbt_attainment"):
        best = max(mean(s, k) or 0 for s in static)
        o = mean("orbitflow", k) or 0
        out.append(o / best if best > 0 else float("inf"))
    p95 = mean("orbitflow", "p95_ms")
    lower = p95 is not None and all(mean(s, "p95_ms") is None or p95 < mean(s, "p95_ms") for s in static)
    return out[0], out[1], lower


def bootstrap(runs: dict, seeds: list, resamples: int = 2000, rng_seed: int = 0) -> dict:
    """Paired bootstrap over traces: resample the traces with replacement (every strategy keeps the same
    traces), recompute orbitflow / best static for TPOT and TBT and the p95 comparison; the 5th-95th
    percentiles and the share of resamples in which the whole target holds."""
    import numpy as np
    rng = np.random.default_rng(rng_seed)
    n = len(seeds)
    tp, tb, held = [], [], 0
    for _ in range(resamples):
        a, b, lower = _ratios(runs, rng.integers(0, n, n).tolist())
        tp.append(a)
        tb.append(b)
        held += a >= 1.3 and b >= 1.3 and lower
    q = lambda v: [float(np.percentile(v, 5)), float(np.percentile(v, 95))]  # noqa: E731
    a, b, _ = _ratios(runs, list(range(n)))
    return {"resamples": resamples, "rng_seed": rng_seed, "tpot_ratio": a, "tbt_ratio": b,
            "tpot_ratio_90": q(tp), "tbt_ratio_90": q(tb), "target_held_share": held / resamples}


def cal_range(s: dict) -> str:
    """How the run calibrated: per trace (the traces' median and range), or once (earlier runs)."""
    if s.get("traces"):
        steps = [t["step_ms"] for t in s["traces"]]
        per = sum(c["seed"] == s["traces"][0]["seed"] for c in s["calibration"])
        return (f" (the median over the traces: each trace's targets and arrival rate come from its own "
                f"calibration just before it, the median of {per} runs; they ranged "
                f"{min(steps):.1f}-{max(steps):.1f} ms)")
    runs = [c["step_ms"] for c in s.get("calibration", []) if not c["warm_up"]]
    if not runs:
        return ""
    return f" (median of {len(runs)} runs after a warm-up, {min(runs):.1f}-{max(runs):.1f} ms, once for every trace)"


def render(s: dict) -> list:
    lines = [f"**6. Concurrent requests with SLOs** ({s['model']}; {s['threads']} torch thread; {len(s['seeds'])} "
             f"traces (seeds {s['seeds']}) of {s['requests_per_trace']} requests: Poisson arrivals at "
             f"{s['rate_per_s']:.2f}/s = {s['load']}x what one request at a time serves, prompts log-normal around "
             f"{s['prompt_median']} tokens, outputs around {s['new_median']}; targets from this machine: one request "
             f"alone decodes a token in {s['step_ms_alone']:.1f} ms{cal_range(s)}, so TBT <= {s['slo_tbt_ms']:.1f} ms "
             "and TPOT <= "
             f"{s['slo_tpot_ms']:.1f} ms; hot budget {s['hot_budget'] / 2**20:.1f} MiB; cold tier LMDB, read from the "
             "page cache). Iteration-level scheduling, one request after another (no batched matmul across "
             "requests). Mean over traces; every run is in bench/results/kv.json.", "",
             "| strategy | TPOT attainment | TBT attainment | p95 latency s | tokens/s | deferrals | refused | "
             "peak hot KV / budget |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def peak(x):  # runs before the column existed did not keep it
        return "-" if x.get("peak_hot_share") is None else f"{x['peak_hot_share']:.2f}"

    def f(v, pct=False):
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.2f}")
    for strat in STRATEGIES:
        x = s["slo"][strat]
        lines.append(f"| {strat} | {f(x['tpot_attainment'], True)} | {f(x['tbt_attainment'], True)} | "
                     f"{f(None if x['p95_ms'] is None else x['p95_ms'] / 1000)} | {f(x['tokens_per_s'])} | "
                     f"{x['deferrals']} | {x['refused']} | {peak(x)} |")
    def pct(v):
        return f"{100 * (v or 0):.0f}"
    per = "; ".join(f"{k}: " + " ".join(f"{pct(r['tpot_attainment'])}/{pct(r['tbt_attainment'])}" for r in s["runs"][k])
                    for k in STRATEGIES)
    lines += ["", f"- Per trace (seeds in order), TPOT/TBT attainment %: {per}."]
    if s.get("traces"):
        lines[-1] += " Calibrated step per trace, ms: " + " ".join(f"{t['step_ms']:.1f}" for t in s["traces"]) + "."
    o = s["slo"]["orbitflow"]
    static = [k for k in STRATEGIES if k != "orbitflow"]
    best_tpot = max((s["slo"][k]["tpot_attainment"] or 0) for k in static)
    best_tbt = max((s["slo"][k]["tbt_attainment"] or 0) for k in static)
    best_p95 = min((s["slo"][k]["p95_ms"] or float("inf")) for k in static)
    ok = (o["tpot_attainment"] or 0) >= 1.3 * best_tpot and (o["tbt_attainment"] or 0) >= 1.3 * best_tbt \
        and (o["p95_ms"] or float("inf")) < best_p95
    lines += ["", f"- orbitflow's TPOT and TBT attainment each >= 1.3x the best static strategy's, p95 lower: "
              f"**{'met' if ok else 'NOT met'}** (TPOT {f(o['tpot_attainment'], True)} vs best static "
              f"{100 * best_tpot:.0f}%, TBT {f(o['tbt_attainment'], True)} vs {100 * best_tbt:.0f}%, p95 "
              f"{f(None if o['p95_ms'] is None else o['p95_ms'] / 1000)} s vs {best_p95 / 1000:.2f} s)."]
    held = [k for k in STRATEGIES if s["slo"][k].get("peak_hot_share") is not None]
    if held:
        over = [k for k in held if s["slo"][k]["peak_hot_share"] > 1]
        lines += ["", "- The hot budget held (every request's hot layers and tails in RAM, peak over every "
                  "iteration of every trace): " + (f"**NOT met** by {', '.join(over)}." if over else "**met**.")]
    b = s.get("bootstrap")
    if b:
        def iv(v):
            return f"{v[0]:.2f}-{v[1]:.2f}x"
        low = min(b["tpot_ratio_90"][0], b["tbt_ratio_90"][0])
        lines += ["", f"- How sure: a paired bootstrap over the {len(s['seeds'])} traces ({b['resamples']} resamples) "
                  f"puts orbitflow / best static at {b['tpot_ratio']:.2f}x TPOT "
                  f"(90% interval {iv(b['tpot_ratio_90'])}) "
                  f"and {b['tbt_ratio']:.2f}x TBT ({iv(b['tbt_ratio_90'])}); the whole target holds in "
                  f"{100 * b['target_held_share']:.0f}% of resamples. "
                  + ("The intervals stay above 1.3x." if low >= 1.3 else
                     "The interval reaches below 1.3x: on other traces the margin could go.")]
    return lines + [""]
