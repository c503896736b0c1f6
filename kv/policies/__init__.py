"""Eviction policies of the tiered KV cache, one file each. ``full`` keeps every token (the cache's
own behaviour); the lossy ones decide which tokens stay when a layer's share of the hot budget is
full: ``sink`` (StreamingLLM), ``h2o`` (heavy hitters + recent window), ``cascade`` (Cascading KV). ``topk``
(HiP-like) keeps every block in a cold tier and chooses per query which blocks attention sees."""

from ..names import POLICIES as NAMES
from .cascade import Cascade
from .h2o import H2O
from .sink import Sink
from .topk import TopK

POLICIES = {"sink": Sink, "h2o": H2O, "cascade": Cascade, "topk": TopK}
assert ("full", *POLICIES) == NAMES, "kv/names.py lists every policy (the daemon reads the names from there)"


def make_policy(name: str, **kw):
    if name == "full":
        if kw:
            raise ValueError(f"--policy full takes no options, got {', '.join(sorted(kw))}; leave --policy-opt out")
        return None
    if name not in POLICIES:
        raise ValueError(f"--policy {name}: not a KV policy; choose one of {', '.join(NAMES)}")
    try:
        return POLICIES[name](**kw)
    except ValueError as e:  # the policy names its own bounds; say where the values came from
        raise ValueError(f"--policy-opt: {e}; see each policy's options in `miro kv generate -h`") from None


def parse_options(name: str, pairs) -> dict:
    """``--policy-opt KEY=VALUE`` pairs -> keyword arguments of the policy, typed like its defaults;
    a ValueError naming the key otherwise (a policy's knobs live with the policy). Typed the way
    ``miro_runtime.config.typed`` types every written setting (msgspec's lax conversion of the stripped
    text, finite numbers only), calling msgspec directly: kv/ uses storage/ only, never miro_runtime's
    top package."""
    import inspect
    import math

    import msgspec
    if not pairs:
        return {}
    if name not in POLICIES:
        raise ValueError(f"--policy-opt: --policy {name} takes no options; leave --policy-opt out")
    params = {k: p.default for k, p in inspect.signature(POLICIES[name].__init__).parameters.items() if k != "self"}
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"--policy-opt {pair!r}: no value; give KEY=VALUE")
        if key not in params:
            raise ValueError(f"--policy-opt {key}: not an option of --policy {name}; its options are "
                             f"{', '.join(sorted(params))}")
        want = type(params[key])
        bad = ValueError(f"--policy-opt {key}={raw!r}: must be {want.__name__}; e.g. {key}={params[key]}")
        try:
            out[key] = msgspec.convert(raw.strip(), want, strict=False)
        except msgspec.ValidationError:
            raise bad from None
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise bad
    return out


__all__ = ["Sink", "H2O", "Cascade", "TopK", "POLICIES", "make_policy", "parse_options"]
