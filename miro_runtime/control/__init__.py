"""Controllers that retune the engine's knobs between and during tasks (Miro). The engine sees them only
through the ``Controller`` hooks of ``miro_runtime.engine.hooks``; sessions build one here.

  knobs.py     what an arm sets (Knobs) and the default grid of arms
  rules.py     the selection rules (which profiled arm wins)
  bandit.py    the order arms are profiled in (Thompson sampling over a sliding window)
  pressure.py  the resource pressures that trigger a mid-task re-decision
  profile.py   one profile of one arm, and the cost model the profiles calibrate
  miro.py      MiroController: the hooks, profile rounds, reactions, adoption
  plan.py      under a budget or deadline: the choice of arm, and the check of the cost model (cost.py)
"""

from __future__ import annotations

from typing import Optional

from miro_runtime.engine.hooks import Controller


def make_controller(cfg) -> Optional[Controller]:
    """The controller a run configuration asks for (``learning.miro``), or None."""
    if not cfg.miro:
        return None
    from miro_runtime.control.miro import MiroController
    return MiroController(cfg, rule=cfg.miro_rule, search=cfg.miro_search, budget_frac=cfg.miro_budget)
