"""TaskLedger: the one place that says which task is open, which have ended and which are trained,
and which task an arriving sample may go to.

Tasks are numbered in order from 0 and pass through the states below, one at a time. Train samples
go to the open task, or to the next number, which opens it and ends the open one implicitly; test
samples may go to any task up to the one after the open one. A task's end is committed to the flash
meta (``ENDED_KEY``) before it is acknowledged, so a restart knows it; which tasks are trained comes
back from the checkpoint (the learner's accuracy rows). The ledger is guarded by its session's lock.
Standard library only.
"""

from __future__ import annotations

import json
from typing import Optional, Protocol

from miro_runtime.session.errors import SessionError

ENDED_KEY = "live/ended"  # flash meta: the tasks whose end was committed, in order (JSON list)
FAILED_KEY = "live/failed"  # flash meta: the tasks whose training failed after its retries (JSON list)
TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)
# the trainer's health (status "health"; the daemon's watchdog and ``miro status``'s exit code read it)
HEALTH_OK = "ok"
HEALTH_ERROR = "error"  # a task failed, or the last training job raised and is being retried
HEALTH_WEDGED = "wedged"  # work pending and no training progress for the trainer's bound


class TaskState:
    """A task's state (supervisor's ``ProcessStates`` style). In online mode a task trains while it
    ingests: it is TRAINING from its first trained batch, and takes samples until it is ended."""

    NEW = "new"  # no train sample yet: the task after the open one opens with its first
    INGESTING = "ingesting"  # the open task: train samples go to it
    ENDED = "ended"  # takes no more train samples; waits for the trainer (epoch mode: its data is complete)
    TRAINING = "training"  # the trainer has begun it (its energy window is open)
    TRAINED = "trained"  # trained and evaluated; its train samples are freed
    FAILED = "failed"  # training kept failing (retries spent): skipped, its samples stay stored


class MetaStore(Protocol):
    """Where the ledger commits what must survive a restart (the flash tier's meta)."""

    def set_meta(self, key: str, value: str) -> None: ...


class TaskLedger:
    def __init__(self):
        self.open_task = -1  # the task train samples go to (-1: none yet)
        self.ended: list = []  # tasks whose end was committed, in order
        self.trained = 0  # tasks done (trained or failed): 0 .. trained-1; the trainer's next is ``trained``
        self.failed: list = []  # tasks whose training failed after its retries, in order
        self._begun = -1  # the task the trainer has begun and not yet finished
        self._interrupted = False  # a shutdown stopped an epoch-mode task mid-way (the learner checkpointed it)
        self._meta: Optional[MetaStore] = None

    def attach(self, meta: MetaStore):
        """Where ends are committed from now on (the store opens with the first sample or the resume)."""
        self._meta = meta

    def restore(self, ended_json: Optional[str], trained: int, n_tasks: int, failed_json: Optional[str] = None):
        """After a restart: the ended and failed lists the store holds, ``trained``: the tasks below
        it the checkpoint trained, ``n_tasks`` tasks the stream knows. The open task is the last one
        unless it has ended."""
        self.ended = json.loads(ended_json or "[]")
        self.failed = json.loads(failed_json or "[]")
        self.trained = max([trained] + [t + 1 for t in self.failed])
        last = n_tasks - 1
        self.open_task = last if n_tasks and last not in self.ended else (max(self.ended) if self.ended else -1)

    # ------------------------------------------------------------------ states
    def state(self, t: int) -> str:
        if t in self.failed:
            return TaskState.FAILED
        if t < self.trained:
            return TaskState.TRAINED
        if t == self._begun:
            return TaskState.TRAINING
        if t in self.ended or t < self.open_task:  # below the open task: no more samples, as if ended
            return TaskState.ENDED
        return TaskState.INGESTING if t == self.open_task else TaskState.NEW

    def is_ended(self, t: int) -> bool:
        """Whether ``t``'s end was committed: the trainer finishes it once its online batches are trained."""
        return t in self.ended

    # ------------------------------------------------------------------ where samples go
    def admit_train(self, task: int) -> Optional[int]:
        """Check that train samples may go to ``task``. Samples for the next task end the open one:
        that end is committed here and its task returned (None when nothing ended)."""
        if task in self.ended or task < self.open_task:
            raise SessionError("conflict", f"task {task} has ended; train samples go to task {self.open_task + 1}"
                                           f"{'' if task < self.open_task else ' (a new task)'}")
        if task > self.open_task + 1:
            raise SessionError("conflict", f"tasks are numbered in order: the next task is {self.open_task + 1}, "
                                           f"got {task}")
        if task == self.open_task + 1 and self.open_task >= 0 and self.open_task not in self.ended:
            implicit = self.open_task
            self._commit_end(implicit)
            return implicit
        return None

    def next_task(self) -> int:
        """Where train samples that name no task go: the open task, or the next one once it has ended."""
        return self.open_task if self.open_task >= 0 and self.open_task not in self.ended else self.open_task + 1

    def admit_test(self, task: int):
        """Test samples may go to any task up to the one after the open one."""
        if task > max(self.open_task, 0) + 1:
            raise SessionError("conflict", f"test samples for task {task}: tasks so far end at "
                                           f"{self.open_task}; number tasks in order")

    def opened(self, task: int):
        """Train samples of ``task`` are being stored: it is the open task from now on."""
        if task > self.open_task:
            self.open_task = task

    def end(self, task: int) -> bool:
        """Commit the end of ``task`` (the open one); durable when this returns. False: it had ended."""
        if task in self.ended:
            return False
        if self.open_task < 0:  # a fresh state directory: nothing to end, and no store to commit to yet
            raise SessionError("conflict", f"no task is open yet, so task {task} cannot end: ingest train samples "
                                           f"first (tasks are numbered from 0)")
        if task != self.open_task:
            raise SessionError("conflict", f"task {task} is not the open task ({self.open_task}); "
                                           f"{'ingest its samples first' if task > self.open_task else 'ended'}")
        self._commit_end(task)
        return True

    def _commit_end(self, task: int):
        self.ended.append(task)
        self._meta.set_meta(ENDED_KEY, json.dumps(self.ended))  # durable before acknowledged

    # ------------------------------------------------------------------ training
    def begin(self, t: int):
        """The trainer has begun ``t`` (online: with its first batch; epoch mode: at its end)."""
        self._begun = t

    def finish(self, t: int):
        """``t`` is trained and evaluated."""
        self.trained = t + 1
        self._begun = -1

    def abort(self):
        """The task in training raised: the trainer begins it again (its energy window was cancelled)."""
        self._begun = -1

    def fail(self, t: int):
        """``t``'s training failed after its retries: committed (a restart skips it too); the next task is due."""
        self.failed.append(t)
        self._meta.set_meta(FAILED_KEY, json.dumps(self.failed))
        self.trained = t + 1
        self._begun = -1

    def interrupt(self):
        """A shutdown stopped the task in training mid-epoch; the learner has checkpointed where."""
        self._interrupted = True

    @property
    def interrupted(self) -> bool:
        return self._interrupted
