"""What a prefix store needs (LMCache): the deepest chunks of a hash chain go first -- a suffix is
useless without its prefix, a prefix serves every prompt that starts with it -- and among chunks of
one depth, the least recently used."""

import itertools


class SuffixFirst:
    name = "suffix-first"

    def __init__(self):
        self._depth, self._tick = {}, {}
        self._clock = itertools.count()

    def stored(self, key, meta=None):
        self._depth[key] = int((meta or {}).get("depth", 0))
        self._tick[key] = next(self._clock)

    def used(self, key):
        if key in self._tick:
            self._tick[key] = next(self._clock)

    def removed(self, key):
        self._depth.pop(key, None)
        self._tick.pop(key, None)

    def victims(self):
        return sorted(self._depth, key=lambda k: (-self._depth[k], self._tick[k]))
