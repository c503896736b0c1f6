"""Miro's selection rules: which profiled arm wins (choices.MIRO_RULES), and the tie-break that gives
ties a short profile cannot resolve to the larger memory hierarchy."""

from __future__ import annotations

import math

from miro_runtime.choices import MIRO_RULES as RULES
from miro_runtime.records import Candidate


def select(cands: list, rule: str = "top-half-acc-per-joule", eta: float = 0.5) -> Candidate:
    """The winner among ``cands`` (Candidates; joules = predicted task energy).

    The rule picks a winner; then ties the profile cannot resolve go to the larger memory
    hierarchy: among arms with the winner's epochs, at most 1.5x its predicted energy, whose accuracy
    lies within one binomial standard error (on ``n_val`` held-out samples) of the winner's, the one
    with the most RAM and flash (not under ``lowest-energy``, which asks for the cheapest). A
    short profile cannot show what a bigger episodic memory buys over a whole task (less forgetting),
    while the cheaper step of a smaller one always shows."""
    if not cands:
        raise ValueError("no profiled candidate to choose from")
    w = _rule_winner(cands, rule, eta)
    n_val = w.n_val
    if not n_val or rule == "lowest-energy":
        return w
    se = max(math.sqrt(w.acc * (1 - w.acc) / n_val), 1.0 / n_val)
    tied = [c for c in cands if c.knobs.epochs == w.knobs.epochs and c.acc >= w.acc - se
            and c.joules <= 1.5 * w.joules]
    return max(tied, key=lambda c: (c.knobs.memory, c.knobs.flash_budget or 0, c is w))


def _rule_winner(cands: list, rule: str, eta: float) -> Candidate:
    if rule == "lowest-energy":
        return min(cands, key=lambda c: c.joules)
    if rule == "acc-per-joule":  # the objective itself, with no accuracy floor
        return max(cands, key=lambda c: c.acc / max(c.joules, 1e-9))
    if rule == "highest-accuracy":
        return max(cands, key=lambda c: (c.acc, -c.joules))
    if rule == "zeus":  # cost = eta * E + (1 - eta) * P_max * T, per unit of accuracy
        pmax = max(c.joules / max(c.seconds, 1e-9) for c in cands)
        return min(cands, key=lambda c: (eta * c.joules + (1 - eta) * pmax * c.seconds) / max(c.acc, 1e-6))
    if rule != "top-half-acc-per-joule":
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    ranked = sorted(cands, key=lambda c: -c.acc)
    top = ranked[: max(1, math.ceil(len(ranked) / 2))]
    return max(top, key=lambda c: c.acc / max(c.joules, 1e-9))


def select_within_budget(cands: list, remaining_j: float, remaining_s: float = math.inf) -> tuple:
    """Under a user's energy budget: the most accurate arm whose predicted task energy fits what the
    task has left (``remaining_j``, J) -- accuracy per joule would reward doing little and leave a
    granted budget unspent -- and whose predicted training time fits its deadline (``remaining_s``).
    Ties (accuracy within one binomial standard error of the best: a short profile cannot tell them
    apart) go to the arm that trains most, the dearest that fits -- what a granted budget is for; the
    margin for the guard is the caller's (the evaluation reserve). No arm fits: the cheapest (the
    fastest when time is what binds), and the guard trims it. -> (winner Candidate, how it was chosen)."""
    if not cands:
        raise ValueError("no profiled candidate to choose from")
    fits = [c for c in cands if c.joules <= remaining_j and c.seconds <= remaining_s]
    if not fits:
        if any(c.joules <= remaining_j for c in cands):  # energy would do: time is what binds
            w = min(cands, key=lambda c: c.seconds)
            return w, f"no arm's predicted time fits the {remaining_s:.3g} s left: the fastest"
        w = min(cands, key=lambda c: c.joules)
        return w, f"no arm's predicted {w.joules:.3g} J or more fits the {remaining_j:.3g} J left: the cheapest"
    best = max(fits, key=lambda c: (c.acc, -c.joules))
    se = max(math.sqrt(best.acc * (1 - best.acc) / best.n_val), 1.0 / best.n_val) if best.n_val else 0.0
    w = max((c for c in fits if c.acc >= best.acc - se), key=lambda c: (c.joules, c.acc))
    left = f"the {remaining_j:.3g} J left" + (f" and the {remaining_s:.3g} s" if remaining_s < math.inf else "")
    return w, (f"the most accurate of {len(fits)} of {len(cands)} arms that fit {left}"
               + (f" (the one training most within one standard error, {se:.3f}, of {best.knobs.key()})"
                  if w is not best else ""))
