"""The typed block interface the KV path (and later other users) lives on, in the spirit of
LMCache's storage backends: typed keys (model identity, layer, block hash), batched put returning a
future and batched get, pin/unpin (a pinned block is never evicted), a byte budget per namespace
with eviction by a policy object, close. ``BlockStore`` puts it over any blob ``Tier`` (the RAM blob
tier, the LMDB flash tier); ``TieredBlocks`` composes stores: reads walk hot -> RAM -> flash and
promote hits, writes go to every tier.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import BudgetError
from .eviction import LRU


@dataclass(frozen=True, order=True)
class BlockKey:
    model: str  # model identity (name + weights' digest, as the caller defines it)
    layer: int
    block: str  # a block hash (prefix chains) or index

    def encode(self) -> bytes:
        model = self.model if len(self.model) <= 200 else hashlib.sha256(self.model.encode()).hexdigest()
        return f"{model}\x1f{self.layer}\x1f{self.block}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> "BlockKey":
        model, layer, block = raw.decode().split("\x1f")
        return cls(model, int(layer), block)


class BlockStore:
    """One tier's typed view. Sizes and policy state live in memory; a flash tier's existing blocks
    are indexed at open (keys and sizes), so budgets and eviction hold across restarts."""

    def __init__(self, tier, policy_factory: Callable = LRU, budgets: Optional[dict] = None, name: str = "tier"):
        self.tier, self.name = tier, name
        self._policy_factory = policy_factory
        self._budgets = dict(budgets or {})
        self._sizes: dict = {}  # ns -> {BlockKey: bytes}
        self._policies: dict = {}
        self._pinned: dict = {}  # ns -> set of keys
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"blocks-{name}")
        self._closed = False

    # ------------------------------------------------------------------ bookkeeping
    def _ns(self, ns):
        if ns not in self._sizes:
            self._sizes[ns], self._policies[ns], self._pinned[ns] = {}, self._policy_factory(), set()
            try:
                raw_keys = self.tier.keys(ns)
            except NotImplementedError:  # a Tier that cannot list its keys: nothing known stored
                raw_keys = []
            for raw in raw_keys:  # blocks a previous process stored
                buf = self.tier.get(ns, raw)
                if buf is not None:
                    k = BlockKey.decode(bytes(raw))
                    self._sizes[ns][k] = len(buf)
                    self._policies[ns].stored(k)
        return self._sizes[ns]

    def set_budget(self, ns: str, max_bytes: Optional[int]) -> list:
        """-> keys evicted to fit the new budget."""
        with self._lock:
            self._budgets[ns] = max_bytes
            return self._enforce(ns)

    def bytes_used(self, ns: str) -> int:
        with self._lock:
            return sum(self._ns(ns).values())

    def keys(self, ns: str) -> list:
        with self._lock:
            return sorted(self._ns(ns))

    # ------------------------------------------------------------------ the interface
    def put_many(self, ns: str, items) -> Future:
        """items: [(BlockKey, bytes)] or [(BlockKey, bytes, meta dict)]. Written on this store's
        worker (a flash tier fsyncs); the future resolves to the keys evicted to make room, or raises
        BudgetError when pinned blocks leave no room."""
        items = [(it[0], bytes(it[1]), it[2] if len(it) > 2 else None) for it in items]
        for k, _, _ in items:
            if not isinstance(k, BlockKey):
                raise TypeError(f"block keys are BlockKey(model, layer, block), got {k!r}")
        return self._pool.submit(self._put, ns, items)

    def _put(self, ns, items):
        with self._lock:
            sizes = self._ns(ns)
            budget = self._budgets.get(ns)
            if budget is not None:
                need = max(len(v) for _, v, _ in items)
                pinned = sum(sizes[k] for k in self._pinned[ns] if k in sizes)
                if need + pinned > budget:
                    raise BudgetError(f"{self.name} namespace {ns!r}: a block of {need} B and {pinned} B pinned "
                                      f"exceed the budget of {budget} B")
            evicted = []
            for k, v, meta in items:  # one at a time: a batch larger than the budget keeps its last blocks
                self.tier.put(ns, k.encode(), v)
                sizes[k] = len(v)
                self._policies[ns].stored(k, meta)
                evicted += self._enforce(ns, protect={k})
            return evicted

    def get_many(self, ns: str, keys) -> list:
        """[bytes or None] in the order asked."""
        with self._lock:
            sizes = self._ns(ns)
            known = [k for k in keys if k in sizes]
            got = dict(zip(known, self.tier.get_many(ns, [k.encode() for k in known])))  # one read on LMDB
            out = []
            for k in keys:
                v = got.get(k)
                if v is not None:
                    self._policies[ns].used(k)
                out.append(None if v is None else bytes(v))
        return out

    def contains(self, ns: str, key: BlockKey) -> bool:
        with self._lock:
            return key in self._ns(ns)

    def pin(self, ns: str, key: BlockKey) -> None:
        with self._lock:
            if key not in self._ns(ns):
                raise KeyError(f"{self.name}: no block {key} in {ns!r} to pin")
            self._pinned[ns].add(key)

    def unpin(self, ns: str, key: BlockKey) -> None:
        with self._lock:
            self._ns(ns)
            self._pinned[ns].discard(key)
            self._enforce(ns)

    def delete(self, ns: str, key: BlockKey) -> bool:
        with self._lock:
            sizes = self._ns(ns)
            if key not in sizes:
                return False
            self.tier.delete(ns, key.encode())
            del sizes[key]
            self._policies[ns].removed(key)
            self._pinned[ns].discard(key)
            return True

    def _enforce(self, ns, protect=frozenset()) -> list:
        budget = self._budgets.get(ns)
        sizes = self._ns(ns)
        evicted = []
        if budget is None:
            return evicted
        used = sum(sizes.values())
        for k in self._policies[ns].victims():
            if used <= budget:
                break
            if k in self._pinned[ns] or k in protect:
                continue
            used -= sizes[k]
            self.delete(ns, k)
            evicted.append(k)
        return evicted

    def close(self):
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=True)


class TieredBlocks:
    """Stores composed fastest first: a read walks them in order and copies a hit into the faster
    ones (promotion); a write goes to every store (LMCache's write-all), so a faster store's
    eviction loses nothing the slower ones keep."""

    def __init__(self, stores: list):
        if not stores:
            raise ValueError("TieredBlocks needs at least one store")
        self.stores = stores
        self.hits = [0] * len(stores)
        self.misses = 0

    def put_many(self, ns, items) -> list:
        futs = [s.put_many(ns, items) for s in self.stores]
        return [f.result() for f in futs]  # evicted keys per store

    def get_many(self, ns, keys) -> list:
        out = [None] * len(keys)
        todo = list(range(len(keys)))
        for depth, store in enumerate(self.stores):
            if not todo:
                break
            vals = store.get_many(ns, [keys[i] for i in todo])
            found = [(i, v) for i, v in zip(todo, vals) if v is not None]
            for i, v in found:
                out[i] = v
            self.hits[depth] += len(found)
            if found and depth:
                for upper in self.stores[:depth]:  # promote into the faster stores
                    try:
                        upper.put_many(ns, [(keys[i], v) for i, v in found]).result()
                    except BudgetError:
                        pass  # pinned blocks fill it: served from below, not promoted
            todo = [i for i in todo if out[i] is None]
        self.misses += len(todo)
        return out

    def close(self):
        for s in self.stores:
            s.close()
