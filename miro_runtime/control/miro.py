"""Miro (Ma et al., MobiCom): at each task boundary, profile candidate memory-hierarchy settings
online on a small subsample and adopt the most cost-effective one (accuracy per joule).

Knobs (``knobs.py``): RAM episodic memory size, flash budget, swap ratio, epochs per task -- and the
strategy's own knobs where it has some (REP: AToM's r_max and ALD's keep floor theta_bar, adopted
through the strategy's ``set_knobs()``). A candidate is profiled (``profile.py``)
by training a copy of the current model on ``profile_fraction`` of the new task (plus replay from a
copy of the memory resized to the candidate's size, swapping from a flash pool cut to the
candidate's budget) for the candidate's epochs; its accuracy is taken on a held-out slice of the new
task plus stored samples of the past classes, and its task energy is predicted from the metered
training window (joules per trained sample x epochs x task size). Selection (``rules.py``; default,
as in Miro): among candidates in the top half by accuracy, the best accuracy per joule; ties a short
profile cannot resolve go to the larger memory (in task 0, with no replay yet, every memory and flash
size is such a tie). Profiling energy -- the whole round, validation reads and
set-up included -- is capped (default 10% of the stream's energy so far, less profiling spent) and counted; arms
go cheapest first, under rule acc-per-joule an arm that could not win even at 100% accuracy is not
profiled, and a round that could only re-measure the incumbent is skipped. Arms are ordered by a
Gaussian Thompson-sampling bandit over a sliding window (``bandit.py``), so not every task
re-profiles everything (a grid when it fits).
Between steps the engine hands it resource snapshots: when a pressure begins (``pressure.py``:
available RAM under a floor, battery under a floor and unplugged, thermal throttling) it re-decides
mid-task among the arms that relieve it (less RAM; lower predicted energy), profiling as the task's
cap still allows. Every decision (a ``records.Decision``), with what was not profiled and why, goes
to the event log.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Optional

import numpy as np

from miro_runtime.choices import MIRO_RULES as RULES, MIRO_SEARCH
from miro_runtime.engine.budget import MODE_NONE
from miro_runtime.engine.hooks import Controller, LearnerView
from miro_runtime.records import Candidate, Decision, TaskRecord

from .bandit import ThompsonBandit
from .plan import BudgetPlan
from .knobs import Knobs, default_grid, method_knobs
from .pressure import BATTERY, RAM, THROTTLED, pressures
from .profile import ArmProfiler
from .rules import select


# under a user's energy budget, a round's profiles take at most this share of what the task's training has
# left (its budget less spent, the evaluation's reserve and the work beside its steps)
TASK_PROFILE_SHARE = 0.25


class MiroController(Controller):
    """Engine hooks: ``task_begin`` profiles and adopts, ``on_resources`` reacts to a pressure,
    ``task_end`` books energy."""

    watches_resources = True
    steers_steps = True  # under a budget or deadline the task's length is re-planned as it trains (plan.steer)

    def __init__(self, cfg, grid: Optional[list] = None, rule: str = "acc-per-joule",
                 search: str = "bandit", budget_frac: float = 0.10, profile_fraction: float = 0.05,
                 profile_min: int = 16, window: int = 4, eta: float = 0.5):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
        if search not in MIRO_SEARCH:
            raise ValueError(f"search must be grid or bandit, got {search!r}")
        self.grid = grid or default_grid(cfg)
        self.rule, self.search, self.eta = rule, search, eta
        self.budget_frac, self.fraction, self.profile_min = budget_frac, profile_fraction, profile_min
        self.by_key = {k.key(): k for k in self.grid}
        self.bandit = ThompsonBandit(list(self.by_key), window=window, seed=cfg.seed + 101)
        self.history: dict = {k: [] for k in self.by_key}  # recent (acc, joules, seconds) per arm
        self.current = Knobs(cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs, method_knobs(cfg))
        self.prev_task_j: Optional[float] = None
        self.profiler = ArmProfiler(cfg)
        self._profiling_j, self._n_val = 0.0, 0
        self.ram_floor_mb, self.battery_floor = cfg.miro_ram_floor_mb, cfg.miro_battery_floor
        self._pressed: set = set()  # resource pressures in force (a reaction fires when one begins)
        self._inside_j = 0.0  # this task's reaction profiling, metered inside the task's own window
        self._task_cap: Optional[float] = None  # under a user's budget: the share of the task's own left for profiles
        # the stream so far: every joule booked for its tasks, and of them profiling (the cap is a share of it)
        self._stream_j, self._stream_profiling_j = 0.0, 0.0
        self.plan = BudgetPlan(self)  # decisions under a user's budget or deadline, and the cost checks

    # ------------------------------------------------------------------ engine hooks
    def task_begin(self, view: LearnerView, t: int):
        self._profiling_j, self._inside_j, t0 = 0.0, 0.0, time.perf_counter()
        n = len(view.task_data(t)[1])
        planning = view.guard.budget.mode != MODE_NONE or view.cfg.task_deadline_s is not None
        why = self.plan.why_profile(t, n) if planning else None
        self._task_cap = None
        if planning and view.guard.budget.mode != MODE_NONE and t > 0:
            # a round's profiles come out of the task's own budget: never more than a share of what its
            # training has left (after a halved budget a stream-wide cap alone would eat the whole task)
            b = view.guard.budget
            self._task_cap = max(0.0, TASK_PROFILE_SHARE * (b.remaining(t) - b.eval_reserve(t) - self.plan.fixed_j))
        if planning and why is None:
            cands, spent = [], 0.0
            skipped = [{"knobs": k, "why": "under a budget: the running arm's realised cost holds (same task size, "
                                           "no refit)"} for k in self.by_key]
        else:
            cands, skipped, spent = self._metered_round(view, t)
            view.guard.book("profile", spent, t)  # before the task's window opens: the budget pays for it
        energy, tie, rule, samples = None, None, self.rule, None
        if planning:
            winner, energy, tie = self.plan.decide(view, t, cands, n, time.perf_counter() - t0)
            energy["profiled_because"] = why
            rule, samples = "within-budget", energy["planned_samples"]
        else:
            winner = select(cands, self.rule, self.eta).knobs if cands else self.current
            if t == 0 and cands:
                winner, tie = self._task0_hierarchy(winner)
        predicted = self.plan.predict(winner, cands, n, t, samples)
        self._apply(view, winner)
        self._decide(view, Decision(t, rule, self.search, winner.key(), [c.to_dict() for c in cands], skipped,
                                    self._profiling_j, self._budget(), view.meter.provenance(), tie=tie,
                                    energy_budget=energy, predicted=predicted))

    def _decide(self, view: LearnerView, d: Decision):
        """One decision, kept in the summary and written to the event log."""
        self.decisions.append(d)
        view.event("miro_decision", **d.to_dict())

    def on_resources(self, view: LearnerView, t: int, snap):
        """Engine hook between steps. A pressure that begins (available RAM under the floor, the
        battery under its floor and unplugged, thermal throttling) triggers one re-decision now; one
        that persists does not fire again, one that clears re-arms."""
        now = pressures(snap, self.ram_floor_mb, self.battery_floor)
        new = {k: v for k, v in now.items() if k not in self._pressed}
        self._pressed = set(now)
        if new:
            self._react(view, t, new, snap)

    def _react(self, view: LearnerView, t: int, why: dict, snap):
        """Re-decide under pressure among the arms that relieve it: less RAM for a RAM pressure, a
        lower predicted task energy for battery or throttling. Profiles run as the task's cap still
        allows (under battery pressure the rule is lowest-energy); when none fits, the arm is chosen
        on prediction: the largest smaller memory, or the cheapest arm."""
        n = len(view.task_data(t)[1])
        cur_j = self._predicted_j(self.current, n, t)

        def relieves(kn):
            if RAM in why and kn.method:  # a prompt method: more merging or more dropping needs less memory
                mine, theirs = dict(self.current.method), dict(kn.method)
                if not ((theirs["r_max"] or 0) > (mine["r_max"] or 0) or
                        (theirs["theta_bar"] or 1) < (mine["theta_bar"] or 1)):
                    return False
            elif RAM in why and kn.memory >= self.current.memory:
                return False
            if BATTERY in why or THROTTLED in why:
                j = self._predicted_j(kn, n, t)
                if j is None or cur_j is None:  # nothing measured yet: fewer epochs, or less replay
                    return (kn.epochs, kn.memory) < (self.current.epochs, self.current.memory)
                return j < cur_j
            return True

        arms = sorted((kn for kn in self.grid if relieves(kn)), key=lambda kn: (kn.epochs, kn.memory))
        rule = "lowest-energy" if BATTERY in why else self.rule
        cands, skipped, spent = [], [], 0.0
        if arms:
            cands, skipped, spent = self._metered_round(view, t, arms)
            self._inside_j += spent
        if cands:
            winner, how = select(cands, rule, self.eta).knobs, f"rule {rule} on the profiles"
        elif arms and RAM in why:
            same = [kn for kn in arms if kn.epochs == self.current.epochs] or arms
            winner = max(same, key=lambda kn: (kn.memory, kn.flash_budget or 0))
            how = "predicted: largest smaller memory"
        elif arms:
            # equal predictions (task 0: memory does not act yet) keep the larger memory, as select does
            winner = min(arms, key=lambda kn: (self._predicted_j(kn, n, t) or 0.0, kn.epochs, -kn.memory,
                                               -(kn.flash_budget or 0)))
            how = "predicted: cheapest arm"
        else:
            winner, how = self.current, "no arm relieves it: kept"
        self._apply(view, winner)
        self._decide(view, Decision(t, rule, self.search, winner.key(), [c.to_dict() for c in cands], skipped, spent,
                                    self._budget(), view.meter.provenance(), mid_task=True, trigger=why, how=how,
                                    resources=snap.to_dict()))

    def _task0_hierarchy(self, w: Knobs) -> tuple:
        """Task 0 has no replay: memory, flash and swaps do not act in it, so the profile of an epochs
        setting stands for every arm with those epochs, all tied. The tie goes as ``select`` breaks
        ties the profile cannot resolve: to the largest memory hierarchy (to the smallest under
        lowest-energy); later rounds profile the others once replay makes them differ."""
        same = [kn for kn in self.grid if kn.epochs == w.epochs and kn.method == w.method]
        if len(same) < 2:
            return w, None
        if self.rule == "lowest-energy":
            pick = min(same, key=lambda kn: (kn.memory, kn.flash_budget or 0, kn.swap_ratio != w.swap_ratio))
        else:
            pick = max(same, key=lambda kn: (kn.memory, kn.flash_budget or 0, kn.swap_ratio == w.swap_ratio))
        why = (f"task 0 has no replay: the profile of {w.key()} stands for the {len(same)} arms with "
               f"epochs={w.epochs}; the tie goes to the {'smallest' if self.rule == 'lowest-energy' else 'largest'}"
               f" memory hierarchy, {pick.key()}")
        return pick, why

    def between_steps(self, view: LearnerView, t: int, progress):
        self.plan.steer(view, t, progress)

    def task_end(self, view: LearnerView, t: int, rec: TaskRecord):
        if self._inside_j and rec.energy_j:
            # a mid-task reaction's profiles ran inside the task's window: count them once, as profiling
            keep = max(0.0, rec.energy_j - self._inside_j) / rec.energy_j
            rec.energy_j *= keep
            rec.energy_components_j = {k: None if v is None else v * keep for k, v in rec.energy_components_j.items()}
            rec.reaction_profiling_j = self._inside_j
        rec.profiling_energy_j = self._profiling_j
        # the strategy's own knobs appear only when it has some
        rec.knobs = {k: v for k, v in asdict(self.current).items() if k != "method" or v}
        self.prev_task_j = rec.energy_j
        self._stream_j += (rec.energy_j or 0.0) + self._profiling_j
        self._stream_profiling_j += self._profiling_j
        self.history = self.plan.check(view, t, rec, self.current.key(), bool(self._inside_j))

    def state(self) -> dict:
        return {"current": asdict(self.current), "decisions": [d.to_dict() for d in self.decisions],
                "prev_task_j": self.prev_task_j, "units": self.profiler.units, "overhead_j": self.profiler.overhead_j,
                "bandit": self.bandit.state(), "history": {k: v for k, v in self.history.items()},
                "stream_j": self._stream_j, "stream_profiling_j": self._stream_profiling_j, "plan": self.plan.state()}

    def load_state(self, view: LearnerView, st: dict):
        self.decisions, self.prev_task_j = [Decision.from_dict(d) for d in st["decisions"]], st["prev_task_j"]
        units = st.get("units") or {"no-replay": st["unit"], "replay": [0.0, 0]}  # checkpoints before the split
        self.profiler.units = {k: list(v) for k, v in units.items()}
        self.profiler.overhead_j = st["overhead_j"]
        self.bandit.load_state(st["bandit"])
        self.history = {k: [tuple(x) for x in st["history"].get(k, [])] for k in self.by_key}
        self._stream_j, self._stream_profiling_j = st.get("stream_j", 0.0), st.get("stream_profiling_j", 0.0)
        self.plan.load_state(st.get("plan", {}))
        self._apply(view, Knobs.from_dict(st["current"]), log=False)

    def summary(self) -> dict:
        return {"profiling_energy_j": float(sum(d.profiling_energy_j for d in self.decisions)),
                "miro_decisions": [d.to_dict() for d in self.decisions]}

    def knobs_key(self) -> str:
        return self.current.key()

    # ------------------------------------------------------------------ profiling
    def _budget(self) -> Optional[float]:
        """The task's profiling cap: a share of the whole stream's energy so far, less what profiling spent
        in the tasks before (unspent allowance carries over; None before the first task's energy); under a
        user's energy budget also at most TASK_PROFILE_SHARE of what the task's training has left."""
        if not self._stream_j:
            return None
        cap = max(0.0, self.budget_frac * self._stream_j - self._stream_profiling_j)
        return cap if self._task_cap is None else min(cap, self._task_cap)

    def _predicted_j(self, kn: Knobs, n: int, t: int) -> Optional[float]:
        """Training joules of a task of ``n`` samples at these knobs: the arm's own last profile when
        it has one, else the measured joules per sample (None before the first profile)."""
        hist = self.history.get(kn.key())
        if hist:  # its joules were for the profiled task's size (h[3]; windows kept before it: this one's)
            h = hist[-1]
            return h[1] * (n / h[3] if len(h) > 3 and h[3] else 1.0)
        unit = self.profiler.unit(t, kn)
        return None if unit is None else unit * kn.epochs * n

    def _metered_round(self, view: LearnerView, t: int, arms: Optional[list] = None) -> tuple:
        """A profile round metered whole (validation reads, copies, profiles: all of it is profiling)
        -> (candidates, arms not profiled with why, its joules, also added to this task's profiling)."""
        before = self._profiling_j
        view.meter.begin_window("miro-round")
        cands, skipped = self._profile_round(view, t, arms)
        m = view.meter.end_window("miro-round")
        spent = self._profiling_j - before
        if cands and m.joules is not None:
            spent = max(spent, m.joules)
        self._profiling_j = before + spent
        return cands, skipped, spent

    def _profile_round(self, view: LearnerView, t: int, arms: Optional[list] = None) -> tuple:
        """-> (candidates to choose from, arms not profiled with why). ``arms``: a reaction to a
        resource pressure, profiling only those (the incumbent is not among them)."""
        react = arms is not None
        x, y = view.task_data(t)
        n = len(y)
        rng = np.random.default_rng([view.cfg.seed, t, 7])
        perm = rng.permutation(n)
        k = min(n // 2, max(self.profile_min, int(round(self.fraction * n))))
        sub, held = perm[:k], perm[k:k + max(20, k)]
        if react:
            pass  # the arms that relieve the pressure, as given
        elif t == 0:  # no replay yet: memory, flash and swaps do not act; epochs and method knobs do
            methods = sorted({kn.method for kn in self.grid}, key=lambda m: [(n, -1 if v is None else v) for n, v in m])
            arms = [Knobs(self.current.memory, self.current.flash_budget, self.current.swap_ratio, e, m)
                    for m in methods for e in sorted({kn.epochs for kn in self.grid})]
        else:
            arms = list(self.grid) if self.search == "grid" else [self.by_key[a] for a in self.bandit.order()]
        # arms never profiled go cheapest first: the cheap ones calibrate the cost of the rest. After
        # task 0 an incumbent with no measurement goes first of all: a switch is only taken against a
        # measurement of what runs now, never because the one arm the cap allowed happened to be
        # another; once measured, the incumbent competes through its window like every arm.
        fresh = sorted((kn for kn in arms if not self.history.get(kn.key())), key=lambda kn: kn.epochs)
        order = fresh + [kn for kn in arms if self.history.get(kn.key())]
        unmeasured_incumbent = not react and t > 0 and self.current in fresh
        if unmeasured_incumbent:
            order.remove(self.current)
            order.insert(0, self.current)
        cands: list = []
        skipped: list = []
        best_score = None
        unit = self.profiler.unit

        def cost(kn):  # a profile's predicted joules
            return unit(t, kn) * kn.epochs * k + self.profiler.overhead_j

        def budget():  # at task 0: 10% of the current setting's predicted task energy
            b = self._budget()
            return b if b is not None else self.budget_frac * unit(t, self.current) * self.current.epochs * n

        if unmeasured_incumbent and unit(t, self.current) is not None and len(order) > 1 and \
                cost(order[0]) + min(cost(kn) for kn in order[1:]) > budget():
            # one profile would only re-measure the incumbent, with nothing to compare it against
            return [], [{"knobs": kn.key(), "why": "the cap fits fewer than two profiles"} for kn in order]
        if t > 0 and not react:  # what the window already knows bounds what a new profile must beat
            means = [np.mean([h[0] for h in hist]) / max(np.mean([h[1] for h in hist]), 1e-9)
                     for hist in self.history.values() if hist]
            best_score = max(means, default=None)
        # a bandit round pulls one challenger (plus the incumbent when it has no measurement yet);
        # a grid round profiles whatever the cap allows
        pulls = (2 if unmeasured_incumbent else 1) if t > 0 and self.search == "bandit" and not react else len(order)
        val = None
        for kn in order:
            if len(cands) >= pulls:
                skipped.append({"knobs": kn.key(), "why": "bandit: one challenger per round"})
                continue
            if unit(t, kn) is not None:
                if self.rule == "acc-per-joule" and best_score is not None and \
                        1.0 / self._predicted_j(kn, n, t) <= best_score:
                    # even at 100% accuracy this arm's accuracy per joule cannot beat the best so far
                    skipped.append({"knobs": kn.key(), "why": "cannot win at 100% accuracy"})
                    continue
                if self._profiling_j + cost(kn) > budget():
                    skipped.append({"knobs": kn.key(), "why": "over the profiling cap"})
                    continue
            if val is None:
                val = self.profiler.validation(view, t, x[held], y[held], rng)
                self._n_val = len(val[1])
            c = self.profiler.profile(view, t, kn, x[sub], y[sub], val, k / n)
            self._profiling_j += c.profile_j
            cands.append(c)
            best_score = max(best_score or 0.0, c.acc / max(c.joules, 1e-9))
            if t > 0:  # task 0 profiles have no replay: not comparable with later ones
                self.history[kn.key()] = (self.history[kn.key()] + [(c.acc, c.joules, c.seconds, n)])[
                    -self.bandit.window:]
                self.bandit.observe(kn.key(), c.acc / max(c.joules, 1e-9))
        if t > 0 and self.search == "bandit":
            # decide on every arm's recent mean, not only this round's: the window remembers
            cands_now = {c.knobs.key(): c for c in cands}
            for key, hist in self.history.items():
                if key not in cands_now and hist and (not react or self.by_key[key] in arms):
                    a, j, s = (float(np.mean([h[i] for h in hist])) for i in range(3))
                    cands.append(Candidate(self.by_key[key], a, j, s, profile_j=0.0, n_val=self._n_val * len(hist),
                                           from_window=True))
        return cands, skipped

    # ------------------------------------------------------------------ adoption
    def _apply(self, view: LearnerView, kn: Knobs, log: bool = True):
        """Adopt knobs live: the RAM tier and flash budget are resized in place (only what the
        eviction policies drop by design is lost)."""
        cfg, strat = view.cfg, view.strategy
        dropped = evicted = 0
        if strat.memory is not None and strat.memory.capacity != kn.memory:
            strat.settle()
            dropped = strat.memory.resize(kn.memory)
        if kn.flash_budget != cfg.flash_budget:
            evicted = view.flash.set_budget("samples", budget_records=kn.flash_budget)
        cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs = kn.memory, kn.flash_budget, kn.swap_ratio, kn.epochs
        if kn.method:
            strat.set_knobs(**dict(kn.method))
        if log and kn != self.current:
            view.event("miro_adopt", old=self.current.key(), new=kn.key(), em_dropped=dropped, flash_evicted=evicted)
        self.current = kn


__all__ = ["MiroController", "Knobs", "ThompsonBandit", "default_grid", "method_knobs", "select", "RULES"]
