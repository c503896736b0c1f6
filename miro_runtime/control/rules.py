"""Miro's selection rules: which profiled arm wins (choices.MIRO_RULES), the tie-break that gives
ties a short profile cannot resolve to the larger memory hierarchy, and under a user's budget the arm
and training length that spend it (``plan_within_budget``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from miro_runtime.choices import MIRO_RULES as RULES
from miro_runtime.records import Candidate


def select(cands: list, rule: str = "acc-per-joule", eta: float = 0.5) -> Candidate:
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


@dataclass(frozen=True)
class ArmCost:
    """One arm as a budget plan sees it: what a trained sample costs at its knobs (joules and seconds;
    None before anything was measured) and, where profiled, its accuracy on ``n_val`` held-out samples."""
    knobs: Any
    j_per_sample: Optional[float]
    s_per_sample: Optional[float]
    acc: Optional[float] = None
    n_val: Optional[int] = None


def capacity(kn) -> tuple:
    """How much an arm keeps of the past and of the model: the larger memory and flash, and for a
    prompt method less token merging (r_max) and less layer dropping (a higher theta_bar)."""
    m = dict(kn.method)
    return (kn.memory, kn.flash_budget or 0, -(m.get("r_max") or 0), m.get("theta_bar") or 1.0)


def shrinks(kn, floor) -> bool:
    """Whether adopting ``kn`` would drop samples kept now: less RAM memory or a smaller flash budget
    than ``floor`` (the Knobs running; None: nothing kept yet). Method knobs undo without loss."""
    if floor is None:
        return False
    flash = (math.inf if kn.flash_budget is None else kn.flash_budget)
    return kn.memory < floor.memory or flash < (math.inf if floor.flash_budget is None else floor.flash_budget)


def plan_within_budget(arms: list, n: int, remaining_j: float, remaining_s: float = math.inf,
                       margin: float = 0.05, current=None, batch: int = 1) -> tuple:
    """Under a user's energy budget or deadline: the arm and the training length (in samples) that
    predict the most accuracy from what the task has left (``remaining_j`` J, ``remaining_s`` s; the
    evaluation's reserve already out), for a task of ``n`` new samples, ``current`` the Knobs running
    (None: none yet), ``batch`` the learner's batch size. -> (Knobs, planned samples or None for the arm's
    whole epochs, how it was chosen).

    The accuracy a budget buys is predicted from the profiles where they can tell arms apart, and from
    a prior where they cannot: a profile of a few dozen samples measures the new task's accuracy after
    a few steps, not what a bigger episodic memory saves from forgetting over a stream, nor what the
    last of five epochs adds -- both grow with the stream, and both cost joules a profile does show,
    so choosing on the profile's accuracy alone (or per joule) takes the small, short arms. So:

    - an arm is out when a profiled arm keeping at least as much (``capacity``) measured better by
      more than two standard errors (a smaller memory's better profile is the short view's bias, no
      evidence against the larger one);
    - an arm that would shrink the memory or flash running now (``shrinks``) is out (unless every arm
      would): a shrink drops kept samples for good, and a larger memory trained for less than a pass
      still beats a smaller one trained longer (bench/miro_v2.py's guarded statics); when nothing that
      keeps them pays for a step, the task trains nothing rather than shrink (RAM pressure shrinks,
      through the controller's reaction, not a budget);
    - of the rest the largest memory hierarchy that trains at all; within it, the method knobs (REP's
      merging and dropping) that keep the most while paying for one pass over the new samples, else
      the ones that pay the longest; trained as long as the budget pays (epochs made continuous: the
      learner stops at the planned length, the guard never has to), less ``margin`` for the spread of
      the realised cost; ties to the most epochs (the plan stops the task either way, and the arm's
      epochs bound how far steering may lengthen it when the task turns out cheaper). A length is whole
      batches, as the learner stops at the first step boundary at or past it (a plan of 49 samples
      at batch 16 ran 64, 12% of a halved budget past the plan): to the nearest where the budget binds
      (the margin and the evaluation's reserve take the half batch; none when it pays for less than
      one), down where the deadline does.

    Accuracy per joule rewards doing little and would leave a granted budget unspent; this spends it on
    what the stream's accuracy is made of."""
    if not arms:
        raise ValueError("no arm to plan")
    known = [a for a in arms if a.j_per_sample is not None]
    if not known:
        return None, None, "no cost measured yet"
    measured = [a for a in known if a.acc is not None and a.n_val]

    def se(a) -> float:
        return max(math.sqrt(a.acc * (1 - a.acc) / a.n_val), 1.0 / a.n_val)

    out = {a.knobs for a in measured
           if any(capacity(b.knobs) >= capacity(a.knobs) and a.acc < b.acc - 2 * se(b) for b in measured)}
    ok = [a for a in known if a.knobs not in out] or known

    def pays(a) -> tuple:  # (samples the budget and the deadline pay for at this arm, which binds)
        j = remaining_j * (1 - margin) / a.j_per_sample if a.j_per_sample > 0 else math.inf
        s = remaining_s * (1 - margin) / a.s_per_sample if a.s_per_sample else math.inf
        return min(j, s), ("the deadline" if s < j else "the budget")

    def length(a) -> int:  # ... up to the arm's epochs, in whole batches
        x, binds = pays(a)
        if x >= n * a.knobs.epochs:
            return n * a.knobs.epochs
        # to the nearest batch, never up from none (a batch not paid for at all is no half batch over)
        whole = math.floor if binds == "the deadline" or x < batch else round
        return max(0, batch * whole(max(0.0, x) / batch))

    # every arm shrinking (a grid below what runs): the grid is what there is
    keeping = [a for a in ok if not shrinks(a.knobs, current)] or ok
    pool = [a for a in keeping if length(a) > 0] or keeping  # nothing trains: no training beats a shrink
    levels = {capacity(a.knobs) for a in pool}
    best_len = {lv: max(length(a) for a in pool if capacity(a.knobs) == lv) for lv in levels}
    level = max(levels, key=lambda lv: (lv[:2], best_len[lv] >= n, lv[2:] if best_len[lv] >= n else (best_len[lv],)))
    w = max((a for a in pool if capacity(a.knobs) == level), key=lambda a: (length(a), a.knobs.epochs))
    planned = length(w)
    left = sum(shrinks(a.knobs, current) for a in ok)
    how = (f"the largest memory hierarchy that trains of {len(ok)} arms not measured worse ({len(out)} were"
           f"{f'; {left} would shrink the memory running' if left else ''}), {planned / max(n, 1):.2f} epochs of "
           f"its {w.knobs.epochs}")
    if planned >= n * w.knobs.epochs:
        return w.knobs, None, how + ": its whole epochs fit"
    return w.knobs, planned, how + f": as long as {pays(w)[1]} pays (margin {margin:.0%})"
