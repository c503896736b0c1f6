"""``miro kv generate``: greedy generation through the tiered KV cache, with the planner choosing the
hot layers (lossless policy) from costs measured here at start-up, or a lossy policy keeping every
layer within the hot budget. Reports tokens/s, time to first token and where the KV lived."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Optional

import torch

from .cache import TieredKVCache
from .decoder import Decoder
from .llama import Llama, LlamaConfig
from .names import BUILTIN_MODELS, BYTE_TOKENS, PRETRAINED_MODELS, RANDOM_INIT
from .planner import LayerCost, Replanner
from .policies import make_policy
from .prefix import PrefixStore
from .sizes import kv_bytes

BUILTIN = {"builtin-tiny": LlamaConfig()}
assert tuple(BUILTIN) == BUILTIN_MODELS, "kv/names.py lists every built-in model (--help and status read it)"
# KV blocks are a cache: everything in them can be recomputed, and each carries a checksum (a prefix
# block also its sha256), so their LMDB environment commits without fsync -- a crash may lose the
# last commits, never hand back a wrong block.
KV_SYNC = "nosync"
REPLAN_EVERY = 16  # decode steps between placement solves (a solve takes well under a millisecond)


class Builtin(Decoder):
    """The built-in decoder: bytes are its tokens; keys reach the cache before RoPE (any policy)."""

    def __init__(self, name: str, seed: int):
        torch.manual_seed(seed)  # random weights: the mechanics, not the text, are what it shows
        self._hold(Llama(BUILTIN[name]).eval())
        self.described = f"{name} (random init, seed {seed})"  # its identity in prefix keys: keep it stable
        self.note, self.tokenizer = RANDOM_INIT, BYTE_TOKENS

    def encode(self, prompt: bytes) -> list:
        return list(prompt)

    def decode(self, tokens: list) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8", "replace")


class HFModel:
    """A local transformers model through ``kv.hf.TieredCache`` (lossless policy only)."""

    def __init__(self, path: str):
        from .hf import load_local
        self.model, self.tok = load_local(path)
        self._cache_arg = None
        self.described = f"transformers {type(self.model).__name__} at {os.path.abspath(path)}"
        self.note = None
        self.tokenizer = f"the model's own ({type(self.tok).__name__})" if self.tok else BYTE_TOKENS
        c = self.model.config.get_text_config(decoder=True)
        self.n_layers = c.num_hidden_layers
        self.n_kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    def encode(self, prompt: bytes) -> list:
        return self.tok(prompt.decode("utf-8", "replace"))["input_ids"] if self.tok else list(prompt)

    def decode(self, tokens: list) -> str:
        if self.tok:
            return self.tok.decode(tokens)
        return bytes(t for t in tokens if t < 256).decode("utf-8", "replace")

    def make_cache(self, policy=None, **kw):
        if policy is not None:
            raise ValueError(f"--policy {policy.name}: a transformers model hands the cache keys after RoPE; "
                             "only --policy full (lossless, with cold layers) runs on --model PATH")
        from .hf import TieredCache
        return TieredCache(self.model.config, **{k: v for k, v in kw.items() if k != "hot_budget"})

    def tiered(self, cache) -> TieredKVCache:  # the transformers Cache wraps the TieredKVCache
        return cache.tiered

    def feed(self, cache, layer: int, K, V) -> None:
        cache.layers[layer].update(K, V)

    def forward(self, ids, start: int, cache):
        if self._cache_arg is None:  # transformers 5.24 renamed past_key_values to cache (5.40 drops the old name)
            import inspect
            self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
                else "past_key_values"
        # logits_to_keep=1: the last position's logits only, as the built-in path (a long prefill's are huge)
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}).logits


def load_model(name: str, seed: int = 0, cache_root: Optional[str] = None):
    """``name``: a built-in model, a pretrained one (dequantised into ``cache_root`` on first use), or a
    local transformers model directory."""
    if name in BUILTIN:
        return Builtin(name, seed)
    if name in PRETRAINED_MODELS:
        from miro_runtime.packaged import AssetMissing
        try:
            from .pretrained import load_pretrained
            return load_pretrained(name, cache_root)
        except (ImportError, AssetMissing) as e:  # says which package and the pip line
            raise ValueError(f"--model {name}: {e}") from None
    if os.path.isdir(name):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ValueError(f"--model {name}: local transformers models need the llm extra "
                             "(pip install 'miro-runtime[llm]')") from None
        try:
            return HFModel(name)
        except OSError as e:  # transformers says what is missing or unreadable; a path, not a disk, problem
            why = " ".join(str(e).split()).rstrip(".")
            raise ValueError(f"--model {name}: {why}; give a directory that transformers can load") from None
    raise ValueError(f"--model {name}: not a built-in or pretrained model nor a local directory; give "
                     f"{', '.join(BUILTIN_MODELS + PRETRAINED_MODELS)} or the directory of a transformers model")


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
                 hot_budget: int = 0, cold_dir: str = "", block_tokens: int = 16, seed: int = 0,
                 store_dir: str = "", prefix_cap: Optional[int] = None, tier=None, model=None,
                 reuse_prefixes: bool = False, policy_opts: Optional[dict] = None,
                 model_cache: Optional[str] = None) -> dict:
    """``store_dir``: a persistent LMDB directory for cold layers and reusable prompt prefixes.
    A long-lived caller (the daemon) passes its own open ``tier`` and loaded ``model`` instead;
    ``reuse_prefixes`` then keeps prefixes in that tier, and this generation's cold blocks are
    deleted from it afterwards. ``model_cache``: where a pretrained model's dequantised cache dir lies."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: at least 1 token is generated; give 1 or more")
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character")
    pol = make_policy(policy, **(policy_opts or {}))  # bad options named before anything is loaded
    model = model or load_model(model_name, seed, model_cache)
    described, c = model.described, model
    owned_tier = tier is None
    ids = torch.tensor([model.encode(prompt)], dtype=torch.long)  # (1, T)
    total = ids.shape[1] + max_new_tokens
    layer_bytes = kv_bytes(total, c.n_kv_heads, c.head_dim)  # K and V, float32, batch 1, at full length
    tmp, placement, prefixes, replanner, moves = None, None, None, None, []
    cold_dir = cold_dir or store_dir
    if store_dir or (reuse_prefixes and tier is not None):
        if policy != "full":
            raise ValueError(f"--store: keeps the prefixes of lossless caches, and --policy {policy} evicts tokens; "
                             "use --policy full with --store, or leave --store out")
        if tier is None:
            from miro_runtime.storage import FlashTier
            tier = FlashTier(store_dir, sync_mode=KV_SYNC)
        prefixes = PrefixStore(tier, described, c.n_layers, block_tokens, prefix_cap)
    if policy == "full":
        hot_layers = None
        if hot_budget and hot_budget < layer_bytes * c.n_layers:
            if tier is None:
                from miro_runtime.storage import FlashTier
                if not cold_dir:
                    tmp = tempfile.TemporaryDirectory(prefix="miro-kv-")
                tier = FlashTier(cold_dir or tmp.name, sync_mode=KV_SYNC)
            fetch_block = measure_fetch(tier, "kv", kv_bytes(block_tokens, c.n_kv_heads, c.head_dim))
            t0 = time.perf_counter()
            model.forward(ids[:, :1], 0, None)
            compute = (time.perf_counter() - t0) / c.n_layers  # one layer at one token, measured

            def costs_for(tokens):  # every layer's KV at ``tokens``, and the fetch of all its blocks
                nbytes = kv_bytes(tokens, c.n_kv_heads, c.head_dim)
                return [LayerCost(nbytes, fetch_block * -(-tokens // block_tokens), compute)
                        for _ in range(c.n_layers)]
            # cold layers keep their unfinished tail block in RAM: reserve that before placing layers
            tails = c.n_layers * kv_bytes(block_tokens - 1, c.n_kv_heads, c.head_dim)
            if hot_budget < tails:
                raise ValueError(f"--hot-budget {hot_budget} B is below what the cold layers' tail blocks need "
                                 f"({tails} B in {block_tokens}-token blocks); give --hot-budget {tails} or more")
            # planned for the next REPLAN_EVERY tokens, solved again as the sequence grows: early on more
            # layers stay hot, later they go down as their KV outgrows the budget
            replanner = Replanner(grow_tokens=REPLAN_EVERY)
            placement = replanner.get(costs_for, hot_budget - tails, ids.shape[1] + REPLAN_EVERY)
            hot_layers = placement.hot
        cache = model.make_cache(cold=tier, hot_layers=hot_layers, block_tokens=block_tokens)
    else:
        if not hot_budget:
            raise ValueError(f"--policy {policy}: a lossy policy keeps the KV within a hot budget; give "
                             "--hot-budget BYTES (e.g. 60000)")
        cache = model.make_cache(policy=pol, hot_budget=hot_budget, block_tokens=block_tokens)
    kv = model.tiered(cache)
    try:
        t0 = time.perf_counter()
        done, hits = 0, 0
        if prefixes is not None:  # reuse a stored prefix (leaving at least one token to compute)
            got = prefixes.lookup(ids[0].tolist(), limit=(ids.shape[1] - 1) // block_tokens)
            if got:
                hits = len(got[0])
                for layer in range(c.n_layers):
                    model.feed(cache, layer, torch.cat([b[0] for b in got[layer]], dim=2),
                               torch.cat([b[1] for b in got[layer]], dim=2))
                done = hits * block_tokens
        logits = None
        for s, e in kv.prefill_spans(done, ids.shape[1]):
            logits = model.forward(ids[:, s:e], s, cache)
        out = [int(logits[0, -1].argmax())]
        ttft = time.perf_counter() - t0
        if prefixes is not None:  # after the first token: storing is not on the user's critical path
            prefixes.store(ids[0].tolist(), kv.layer_kv)
        t1 = time.perf_counter()
        peak = kv.hot_bytes()
        for _ in range(max_new_tokens - 1):
            if replanner is not None and kv.seen % REPLAN_EVERY == 0:
                new = replanner.get(costs_for, hot_budget - tails, kv.seen + REPLAN_EVERY)
                if set(new.hot) != kv.hot:
                    moves.append({"at_token": kv.seen, **kv.set_hot(new.hot)})
                placement = new
            logits = model.forward(torch.tensor([[out[-1]]]), kv.seen, cache)
            out.append(int(logits[0, -1].argmax()))
            peak = max(peak, kv.hot_bytes())
        decode_s = time.perf_counter() - t1
        res = {"model": described, "policy": policy, "prompt_tokens": int(ids.shape[1]), "new_tokens": len(out),
               "text": model.decode(out), "tokens": out, "model_note": model.note, "tokenizer": model.tokenizer,
               "ttft_s": ttft,
               "tokens_per_s": (len(out) - 1) / decode_s if decode_s > 0 and len(out) > 1 else None,
               "hot_bytes": kv.hot_bytes(), "peak_hot_bytes": peak, "cold_bytes": kv.cold_bytes(),
               "hot_budget": hot_budget or None,
               "prefix_hits": hits, "prefix_tokens_reused": done, "kv_stats": dict(kv.stats)}
        if prefixes is not None:
            res["prefix_store"] = dict(prefixes.stats)
        if placement is not None:
            res["placement"] = {"hot_layers": list(placement.hot), "cold_layers": list(placement.cold),
                                "predicted_stall_s": placement.stall_s, "method": placement.method,
                                "solves": replanner.solves, "moves": moves,
                                "costs": "fetch measured on the LMDB tier at start-up, compute on one token"}
        return res
    finally:
        kv.close(drop_blocks=not owned_tier)
        if tier is not None and owned_tier:
            tier.close()
        if tmp is not None:
            tmp.cleanup()
