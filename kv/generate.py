"""``miro kv generate``: greedy generation through the tiered KV cache, with the planner choosing the
hot layers (lossless policy) from costs measured here at start-up, or a lossy policy keeping every
layer within the hot budget. Reports tokens/s, time to first token and where the KV lived."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from .cache import TieredKVCache
from .llama import Llama, LlamaConfig
from .planner import LayerCost, plan
from .policies import make_policy

BUILTIN = {"builtin-tiny": LlamaConfig()}


def load_model(name: str, seed: int = 0):
    if name in BUILTIN:
        torch.manual_seed(seed)  # random weights: the mechanics, not the text, are what it shows
        return Llama(BUILTIN[name]).eval(), f"{name} (random init, seed {seed})"
    if os.path.isdir(name):
        raise ValueError(f"--model {name}: local Hugging Face models need the transformers adapter, which is not "
                         "built yet; use --model builtin-tiny")
    raise ValueError(f"--model {name!r}: not a built-in model ({', '.join(BUILTIN)}) nor a local directory")


def measure_fetch(tier, ns: str, block_bytes: int, n: int = 5) -> float:
    """Seconds to read one KV block back from ``tier`` (median of n), measured, not assumed."""
    key = "__probe__"
    tier.put(ns, key, b"\0" * block_bytes)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        tier.get(ns, key)
        times.append(time.perf_counter() - t0)
    tier.delete(ns, key)
    return statistics.median(times)


@torch.no_grad()
def run_generate(model_name: str, prompt: bytes, max_new_tokens: int, policy: str = "full",
                 hot_budget: int = 0, cold_dir: str = "", block_tokens: int = 16, seed: int = 0) -> dict:
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not prompt:
        raise ValueError("the prompt is empty")
    model, described = load_model(model_name, seed)
    c = model.cfg
    ids = torch.tensor([list(prompt)], dtype=torch.long)  # bytes are the built-in model's tokens
    total = ids.shape[1] + max_new_tokens
    layer_bytes = 2 * c.n_kv_heads * c.head_dim * 4 * total  # K and V, float32, batch 1, at full length
    tier, tmp, placement = None, None, None
    if policy == "full":
        hot_layers = None
        if hot_budget and hot_budget < layer_bytes * c.n_layers:
            from miro_runtime.storage import FlashTier
            if not cold_dir:
                tmp = tempfile.TemporaryDirectory(prefix="miro-kv-")
            tier = FlashTier(cold_dir or tmp.name)
            blocks = -(-total // block_tokens)
            fetch_block = measure_fetch(tier, "kv", 2 * c.n_kv_heads * c.head_dim * 4 * block_tokens)
            t0 = time.perf_counter()
            model(ids[:, :1])
            compute = (time.perf_counter() - t0) / c.n_layers  # one layer at one token, measured
            costs = [LayerCost(layer_bytes, fetch_block * blocks, compute) for _ in range(c.n_layers)]
            # cold layers keep their unfinished tail block in RAM: reserve that before placing layers
            tails = c.n_layers * 2 * c.n_kv_heads * c.head_dim * 4 * (block_tokens - 1)
            if hot_budget < tails:
                raise ValueError(f"--hot-budget {hot_budget} B is below what the cold layers' tail blocks need "
                                 f"({tails} B at --block-tokens {block_tokens})")
            placement = plan(costs, hot_budget - tails)
            hot_layers = placement.hot
        cache = TieredKVCache(c.n_layers, c.n_kv_heads, c.head_dim, cold=tier, hot_layers=hot_layers,
                              block_tokens=block_tokens)
    else:
        if not hot_budget:
            raise ValueError(f"--policy {policy} needs --hot-budget BYTES")
        cache = TieredKVCache(c.n_layers, c.n_kv_heads, c.head_dim, policy=make_policy(policy),
                              hot_budget=hot_budget)
    try:
        t0 = time.perf_counter()
        chunk = cache.capacity_hint(ids.shape[1]) if hasattr(cache, "capacity_hint") else ids.shape[1]
        logits = None
        for s in range(0, ids.shape[1], chunk):
            logits = model(ids[:, s:s + chunk], s, cache)
        out = [int(logits[0, -1].argmax())]
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            logits = model(torch.tensor([[out[-1]]]), cache.seen, cache)
            out.append(int(logits[0, -1].argmax()))
        decode_s = time.perf_counter() - t1
        res = {"model": described, "policy": policy, "prompt_tokens": int(ids.shape[1]), "new_tokens": len(out),
               "text": bytes(out).decode("utf-8", "replace"), "tokens": out, "ttft_s": ttft,
               "tokens_per_s": (len(out) - 1) / decode_s if decode_s > 0 and len(out) > 1 else None,
               "hot_bytes": cache.hot_bytes(), "cold_bytes": cache.cold_bytes(), "hot_budget": hot_budget or None,
               "prefix_hits": 0, "kv_stats": dict(cache.stats)}
        if placement is not None:
            res["placement"] = {"hot_layers": list(placement.hot), "cold_layers": list(placement.cold),
                                "predicted_stall_s": placement.stall_s, "method": placement.method,
                                "costs": "fetch measured on the LMDB tier at start-up, compute on one token"}
        return res
    finally:
        cache.close()
        if tier is not None:
            tier.close()
        if tmp is not None:
            tmp.cleanup()
