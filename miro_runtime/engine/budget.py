"""A user's energy budget and the guard that keeps every configuration inside it (Miro v2).

Two ways to say it: joules per task (``energy_budget_j``), or an average power over the stream
(``power_budget_w``): a token bucket that fills at P watts up to ``power_bucket_s`` seconds' worth
and empties by every joule spent -- "at most P x elapsed time, plus a bounded bucket", as the
drift-plus-penalty reading of a time-average power limit has it. Every joule the process spends is
booked by its kind (training, profiling, evaluation, predict and KV requests) against the task it
was spent for. The guard is the engine's, not a controller's: a static configuration and Miro stop
training a task at the same point, so comparisons between them are fair. A budget changed while a
task trains applies from the next step (the learner asks ``remaining`` before every step).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Callable, Optional

KINDS = ("train", "profile", "eval", "predict", "kv", "fleet")  # what a joule was spent on (fleet: a federated round)
MODE_NONE, MODE_TASK, MODE_POWER = "none", "task", "power"
EVAL_MARGIN = 0.25  # an evaluation's joules vary by this much between tasks on the estimate meter (a 2-core box)


def _locked(method):
    """The method under the budget's lock."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class EnergyBudget:
    """The budget in force and what was spent against it. ``clock``: wall seconds (``time.time``: a
    power budget's bucket keeps filling across a restart, as the battery's charge does not wait)."""

    def __init__(self, task_j: Optional[float] = None, power_w: Optional[float] = None,
                 bucket_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.clock = clock
        # the trainer spends and asks, status readers ask, request workers spend: one at a time (reading a
        # power budget's bucket also refills it)
        self.lock = threading.RLock()
        self.spent = {k: 0.0 for k in KINDS}  # over the stream, by kind
        self.by_task: dict = {}  # task -> {kind: joules}
        self.trips: list = []  # tasks whose training the guard stopped: energy spent
        self.late: list = []  # tasks whose training the guard stopped: the task's deadline reached
        self.eval_s: dict = {}  # task -> wall seconds its evaluation took (what a deadline keeps for it)
        self.task_j = self.power_w = None
        self.bucket_s = bucket_s
        self._level = self._at = None  # the power bucket: joules in it, at clock time
        self.configure(task_j, power_w, bucket_s)

    # ------------------------------------------------------------------ the budget
    @property
    def mode(self) -> str:
        return MODE_TASK if self.task_j is not None else MODE_POWER if self.power_w is not None else MODE_NONE

    @_locked
    def configure(self, task_j: Optional[float], power_w: Optional[float], bucket_s: float) -> bool:
        """Set the budget (a live change applies from the next step); -> whether it changed. A new
        power budget starts with a full bucket; a changed one keeps its level, capped to the new size."""
        if task_j is not None and power_w is not None:
            raise ValueError("give an energy budget per task or a power budget, not both")
        changed = (task_j, power_w, bucket_s) != (self.task_j, self.power_w, self.bucket_s)
        was_power = self.power_w is not None
        self.task_j, self.power_w, self.bucket_s = task_j, power_w, bucket_s
        if power_w is None:
            self._level = self._at = None
        elif not was_power:
            self._level, self._at = self.bucket_j, self.clock()
        else:
            self._level = min(self._fill(), self.bucket_j)
        return changed

    @property
    def bucket_j(self) -> Optional[float]:
        return None if self.power_w is None else self.power_w * self.bucket_s

    def _fill(self) -> float:
        """The power bucket's level now: what it held, plus P x the time since, up to its size."""
        now = self.clock()
        self._level = min(self.bucket_j, self._level + self.power_w * max(0.0, now - self._at))
        self._at = now
        return self._level

    # ------------------------------------------------------------------ spending
    @_locked
    def spend(self, kind: str, joules: Optional[float], task: int) -> None:
        """Book ``joules`` spent on ``kind`` for ``task`` (None: the meter could not resolve it)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind of spending {kind!r}; one of {KINDS}")
        if not joules:
            return
        self.spent[kind] = self.spent.get(kind, 0.0) + joules
        per = self.by_task.setdefault(task, {k: 0.0 for k in KINDS})
        per[kind] = per.get(kind, 0.0) + joules  # a task restored from an older checkpoint may lack a kind
        if self.power_w is not None:
            self._level = self._fill() - joules  # may go below 0: an overshoot, repaid as it refills

    @_locked
    def task_spent(self, task: int) -> float:
        """Joules booked for ``task`` so far (not what its open training window holds)."""
        return sum(self.by_task.get(task, {}).values())

    @_locked
    def remaining(self, task: int, in_window: float = 0.0) -> Optional[float]:
        """Joules ``task`` may still spend, ``in_window`` (its open training window's joules, not yet
        booked) counted; None without a budget. The guard stops training at <= 0."""
        if self.mode == MODE_TASK:
            return self.task_j - self.task_spent(task) - in_window
        if self.mode == MODE_POWER:
            return self._fill() - in_window
        return None

    @_locked
    def eval_reserve(self, task: int) -> float:
        """Joules to keep for ``task``'s evaluation when training stops: the most a test set cost in the
        last few evaluations (task t evaluates t + 1 of them) times t + 1, plus EVAL_MARGIN for the
        meter's spread, so the guard's stop leaves room for it."""
        per_set = [self.by_task.get(u, {}).get("eval", 0.0) / (u + 1) for u in range(max(0, task - 3), task)]
        return max(per_set, default=0.0) * (task + 1) * (1 + EVAL_MARGIN)

    @_locked
    def eval_time_reserve(self, task: int) -> float:
        """Wall seconds to keep for ``task``'s evaluation before its deadline (as ``eval_reserve``)."""
        per_set = [self.eval_s.get(u, 0.0) / (u + 1) for u in range(max(0, task - 3), task)]
        return max(per_set, default=0.0) * (task + 1) * (1 + EVAL_MARGIN)

    @_locked
    def trip(self, task: int) -> None:
        if task not in self.trips:
            self.trips.append(task)

    # ------------------------------------------------------------------ reading it
    @_locked
    def status(self, task: Optional[int] = None, in_window: float = 0.0) -> dict:
        """What `miro status` shows: the budget, what was spent (by kind; of ``task``), what remains."""
        out = {"mode": self.mode, "task_j": self.task_j, "power_w": self.power_w, "bucket_j": self.bucket_j,
               "spent_j": {k: round(v, 6) for k, v in self.spent.items()}, "guard_trips": list(self.trips),
               "deadline_trips": list(self.late)}
        if task is not None:
            out["task"] = task
            out["task_spent_j"] = round(self.task_spent(task) + in_window, 6)
            rem = self.remaining(task, in_window)
            out["remaining_j"] = None if rem is None else round(rem, 6)
        return out

    @_locked
    def state(self) -> dict:
        """What a checkpoint keeps (JSON-able): the spending and the bucket's level at its time."""
        level = None if self.power_w is None else self._fill()
        return {"spent": dict(self.spent), "by_task": {str(t): v for t, v in self.by_task.items()},
                "trips": list(self.trips), "late": list(self.late),
                "eval_s": {str(t): v for t, v in self.eval_s.items()}, "level": level, "at": self._at}

    @_locked
    def load_state(self, state: dict) -> None:
        self.spent.update(state.get("spent", {}))
        self.by_task = {int(t): dict(v) for t, v in state.get("by_task", {}).items()}
        self.trips = list(state.get("trips", []))
        self.late = list(state.get("late", []))
        self.eval_s = {int(t): v for t, v in state.get("eval_s", {}).items()}
        if self.power_w is not None and state.get("level") is not None:
            self._level, self._at = min(state["level"], self.bucket_j), state["at"]


class BudgetGuard:
    """The learner's side of the budget: built from the run config (re-read before every step, so a
    live ``config set`` or ``miro budget set`` applies from the next one), asked before every step
    whether the task in training may go on, told what each kind of work spent."""

    def __init__(self, cfg, log):
        self.cfg, self.log = cfg, log
        self.budget = EnergyBudget(cfg.energy_budget_j, cfg.power_budget_w, cfg.power_bucket_s)
        self._stopped: set = set()  # tasks whose training the guard stopped in this process
        # requests (predict, KV) served while a task's training window is open: the process's meter counts
        # their joules in that window too, so they are booked once, as their own kind, not again as training
        self._window_open, self.overlap_j = False, 0.0
        # a controller's planned training length per task (samples): where it stops the task itself, ahead
        # of the guard -- a plan kept, not a budget broken, so it is no trip
        self.plans: dict = {}

    def plan(self, t: int, samples: Optional[int], why: str = "") -> None:
        """A controller plans task ``t``'s training at ``samples`` trained samples (None: no plan, the
        configuration's epochs): epochs made continuous, so a budget is filled without the guard's stop."""
        if samples is None:
            self.plans.pop(t, None)
            return
        self.plans[t] = {"samples": int(samples), "why": why, "reached": False}
        self.log.event("training_planned", task=t, samples=int(samples), why=why)

    def sync(self, task: Optional[int] = None) -> None:
        """Adopt the config's budget if it changed (logged with the old and new values). Both budgets set
        at once is a change caught half-way (the daemon unsets one before it sets the other): the budget
        in force stays until the next step."""
        c, b = self.cfg, self.budget
        if c.energy_budget_j is not None and c.power_budget_w is not None:
            return
        old = {"task_j": b.task_j, "power_w": b.power_w, "bucket_s": b.bucket_s}
        if b.configure(c.energy_budget_j, c.power_budget_w, c.power_bucket_s):
            self.log.event("budget_changed", task=task, old=old, new={"task_j": b.task_j, "power_w": b.power_w,
                                                                      "bucket_s": b.bucket_s}, mode=b.mode)

    def allows(self, t: int, in_window: float, elapsed_s: Optional[float] = None,
               samples: Optional[int] = None) -> bool:
        """Whether task ``t`` may take another step, its open window holding ``in_window`` joules and
        ``elapsed_s`` wall seconds since it began (epoch mode; None online, where arrivals set the
        pace) and ``samples`` trained: not once what is left would not pay for its evaluation, nor past
        its deadline, nor past a controller's planned length (that one is no trip)."""
        self.sync(t)
        plan = self.plans.get(t)
        if plan is not None and samples is not None and samples >= plan["samples"]:
            if not plan["reached"]:
                plan["reached"] = True
                self.log.event("training_plan_reached", task=t, samples=samples, planned=plan["samples"],
                               why="the controller's planned training length is reached: the task is evaluated")
            return False
        if not self._in_time(t, elapsed_s):
            return False
        rem = self.budget.remaining(t, in_window)
        if rem is None or rem > self.budget.eval_reserve(t):
            return True
        if t not in self._stopped:  # logged once per task: the reason, the figures, what follows
            self._stopped.add(t)
            self.budget.trip(t)
            self.log.event("budget_guard", level="warning", task=t, mode=self.budget.mode,
                           spent_j=round(self.budget.task_spent(t) + in_window, 6), remaining_j=round(rem, 6),
                           eval_reserve_j=round(self.budget.eval_reserve(t), 6),
                           task_j=self.budget.task_j, power_w=self.budget.power_w,
                           why="the energy budget is spent: the task's training stops here; it is evaluated "
                               "and the next task trains")
        return False

    def _in_time(self, t: int, elapsed_s: Optional[float]) -> bool:
        """The deadline (``task_deadline_s``): a stream does not wait, so a slower machine must be met by
        cheaper configurations, and the guard stops what would overrun (keeping time to evaluate)."""
        d, b = self.cfg.task_deadline_s, self.budget
        if d is None or elapsed_s is None or elapsed_s < d - b.eval_time_reserve(t):
            return True
        if t not in b.late:
            b.late.append(t)
            self.log.event("deadline_guard", level="warning", task=t, elapsed_s=round(elapsed_s, 3), deadline_s=d,
                           eval_reserve_s=round(b.eval_time_reserve(t), 3),
                           why="the task's deadline is reached: its training stops here; it is evaluated and the "
                               "next task trains")
        return False

    def book(self, kind: str, joules: Optional[float], t: int) -> None:
        with self.budget.lock:
            if self._window_open and kind in ("predict", "kv") and joules:
                self.overlap_j += joules
            self.budget.spend(kind, joules, t)

    def window_opened(self) -> None:
        """A task's training window opened (the learner's ``begin_task``)."""
        with self.budget.lock:
            self._window_open, self.overlap_j = True, 0.0

    def window_closed(self) -> float:
        """It closed: -> the joules requests booked inside it (to take out of its training figure)."""
        with self.budget.lock:
            overlap, self._window_open, self.overlap_j = self.overlap_j, False, 0.0
            return overlap

    def book_eval_time(self, t: int, seconds: float) -> None:
        self.budget.eval_s[t] = seconds

    def record(self, t: int) -> Optional[dict]:
        """The task record's ``budget`` field: what the task spent by kind, against which budget, and
        whether the guard stopped it (None without a budget and no trip)."""
        b = self.budget
        if b.mode == MODE_NONE and t not in b.trips and self.cfg.task_deadline_s is None:
            return None
        spent = {k: round(v, 6) for k, v in b.by_task.get(t, {}).items() if v}
        return {"mode": b.mode, "task_j": b.task_j, "power_w": b.power_w, "spent_j": spent,
                "total_j": round(sum(spent.values()), 6), "guard_tripped": t in b.trips,
                "deadline_s": self.cfg.task_deadline_s, "deadline_tripped": t in b.late,
                "planned_samples": self.plans[t]["samples"] if t in self.plans else None}
