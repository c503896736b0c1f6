"""The hook protocol between the learner and a controller (Miro is one): what the learner calls,
and what a controller may read of it. Nothing else of the learner is a controller's business.

The learner calls, on the thread that trains:
  ``task_begin(view, t)``          before task t trains (epoch mode: once its data is complete);
                                   may adopt new knobs (``cfg.memory``, ``cfg.epochs``, ...)
  ``on_resources(view, t, snap)``  between steps, every ``cfg.monitor_every_s``, when
                                   ``watches_resources`` (the learner then runs a resource monitor)
  ``between_steps(view, t, p)``    after every step of an epoch-mode task, when ``steers_steps``:
                                   ``p`` a ``StepProgress``; may re-plan the task's length
                                   (``view.guard.plan``)
  ``task_end(view, t, record)``    after task t's evaluation; may set the record's controller fields
  ``state()`` / ``load_state(view, state)``   JSON-able, kept in every checkpoint
  ``summary()``                    keys merged into the run's summary
``Controller`` declares each with a no-op default (as LMCache's abstract backend and Mammoth's
``ContinualModel`` do): the learner calls them unconditionally, a controller overrides what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

from miro_runtime.records import TaskRecord


class LearnerView(Protocol):
    """What a controller reads of the learner (``Learner`` implements it)."""

    cfg: Any  # RunConfig: the live knobs; a controller writes the ones it adopts here
    stream: Any  # shape, num_classes, classes_upto(t), tasks
    flash: Any  # the FlashTier: class_ids / read_batch for validation data, set_budget to adopt
    strategy: Any  # the running Strategy: model, memory (resize), settle(), set_knobs(), swap_engine
    meter: Any  # the energy meter: begin_window / end_window around what a controller spends
    guard: Any  # engine.budget.BudgetGuard: the user's energy budget; a controller books its profiling there
    device: str

    def task_data(self, t: int) -> tuple:
        """(x uint8 (N, C, H, W), y int64 (N,)): the samples task t delivered for training."""

    def event(self, kind: str, **fields) -> dict:
        """Write one decision to the structured log."""


@dataclass(frozen=True)
class StepProgress:
    """Where an epoch-mode task's training stands after a step (since the task began in this process)."""
    samples: int  # new samples trained (what a plan's length counts)
    window_j: Optional[float]  # joules metered in the task's window so far (None: the meter cannot tell yet)
    in_window_j: float  # what the budget guard counts of it (requests served meanwhile taken out; a carry in)
    window_s: float  # wall seconds since the window opened (the steps and the work between them)
    elapsed_s: float  # wall seconds since the task began, its profiling included: what a deadline counts


class Controller:
    """A controller that does nothing: the base of every controller, each hook a no-op."""

    watches_resources = False  # True: the learner hands ``on_resources`` a snapshot between steps
    steers_steps = False  # True: the learner hands ``between_steps`` the task's progress after every step

    def __init__(self) -> None:
        self.decisions: list = []  # Decision records (miro_runtime.records), oldest first

    def task_begin(self, view: LearnerView, t: int) -> None:
        """Task t is about to train: choose and adopt knobs."""

    def on_resources(self, view: LearnerView, t: int, snap) -> None:
        """Between steps of task t: ``snap`` is a profilers.monitor.Snapshot."""

    def between_steps(self, view: LearnerView, t: int, progress: StepProgress) -> None:
        """After a step of task t (epoch mode)."""

    def task_end(self, view: LearnerView, t: int, record: TaskRecord) -> None:
        """Task t was evaluated: book what the controller spent on it in ``record``."""

    def state(self) -> dict:
        """What a resumed run needs to continue deciding as this one would (JSON-able)."""
        return {}

    def load_state(self, view: LearnerView, state: dict) -> None:
        """Continue from ``state()`` of a checkpoint; re-adopt the knobs it was running with."""

    def summary(self) -> dict:
        """Keys merged into the run's summary."""
        return {}

    def knobs_key(self) -> Optional[str]:
        """The knobs in force as the controller names them (Miro: ``Knobs.key()``); None: it tunes none."""
        return None
