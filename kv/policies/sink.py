"""StreamingLLM (Xiao et al.): keep the first ``sinks`` tokens (attention sinks) and the most recent
ones; positions are assigned by place in the cache (keys are stored before RoPE for that)."""

import torch

from .base import Policy


class Sink(Policy):
    name = "sink"
    needs_scores = False
    reposition = True  # RoPE positions = place in the cache

    def __init__(self, sinks: int = 4):
        if sinks < 0:
            raise ValueError(f"sink: sinks must be >= 0, got {sinks}")
        self.sinks = sinks

    def keep(self, abs_pos: torch.Tensor, scores, n: int) -> torch.Tensor:
        """Indices (sorted) of the n tokens to keep among S cached ones (abs_pos ascending)."""
        S = abs_pos.shape[0]
        s = min(self.sinks, n)
        return torch.cat([torch.arange(s), torch.arange(S - (n - s), S)]) if n > s else torch.arange(s)
