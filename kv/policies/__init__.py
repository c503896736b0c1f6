"""Eviction policies of the tiered KV cache, one file each. ``full`` keeps every token (the cache's
own behaviour); the lossy ones decide which tokens stay when a layer's share of the hot budget is
full: ``sink`` (StreamingLLM), ``h2o`` (heavy hitters + recent window)."""

from .h2o import H2O
from .sink import Sink

POLICIES = {"sink": Sink, "h2o": H2O}


def make_policy(name: str, **kw):
    if name == "full":
        return None
    if name not in POLICIES:
        raise ValueError(f"unknown KV policy {name!r}; choose full or one of {sorted(POLICIES)} "
                         "(cascade and topk are not built yet)")
    return POLICIES[name](**kw)


__all__ = ["Sink", "H2O", "POLICIES", "make_policy"]
