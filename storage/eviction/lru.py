"""Least recently used first."""

from collections import OrderedDict


class LRU:
    name = "lru"

    def __init__(self):
        self._order = OrderedDict()

    def stored(self, key, meta=None):
        self._order[key] = None
        self._order.move_to_end(key)

    def used(self, key):
        if key in self._order:
            self._order.move_to_end(key)

    def removed(self, key):
        self._order.pop(key, None)

    def victims(self):
        """Keys in the order to evict them."""
        return list(self._order)
