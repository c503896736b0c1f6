"""What ``run_generate`` drives for a model held in this package's decoder (``kv/llama.py``): its KV
cache, with keys entering before RoPE so that every policy (lossy ones included) can re-position them,
and last-position logits. ``generate.Builtin`` (random weights) and ``pretrained.Pretrained`` (weights
from a package) differ only in where the weights and the tokenizer come from."""

from __future__ import annotations

from functools import partial

from .cache import TieredKVCache
from .llama import Llama, rope


class Decoder:
    """Subclasses set ``model`` (through ``_hold``), ``described``, ``note``, ``tokenizer`` and
    implement ``encode``/``decode``."""

    def _hold(self, model: Llama) -> None:
        self.model = model
        c = model.cfg
        self.n_layers, self.n_kv_heads, self.head_dim = c.n_layers, c.n_kv_heads, c.head_dim
        self.rope = partial(rope, theta=c.rope_theta)

    def make_cache(self, **kw) -> TieredKVCache:
        return TieredKVCache(self.n_layers, self.n_kv_heads, self.head_dim, rope=self.rope, **kw)

    def tiered(self, cache) -> TieredKVCache:  # what make_cache returned is the tiered cache itself
        return cache

    def feed(self, cache, layer: int, K, V) -> None:  # stored prefix blocks into the cache
        cache.update(layer, K, V)

    def forward(self, ids, start: int, cache):  # -> (1, 1, V): callers read the last position's logits only
        return self.model(ids, start, cache, last_only=True)
