"""Miro v2's cost model check: each task's realised training energy against what the decision predicted
for it (joules ~ c x samples x epochs, c the profiled joules per sample, with replay after task 0). A
change in load (another process on the CPU, a throttled clock) or in the task moves c for every arm at
once; when the realised/predicted ratio leaves its own noise, the profiled costs are rescaled by it
before the next decision, so the change is seen within one task without profiling every arm again
(as Zeus and Ekya refit their cost from a task's first batches)."""

from __future__ import annotations

import math
from typing import Optional

MIN_MOVE = 0.15  # a ratio within 15% of 1 is the estimate meter's run-to-run spread on this machine, not a change
NOISE_SDS = 2.0  # beyond this many standard deviations of the past log-ratios the cost has moved
# a ratio beyond 1.5x either way is a change however noisy the past tasks were: under another process's load
# the time per sample of consecutive tasks spreads so much that two standard deviations of it reached the
# 2x of the load ending, and the cost model kept the loaded time for the rest of the stream (bench/miro_v2.py,
# S3 and S4: the hog's end went undetected in most seeds). A refit on a spurious big move costs little: the
# next task is measured against it and refits back
MAX_MOVE = 0.5


class CostCheck:
    """The log-ratios realised/predicted of past tasks, and the refit they call for."""

    def __init__(self, window: int = 8):
        self.window = window
        self.log_ratios: list = []  # after any refit: measured against the refitted costs

    def noise(self) -> float:
        """How far (in log-ratio) a task may land from its prediction without the cost having moved."""
        r = self.log_ratios
        sd = math.sqrt(sum((x - sum(r) / len(r)) ** 2 for x in r) / (len(r) - 1)) if len(r) >= 3 else 0.0
        return min(math.log1p(MAX_MOVE), max(math.log1p(MIN_MOVE), NOISE_SDS * sd))

    def observe(self, predicted_j: Optional[float], realised_j: Optional[float]) -> Optional[float]:
        """One task's prediction and outcome -> the factor to rescale every profiled cost by (None: the
        cost held within its noise, or either figure is unknown)."""
        if not predicted_j or not realised_j or predicted_j <= 0 or realised_j <= 0:
            return None
        lr = math.log(realised_j / predicted_j)
        moved = abs(lr) > self.noise()
        self.log_ratios = (self.log_ratios + [0.0 if moved else lr])[-self.window:]
        return math.exp(lr) if moved else None

    def state(self) -> dict:
        return {"log_ratios": list(self.log_ratios)}

    def load_state(self, st: dict) -> None:
        self.log_ratios = list(st.get("log_ratios", []))
