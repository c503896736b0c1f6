"""Eviction as policy objects (one file each) for the typed block store: a policy is told when a
block is stored, read or removed, and names victims in order when a namespace is over its budget."""

from .lru import LRU
from .suffix_first import SuffixFirst

POLICIES = {"lru": LRU, "suffix-first": SuffixFirst}

__all__ = ["LRU", "SuffixFirst", "POLICIES"]
