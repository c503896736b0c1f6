"""The order in which Miro profiles arms: Gaussian Thompson sampling over a sliding window, so not
every task re-profiles every arm."""

from __future__ import annotations

import math

import numpy as np


class ThompsonBandit:
    """Gaussian Thompson sampling over discrete arms with a sliding window of recent rewards
    (conjugate normal update; arms with fewer than ``min_obs`` observations go first)."""

    def __init__(self, arms: list, window: int = 4, min_obs: int = 2, seed: int = 0):
        self.arms, self.window, self.min_obs = arms, window, min_obs
        self.obs: dict = {a: [] for a in arms}
        self.rng = np.random.default_rng(seed)

    def observe(self, arm: str, reward: float):
        self.obs[arm] = (self.obs[arm] + [float(reward)])[-self.window:]

    def order(self) -> list:
        """Arms in the order to profile them now."""
        under = [a for a in self.arms if len(self.obs[a]) < self.min_obs]
        self.rng.shuffle(under)
        under.sort(key=lambda a: len(self.obs[a]))
        seen = [a for a in self.arms if len(self.obs[a]) >= self.min_obs]
        all_r = [r for a in seen for r in self.obs[a]]
        prior_sd = float(np.std(all_r)) if len(all_r) > 1 else 1.0
        draws = {}
        for a in seen:
            r = np.asarray(self.obs[a])
            sd = max(float(r.std()) if r.size > 1 else prior_sd, 1e-6)
            draws[a] = self.rng.normal(r.mean(), sd / math.sqrt(r.size))
        return under + sorted(seen, key=lambda a: -draws[a])

    def state(self) -> dict:
        return {"obs": self.obs, "rng": self.rng.bit_generator.state}  # a resumed run draws on

    def load_state(self, st: dict):
        self.obs = {a: list(st["obs"].get(a, [])) for a in self.arms}
        if "rng" in st:  # checkpoints from before it was kept start the stream afresh
            self.rng.bit_generator.state = st["rng"]
