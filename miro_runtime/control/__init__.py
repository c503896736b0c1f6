"""Controllers that retune the engine's knobs between and during tasks (Miro). The engine sees them only
through the ``Controller`` protocol of ``miro_runtime.engine.hooks``; sessions build one here."""

from __future__ import annotations

from typing import Optional


def make_controller(cfg) -> Optional[object]:
    """The controller a run configuration asks for (``learning.miro``), or None."""
    if not cfg.miro:
        return None
    from miro_runtime.control.miro import MiroController
    return MiroController(cfg, rule=cfg.miro_rule, search=cfg.miro_search, budget_frac=cfg.miro_budget)
