"""Eviction policies of the tiered KV cache, one file each. ``full`` keeps every token (the cache's
own behaviour); the lossy ones decide which tokens stay when a layer's share of the hot budget is
full: ``sink`` (StreamingLLM), ``h2o`` (heavy hitters + recent window), ``cascade`` (Cascading KV). ``topk``
(HiP-like) keeps every block in a cold tier and chooses per query which blocks attention sees."""

from .cascade import Cascade
from .h2o import H2O
from .sink import Sink
from .topk import TopK

POLICIES = {"sink": Sink, "h2o": H2O, "cascade": Cascade, "topk": TopK}


def make_policy(name: str, **kw):
    if name == "full":
        return None
    if name not in POLICIES:
        raise ValueError(f"unknown KV policy {name!r}; choose full or one of {sorted(POLICIES)}")
    return POLICIES[name](**kw)


__all__ = ["Sink", "H2O", "Cascade", "TopK", "POLICIES", "make_policy"]
