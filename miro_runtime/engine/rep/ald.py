"""ALD (REP, Jeon et al.): adaptive layer dropping. Keep layer l at clock t with probability
theta_{t,l} = alpha(l) * ((1 - theta_bar) * exp(-gamma * t) + theta_bar), alpha(l) = alpha when the
layer merges more than tau tokens (AToM), else 1; one Bernoulli draw per layer per training step.
Layers that carry prompts are never dropped; evaluation runs every layer.
"""

from __future__ import annotations

import math

import numpy as np


def keep_probability(t: float, merged: int, theta_bar: float, gamma: float, alpha: float, tau: int) -> float:
    """theta_{t,l} for a layer that merges ``merged`` tokens."""
    a = alpha if merged > tau else 1.0
    return a * ((1.0 - theta_bar) * math.exp(-gamma * t) + theta_bar)


def keep_probabilities(t: float, merges: list, prompt_layers, theta_bar: float, gamma: float, alpha: float,
                       tau: int) -> list:
    """theta per layer (0-based), 1.0 for the layers carrying prompts."""
    return [1.0 if i in prompt_layers else keep_probability(t, m, theta_bar, gamma, alpha, tau)
            for i, m in enumerate(merges)]


def draw(probs: list, rng: np.random.Generator) -> list:
    """One Bernoulli draw per layer: True = run the layer this step."""
    u = rng.random(len(probs))
    return [bool(x < p) for x, p in zip(u, probs)]
