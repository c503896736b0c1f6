"""The hook protocol between the learner and a controller (Miro is one): what the learner calls,
and what a controller may read of it. Nothing else of the learner is a controller's business.

The learner calls, on the thread that trains:
  ``task_begin(view, t)``          before task t trains (epoch mode: once its data is complete);
                                   may adopt new knobs (``cfg.memory``, ``cfg.epochs``, ...)
  ``on_resources(view, t, snap)``  between steps, every ``cfg.monitor_every_s`` (optional method)
  ``task_end(view, t, record)``    after task t's evaluation; may add keys to the record
  ``state()`` / ``load_state(view, state)``   JSON-able, kept in every checkpoint
  ``summary()``                    keys merged into the run's summary
"""

from __future__ import annotations

from typing import Any, Protocol


class LearnerView(Protocol):
    """What a controller reads of the learner (``Learner`` implements it)."""

    cfg: Any  # RunConfig: the live knobs; a controller writes the ones it adopts here
    stream: Any  # shape, num_classes, classes_upto(t), tasks
    flash: Any  # the FlashTier: class_ids / read_batch for validation data, set_budget to adopt
    strategy: Any  # the running strategy: model, memory (resize), settle()
    meter: Any  # the energy meter: begin_window / end_window around what a controller spends
    device: str

    def task_data(self, t: int) -> tuple:
        """(x uint8 (N, C, H, W), y int64 (N,)): the samples task t delivered for training."""

    def event(self, kind: str, **fields) -> dict:
        """Write one decision to the structured log."""


class Controller(Protocol):
    def task_begin(self, view: LearnerView, t: int) -> None: ...

    def task_end(self, view: LearnerView, t: int, record: dict) -> None: ...

    def state(self) -> dict: ...

    def load_state(self, view: LearnerView, state: dict) -> None: ...

    def summary(self) -> dict: ...
