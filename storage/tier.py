"""The one small interface every tier speaks (LMCache-style), plus a RAM blob tier.

A tier stores values by key inside a namespace and accounts bytes per namespace. The sample
tiers (slotted RAM, LMDB flash) add sample-shaped methods on top; the KV-cache path uses only
this interface, so the same RAM and flash tiers can hold its opaque blobs.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Optional

from .errors import BudgetError, BadRecordError


def blob_key(key) -> bytes:
    """Normalise a key: ints become 8-byte big-endian (sorted order = numeric order)."""
    if isinstance(key, int):
        if key < 0:
            raise BadRecordError(f"key {key} is negative")
        return key.to_bytes(8, "big")
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or not 0 < len(key) <= 511:
        raise BadRecordError(f"key {key!r} must be 1..511 bytes (LMDB's limit)")
    return bytes(key)


class Tier(ABC):
    """put / get / contains / delete by key inside a namespace; bytes used per namespace."""

    @abstractmethod
    def put(self, namespace: str, key, value: bytes) -> None: ...

    @abstractmethod
    def get(self, namespace: str, key) -> Optional[bytes]: ...

    @abstractmethod
    def contains(self, namespace: str, key) -> bool: ...

    @abstractmethod
    def delete(self, namespace: str, key) -> bool: ...

    @abstractmethod
    def bytes_used(self, namespace: str) -> int: ...

    def get_many(self, namespace: str, keys, view: bool = False) -> list:
        """[bytes or None] in the order asked (tiers with a cheaper batch path override this);
        ``view`` lets a tier answer with read-only memoryviews instead of copies."""
        return [self.get(namespace, k) for k in keys]

    def put_many(self, namespace: str, items) -> None:
        for k, v in items:
            self.put(namespace, k, v)

    def delete_many(self, namespace: str, keys) -> int:
        """Delete several keys; how many existed (tiers with a cheaper batch path override this)."""
        return sum(bool(self.delete(namespace, k)) for k in keys)

    def keys(self, namespace: str) -> list:
        """Every key in a namespace (bytes). Tiers that cannot list say so."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its keys")


class RamBlobTier(Tier):
    """Bytes in a dict per namespace, with an optional byte budget per namespace (LRU order kept,
    so a manager above can pick what to demote; this tier itself refuses rather than evicts)."""

    def __init__(self, budgets: Optional[dict] = None):
        self._data: dict[str, OrderedDict] = {}
        self._bytes: dict[str, int] = {}
        self._budgets = dict(budgets or {})
        self._lock = threading.Lock()

    def set_budget(self, namespace: str, max_bytes: Optional[int]) -> None:
        with self._lock:
            self._budgets[namespace] = max_bytes

    def put(self, namespace, key, value):
        k, value = blob_key(key), bytes(value)
        with self._lock:
            ns = self._data.setdefault(namespace, OrderedDict())
            used = self._bytes.get(namespace, 0) - len(ns.get(k, b""))
            budget = self._budgets.get(namespace)
            if budget is not None and used + len(value) > budget:
                raise BudgetError(f"RAM namespace {namespace!r}: {len(value)} B for key {k!r} exceed "
                                  f"the budget ({used}/{budget} B used)")
            ns[k] = value
            ns.move_to_end(k)
            self._bytes[namespace] = used + len(value)

    def get(self, namespace, key):
        k = blob_key(key)
        with self._lock:
            ns = self._data.get(namespace)
            if ns is None or k not in ns:
                return None
            ns.move_to_end(k)
            return ns[k]

    def contains(self, namespace, key):
        with self._lock:
            return blob_key(key) in self._data.get(namespace, {})

    def delete(self, namespace, key):
        k = blob_key(key)
        with self._lock:
            ns = self._data.get(namespace)
            if ns is None or k not in ns:
                return False
            self._bytes[namespace] -= len(ns.pop(k))
            return True

    def bytes_used(self, namespace):
        with self._lock:
            return self._bytes.get(namespace, 0)

    def keys(self, namespace):
        with self._lock:
            return sorted(self._data.get(namespace, {}))
