"""What the tiered cache asks of a lossy KV policy, every attribute and hook declared once with the
default most policies want (as LMCache's abstract backend does): the cache never probes a policy."""

from __future__ import annotations


class Policy:
    name = "base"
    needs_scores = False  # the cache sums the attention each cached token receives (``observe``)
    reposition = False  # RoPE positions are places in the cache (True) or the tokens' own (False)
    per_layer = False  # stateful: the cache keeps one copy of the policy per layer
    stores_all = False  # every block kept in a cold tier; the policy chooses what attention sees (topk)
    per_head = False  # each KV head keeps its own tokens (``keep`` takes and gives (Hkv, S)); needs reposition

    def received(self, probs):
        """(B, Hkv, G, S) attention each cached token received this step (G query heads per KV head), summed
        over the step's queries -> (S,), or (Hkv, S) for a per-head policy (default: the mean over heads and
        the batch; one kept set serves every head and the batch)."""
        return probs.mean(dim=(0, 1, 2))

    def accumulate(self, old, new):
        """The attention each cached token has received, given the newest step's (default: the sum)."""
        return old + new

    def keep(self, abs_pos, scores, n: int):
        """Indices (sorted) of at most n tokens to keep among the cached ones (abs_pos ascending)."""
        raise NotImplementedError(f"policy {self.name} chooses blocks, it does not evict tokens")
