"""What Miro tunes: the knobs of one arm (RAM episodic memory size, flash budget, swap ratio, epochs
per task, and the strategy's own knobs where it has some -- REP's AToM r_max and ALD theta_bar), and
the default grid of arms around a run's configuration."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Knobs:
    memory: int  # RAM episodic memory, samples
    flash_budget: Optional[int]  # flash tier budget, records (None: unbounded)
    swap_ratio: float  # share of each replay batch CarM swaps out
    epochs: int  # epochs per task
    method: tuple = ()  # the strategy's own knobs, ((name, value), ...) sorted by name

    def key(self) -> str:
        k = f"mem={self.memory},flash={self.flash_budget},swap={self.swap_ratio},epochs={self.epochs}"
        return k + "".join(f",{n}={v}" for n, v in self.method)

    @classmethod
    def from_dict(cls, d: dict) -> "Knobs":
        return cls(**{**d, "method": tuple(tuple(p) for p in d.get("method", ()))})


def method_knobs(cfg) -> tuple:
    """The strategy's own tunable knobs at their configured values (REP: r_max, theta_bar), or ()."""
    if cfg.strategy not in ("rep-l2p", "rep-dualprompt"):
        return ()
    from miro_runtime.engine.strategies import STRATEGIES
    from miro_runtime.engine.strategies.prompt import parse_options
    o = parse_options(STRATEGIES[cfg.strategy].Options, cfg.method, cfg.strategy)
    return (("r_max", o.r_max if o.atom else None), ("theta_bar", o.theta_bar if o.ald else None))


def default_grid(cfg) -> list:
    epochs = sorted({1, cfg.epochs})
    base = method_knobs(cfg)
    if base:  # a prompt method: no replay memory; its own knobs instead (one switched off stays off)
        r, th = dict(base)["r_max"], dict(base)["theta_bar"]
        rs = sorted({r // 2, r, r * 2}) if r is not None else [None]
        ths = sorted({th, round(min(1.0, th + 0.25), 4)}) if th is not None else [None]
        return [Knobs(cfg.memory, cfg.flash_budget, cfg.swap_ratio, e, (("r_max", rr), ("theta_bar", tt)))
                for rr, tt, e in itertools.product(rs, ths, epochs)]
    mems = sorted({max(2, cfg.memory // 2), cfg.memory, cfg.memory * 2})
    flashes = sorted({b for b in (cfg.flash_budget and cfg.flash_budget // 4, cfg.flash_budget) if b})
    return [Knobs(m, f, cfg.swap_ratio, e) for m, f, e in itertools.product(mems, flashes or [None], epochs)]
