"""H2O (Zhang et al.): keep the ``recent`` most recent tokens plus the heavy hitters -- the tokens
that have received the most attention so far (accumulated over queries, averaged over heads and the
batch); scores are compacted with the cache. Positions stay the tokens' own."""

import torch

from .base import Policy


class H2O(Policy):
    name = "h2o"
    needs_scores = True
    reposition = False

    def __init__(self, recent: int = 32):
        if recent < 0:
            raise ValueError(f"h2o: recent must be >= 0, got {recent}")
        self.recent = recent

    def keep(self, abs_pos: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
        S = abs_pos.shape[0]
        r = min(self.recent, n)
        recent = torch.arange(S - r, S)
        rest = n - r
        if rest <= 0:
            return recent
        heavy = scores[: S - r].topk(rest).indices  # the heaviest among the older tokens
        return torch.cat([heavy.sort().values, recent])
