"""Miro (Ma et al., MobiCom): at each task boundary, profile candidate memory-hierarchy settings
online on a small subsample and adopt the most cost-effective one (accuracy per joule).

Knobs: RAM episodic memory size, flash budget, swap ratio, epochs per task -- and the strategy's own
knobs where it has some (REP: AToM's r_max and ALD's keep floor theta_bar; the strategy declares them
with ``knobs()`` / ``set_knobs()``). A candidate is profiled
by training a copy of the current model on ``profile_fraction`` of the new task (plus replay from a
copy of the memory resized to the candidate's size, swapping from a flash pool cut to the
candidate's budget) for the candidate's epochs; its accuracy is taken on a held-out slice of the new
task plus stored samples of the past classes, and its task energy is predicted from the metered
training window (joules per trained sample x epochs x task size). Selection (default, as in Miro):
among candidates in the top half by accuracy, the best accuracy per joule; ties a short profile
cannot resolve go to the larger memory (in task 0, with no replay yet, every memory and flash
size is such a tie). Profiling energy -- the whole round, validation reads and
set-up included -- is capped (default 10% of the previous task's energy) and always counted; arms
go cheapest first, under rule acc-per-joule an arm that could not win even at 100% accuracy is not
profiled, and a round that could only re-measure the incumbent is skipped. Arms are ordered by a
Gaussian Thompson-sampling bandit over a sliding window, so not every task re-profiles everything
(a grid when it fits).
Between steps the engine hands it resource snapshots: when a pressure begins (available RAM under
a floor, battery under a floor and unplugged, thermal throttling) it re-decides mid-task among the
arms that relieve it (less RAM; lower predicted energy), profiling as the task's cap still allows.
Every decision, with what was not profiled and why, goes to the event log.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from miro_runtime.choices import MIRO_RULES as RULES

from miro_runtime.engine.memory import EpisodicMemory


@dataclass(frozen=True)
class Knobs:
    memory: int
    flash_budget: Optional[int]
    swap_ratio: float
    epochs: int
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


def select(cands: list, rule: str = "top-half-acc-per-joule", eta: float = 0.5) -> dict:
    """cands: [{"knobs", "acc", "joules", "seconds", optional "n_val"}] (joules = predicted task energy).

    The rule picks a winner; then ties the profile cannot resolve go to the larger memory
    hierarchy: among arms with the winner's epochs, at most 1.5x its predicted energy, whose accuracy
    lies within one binomial standard error (on ``n_val`` held-out samples) of the winner's, the one
    with the most RAM and flash (not under ``lowest-energy``, which asks for the cheapest). A
    short profile cannot show what a bigger episodic memory buys over a whole task (less forgetting),
    while the cheaper step of a smaller one always shows."""
    if not cands:
        raise ValueError("no profiled candidate to choose from")
    w = _rule_winner(cands, rule, eta)
    n_val = w.get("n_val")
    if not n_val or rule == "lowest-energy":
        return w
    se = max(math.sqrt(w["acc"] * (1 - w["acc"]) / n_val), 1.0 / n_val)
    tied = [c for c in cands if c["knobs"].epochs == w["knobs"].epochs and c["acc"] >= w["acc"] - se
            and c["joules"] <= 1.5 * w["joules"]]
    return max(tied, key=lambda c: (c["knobs"].memory, c["knobs"].flash_budget or 0, c is w))


def _rule_winner(cands: list, rule: str, eta: float) -> dict:
    if rule == "lowest-energy":
        return min(cands, key=lambda c: c["joules"])
    if rule == "acc-per-joule":  # the objective itself, with no accuracy floor
        return max(cands, key=lambda c: c["acc"] / max(c["joules"], 1e-9))
    if rule == "highest-accuracy":
        return max(cands, key=lambda c: (c["acc"], -c["joules"]))
    if rule == "zeus":  # cost = eta * E + (1 - eta) * P_max * T, per unit of accuracy
        pmax = max(c["joules"] / max(c["seconds"], 1e-9) for c in cands)
        return min(cands, key=lambda c: (eta * c["joules"] + (1 - eta) * pmax * c["seconds"]) / max(c["acc"], 1e-6))
    if rule != "top-half-acc-per-joule":
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    ranked = sorted(cands, key=lambda c: -c["acc"])
    top = ranked[: max(1, math.ceil(len(ranked) / 2))]
    return max(top, key=lambda c: c["acc"] / max(c["joules"], 1e-9))


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


class MiroController:
    """Engine hooks: ``task_begin`` profiles and adopts, ``task_end`` books energy."""

    def __init__(self, cfg, grid: Optional[list] = None, rule: str = "top-half-acc-per-joule",
                 search: str = "bandit", budget_frac: float = 0.10, profile_fraction: float = 0.05,
                 profile_min: int = 16, window: int = 4, eta: float = 0.5):
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
        if search not in ("grid", "bandit"):
            raise ValueError(f"search must be grid or bandit, got {search!r}")
        self.grid = grid or default_grid(cfg)
        self.rule, self.search, self.eta = rule, search, eta
        self.budget_frac, self.fraction, self.profile_min = budget_frac, profile_fraction, profile_min
        self.by_key = {k.key(): k for k in self.grid}
        self.bandit = ThompsonBandit(list(self.by_key), window=window, seed=cfg.seed + 101)
        self.history: dict = {k: [] for k in self.by_key}  # recent (acc, joules, seconds) per arm
        self.current = Knobs(cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs, method_knobs(cfg))
        self.decisions: list = []
        self.prev_task_j: Optional[float] = None
        self.batch_size, self.replay = cfg.batch_size, (cfg.replay if cfg.strategy in ("carm", "carm-sync")
                                                        else cfg.strategy)
        # profiled training joules per new sample per epoch, kept apart for task 0 (no replay) and
        # later tasks (a step also trains on replayed samples): [joules, samples] each
        self._units = {"no-replay": [0.0, 0], "replay": [0.0, 0]}
        self.overhead_j = 0.0  # last profile's joules outside its training window (copy, set-up, eval)
        self._profiling_j, self._n_val = 0.0, 0
        self.ram_floor_mb, self.battery_floor = cfg.miro_ram_floor_mb, cfg.miro_battery_floor
        self._pressed: set = set()  # resource pressures in force (a reaction fires when one begins)
        self._inside_j = 0.0  # this task's reaction profiling, metered inside the task's own window

    # ------------------------------------------------------------------ engine hooks
    def task_begin(self, exp, t: int):
        self._profiling_j, self._inside_j = 0.0, 0.0
        cands, skipped, _ = self._metered_round(exp, t)
        winner = select(cands, self.rule, self.eta)["knobs"] if cands else self.current
        tie = None
        if t == 0 and cands:
            winner, tie = self._task0_hierarchy(winner)
        self._apply(exp, winner)
        self._decide(exp, t, self.rule, winner, cands, skipped, self._profiling_j, **({"tie": tie} if tie else {}))

    def _decide(self, exp, t, rule, winner, cands, skipped, profiling_j, **extra):
        """One decision record, kept in the summary and written to the event log."""
        d = {"task": t, **extra, "rule": rule, "search": self.search, "winner": winner.key(),
             "candidates": [{"knobs": c["knobs"].key(), "acc": c["acc"], "predicted_task_j": c["joules"],
                             "profile_j": c["profile_j"], "from_window": c.get("from_window", False)}
                            for c in cands],
             "not_profiled": skipped, "profiling_energy_j": profiling_j,
             "budget_j": self._budget(), "provenance": exp.meter.provenance()}
        self.decisions.append(d)
        exp.event("miro_decision", **d)

    def on_resources(self, exp, t: int, snap):
        """Engine hook between steps. A pressure that begins (available RAM under the floor, the
        battery under its floor and unplugged, thermal throttling) triggers one re-decision now; one
        that persists does not fire again, one that clears re-arms."""
        now = self._pressures(snap)
        new = {k: v for k, v in now.items() if k not in self._pressed}
        self._pressed = set(now)
        if new:
            self._react(exp, t, new, snap)

    def _pressures(self, snap) -> dict:
        out = {}
        if snap.available_ram_mb is not None and snap.available_ram_mb < self.ram_floor_mb:
            out["ram"] = f"available RAM {snap.available_ram_mb:.0f} MB < floor {self.ram_floor_mb:g} MB"
        bat = snap.battery
        if bat and not bat.get("plugged") and bat.get("percent") is not None and bat["percent"] < self.battery_floor:
            out["battery"] = f"battery {bat['percent']:g}% < floor {self.battery_floor:g}%, unplugged ({bat['source']})"
        if snap.throttled:
            out["throttled"] = f"thermal throttling ({snap.throttle_source})"
        return out

    def _react(self, exp, t: int, why: dict, snap):
        """Re-decide under pressure among the arms that relieve it: less RAM for a RAM pressure, a
        lower predicted task energy for battery or throttling. Profiles run as the task's cap still
        allows (under battery pressure the rule is lowest-energy); when none fits, the arm is chosen
        on prediction: the largest smaller memory, or the cheapest arm."""
        n = len(exp.task_data(t)[1])
        cur_j = self._predicted_j(self.current, n, t)

        def relieves(kn):
            if "ram" in why and kn.method:  # a prompt method: more merging or more dropping needs less memory
                mine, theirs = dict(self.current.method), dict(kn.method)
                if not ((theirs["r_max"] or 0) > (mine["r_max"] or 0) or
                        (theirs["theta_bar"] or 1) < (mine["theta_bar"] or 1)):
                    return False
            elif "ram" in why and kn.memory >= self.current.memory:
                return False
            if "battery" in why or "throttled" in why:
                j = self._predicted_j(kn, n, t)
                if j is None or cur_j is None:  # nothing measured yet: fewer epochs, or less replay
                    return (kn.epochs, kn.memory) < (self.current.epochs, self.current.memory)
                return j < cur_j
            return True

        arms = sorted((kn for kn in self.grid if relieves(kn)), key=lambda kn: (kn.epochs, kn.memory))
        rule = "lowest-energy" if "battery" in why else self.rule
        cands, skipped, spent = [], [], 0.0
        if arms:
            cands, skipped, spent = self._metered_round(exp, t, arms)
            self._inside_j += spent
        if cands:
            winner, how = select(cands, rule, self.eta)["knobs"], f"rule {rule} on the profiles"
        elif arms and "ram" in why:
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
        self._apply(exp, winner)
        self._decide(exp, t, rule, winner, cands, skipped, spent, mid_task=True, trigger=why, how=how,
                     resources=snap.to_dict())

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

    def task_end(self, exp, t: int, rec: dict):
        if self._inside_j and rec.get("energy_j"):
            # a mid-task reaction's profiles ran inside the task's window: count them once, as profiling
            keep = max(0.0, rec["energy_j"] - self._inside_j) / rec["energy_j"]
            rec["energy_j"] *= keep
            rec["energy_components_j"] = {k: None if v is None else v * keep
                                          for k, v in rec["energy_components_j"].items()}
            rec["reaction_profiling_j"] = self._inside_j
        rec["profiling_energy_j"] = self._profiling_j
        # the strategy's own knobs appear only when it has some
        rec["knobs"] = {k: v for k, v in asdict(self.current).items() if k != "method" or v}
        self.prev_task_j = rec["energy_j"]

    def state(self) -> dict:
        return {"current": asdict(self.current), "decisions": self.decisions, "prev_task_j": self.prev_task_j,
                "units": self._units, "overhead_j": self.overhead_j, "bandit": self.bandit.state(),
                "history": {k: v for k, v in self.history.items()}}

    def load_state(self, exp, st: dict):
        self.decisions, self.prev_task_j = st["decisions"], st["prev_task_j"]
        units = st.get("units") or {"no-replay": st["unit"], "replay": [0.0, 0]}  # checkpoints before the split
        self._units = {k: list(v) for k, v in units.items()}
        self.overhead_j = st["overhead_j"]
        self.bandit.load_state(st["bandit"])
        self.history = {k: [tuple(x) for x in st["history"].get(k, [])] for k in self.by_key}
        self._apply(exp, Knobs.from_dict(st["current"]), log=False)

    def summary(self) -> dict:
        return {"profiling_energy_j": float(sum(d["profiling_energy_j"] for d in self.decisions)),
                "miro_decisions": self.decisions}

    # ------------------------------------------------------------------ profiling
    def _budget(self) -> Optional[float]:
        return None if self.prev_task_j is None else self.budget_frac * self.prev_task_j

    def _unit(self, t: int, kn: Knobs) -> Optional[float]:
        """Training joules per new sample and epoch of a profile at task ``t`` with these knobs: what
        profiles of the same kind measured (task 0 has no replay, later tasks do); before the first
        profile with replay, task 0's figure times the samples a replay step trains on ((b + r) / b:
        er replays up to a batch, der two), so the first rounds after task 0 do not plan on half
        their cost. None before any profile."""
        j, n = self._units["replay" if t > 0 else "no-replay"]
        if n:
            return j / n
        j0, n0 = self._units["no-replay"]
        if not n0:
            return None
        r = 0 if kn.method else min(self.batch_size, kn.memory) * (2 if self.replay == "der" else 1)
        return j0 / n0 * (self.batch_size + r) / self.batch_size

    def _predicted_j(self, kn: Knobs, n: int, t: int) -> Optional[float]:
        """Training joules of a task of ``n`` samples at these knobs: the arm's own last profile when
        it has one, else the measured joules per sample (None before the first profile)."""
        hist = self.history.get(kn.key())
        if hist:
            return hist[-1][1]
        unit = self._unit(t, kn)
        return None if unit is None else unit * kn.epochs * n

    def _metered_round(self, exp, t: int, arms: Optional[list] = None) -> tuple:
        """A profile round metered whole (validation reads, copies, profiles: all of it is profiling)
        -> (candidates, arms not profiled with why, its joules, also added to this task's profiling)."""
        before = self._profiling_j
        exp.meter.begin_window("miro-round")
        cands, skipped = self._profile_round(exp, t, arms)
        m = exp.meter.end_window("miro-round")
        spent = self._profiling_j - before
        if cands and m.joules is not None:
            spent = max(spent, m.joules)
        self._profiling_j = before + spent
        return cands, skipped, spent

    def _profile_round(self, exp, t: int, arms: Optional[list] = None) -> tuple:
        """-> (candidates to choose from, arms not profiled with why). ``arms``: a reaction to a
        resource pressure, profiling only those (the incumbent is not among them)."""
        react = arms is not None
        x, y = exp.task_data(t)
        n = len(y)
        rng = np.random.default_rng([exp.cfg.seed, t, 7])
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
        cands, skipped = [], []
        best_score = None

        def cost(kn):  # a profile's predicted joules
            return self._unit(t, kn) * kn.epochs * k + self.overhead_j

        def budget():  # at task 0: 10% of the current setting's predicted task energy
            b = self._budget()
            return b if b is not None else self.budget_frac * self._unit(t, self.current) * self.current.epochs * n

        if unmeasured_incumbent and self._unit(t, self.current) is not None and len(order) > 1 and \
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
            if self._unit(t, kn) is not None:
                if self.rule == "acc-per-joule" and best_score is not None and \
                        1.0 / self._predicted_j(kn, n, t) <= best_score:
                    # even at 100% accuracy this arm's accuracy per joule cannot beat the best so far
                    skipped.append({"knobs": kn.key(), "why": "cannot win at 100% accuracy"})
                    continue
                if self._profiling_j + cost(kn) > budget():
                    skipped.append({"knobs": kn.key(), "why": "over the profiling cap"})
                    continue
            if val is None:
                val = self._validation(exp, t, x[held], y[held], rng)
                self._n_val = len(val[1])
            c = self._profile(exp, t, kn, x[sub], y[sub], val, k / n)
            cands.append(c)
            best_score = max(best_score or 0.0, c["acc"] / max(c["joules"], 1e-9))
            if t > 0:  # task 0 profiles have no replay: not comparable with later ones
                self.history[kn.key()] = (self.history[kn.key()] + [(c["acc"], c["joules"], c["seconds"])])[
                    -self.bandit.window:]
                self.bandit.observe(kn.key(), c["acc"] / max(c["joules"], 1e-9))
        if t > 0 and self.search == "bandit":
            # decide on every arm's recent mean, not only this round's: the window remembers
            cands_now = {c["knobs"].key(): c for c in cands}
            for key, hist in self.history.items():
                if key not in cands_now and hist and (not react or self.by_key[key] in arms):
                    a, j, s = (float(np.mean([h[i] for h in hist])) for i in range(3))
                    cands.append({"knobs": self.by_key[key], "acc": a, "joules": j, "seconds": s, "profile_j": 0.0,
                                  "n_val": self._n_val * len(hist), "from_window": True})
        return cands, skipped

    def _validation(self, exp, t, xh, yh, rng):
        """Held-out slice of the new task + up to 5 stored samples per past class (from flash): its
        forward pass is part of every profile's cost, so it stays about as large as two steps."""
        xs, ys = [xh], [yh]
        past = [c for c in exp.stream.classes_upto(t - 1)] if t > 0 else []
        ids = []
        for c in past:
            cid = exp.flash.class_ids("samples", c)
            ids.extend(cid[rng.permutation(cid.size)[:5]].tolist())
        if ids:
            b = exp.flash.read_batch("samples", ids)
            xs.append(b["x"])
            ys.append(b["labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def _profile(self, exp, t, kn: Knobs, xs, ys, val, frac) -> dict:
        """Train a copy for the arm's epochs on the subsample. Everything (copy, set-up, training,
        evaluation) is metered and counted as profiling; only the training window predicts the
        task's energy, so set-up costs do not blur the difference between arms."""
        from miro_runtime.engine.strategies import make_strategy
        live = exp.strategy
        cfg = copy.copy(exp.cfg)
        cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs = kn.memory, kn.flash_budget, kn.swap_ratio, kn.epochs
        name = exp.cfg.strategy
        if name in ("carm", "carm-sync"):  # swaps in the trial are synchronous: its cost is its own;
            name = "carm-sync" if t > 0 else exp.cfg.replay  # and there are none during task 0
        exp.meter.begin_window("miro-profile")
        trial = make_strategy(name, copy.deepcopy(live.model), cfg, exp.flash, exp.stream, exp.device)
        try:
            if trial.memory is not None and live.memory is not None:
                self._copy_memory(live.memory, trial.memory, kn.memory)
            if hasattr(trial, "engine") and kn.flash_budget is not None:
                trial.engine.pool = self._flash_pool(exp, t, kn.flash_budget)
            trial.begin_task(t)
            if kn.method:
                trial.set_knobs(**dict(kn.method))
            X, Y = torch.from_numpy(xs), torch.from_numpy(ys)
            bs = cfg.batch_size
            exp.meter.begin_window("miro-profile-train")
            for e in range(kn.epochs):
                perm = torch.from_numpy(np.random.default_rng([cfg.seed, t, e, 13]).permutation(len(Y)))
                for i in range(0, len(Y), bs):
                    idx = perm[i:i + bs]
                    trial.observe(X[idx], Y[idx])
            tm = exp.meter.end_window("miro-profile-train")
            trial.model.eval()
            with torch.no_grad():
                acc = float((trial.model(val[0].to(exp.device)).argmax(1).cpu() == val[1]).float().mean())
        finally:
            trial.close()
            m = exp.meter.end_window("miro-profile")
        profile_j = m.joules if m.joules is not None else 0.0
        train_j = tm.joules if tm.joules is not None else profile_j
        self._profiling_j += profile_j
        u = self._units["replay" if t > 0 else "no-replay"]
        u[0] += train_j
        u[1] += kn.epochs * len(ys)
        self.overhead_j = max(0.0, profile_j - train_j)
        return {"knobs": kn, "acc": acc, "joules": train_j / frac, "seconds": tm.seconds / frac, "profile_j": profile_j,
                "n_val": self._n_val}

    @staticmethod
    def _copy_memory(src: EpisodicMemory, dst: EpisodicMemory, capacity: int):
        st = src.state()
        n = int(st["ram.labels"].shape[0])
        dst.load_state({**st, "capacity": max(capacity, n)})
        if n > capacity:
            dst.resize(capacity)

    def _flash_pool(self, exp, t, budget: int) -> dict:
        """A class-balanced random subset of what is stored, as a flash tier of ``budget`` would hold."""
        classes = exp.stream.classes_upto(t)
        per = max(1, budget // max(1, len(classes)))
        rng = np.random.default_rng([exp.cfg.seed, t, 11])
        pool = {}
        for c in classes:
            ids = exp.flash.class_ids("samples", c)
            pool[c] = ids[rng.permutation(ids.size)[:per]]
        return pool

    # ------------------------------------------------------------------ adoption
    def _apply(self, exp, kn: Knobs, log: bool = True):
        """Adopt knobs live: the RAM tier and flash budget are resized in place (only what the
        eviction policies drop by design is lost)."""
        cfg, strat = exp.cfg, exp.strategy
        dropped = evicted = 0
        if strat.memory is not None and strat.memory.capacity != kn.memory:
            if hasattr(strat, "settle"):
                strat.settle()
            dropped = strat.memory.resize(kn.memory)
        if kn.flash_budget != cfg.flash_budget:
            evicted = exp.flash.set_budget("samples", budget_records=kn.flash_budget)
        cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs = kn.memory, kn.flash_budget, kn.swap_ratio, kn.epochs
        if kn.method:
            strat.set_knobs(**dict(kn.method))
        if log and kn != self.current:
            exp.event("miro_adopt", old=self.current.key(), new=kn.key(), em_dropped=dropped,
                          flash_evicted=evicted)
        self.current = kn
