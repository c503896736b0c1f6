"""The trainer: the one thread that owns the model while it trains.

Between steps it takes work in this order: wait while the pause policy says resources press (RAM,
battery, thermals); run a job asked of it (a Miro profile round now); train the next online batch of
the next task to train; finish that task once it has ended (epoch mode trains its epochs here). It
snapshots the model after each task and every ``snapshot_every`` steps, so ``predict`` reads a copy
and never waits behind a training step.

A job that raises is logged once per attempt (its cause and the frame that raised, no traceback
flood), its task's energy window is cancelled, and it is tried again after a back-off that doubles
from ``retry_backoff_s``; after ``retries`` retries its task is FAILED (kept in the store's meta,
its samples stay stored) and the trainer moves on to the next task. ``health`` says whether the
trainer is wedged: work pending and no progress for ``wedged_after_s``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import logging
import threading
import time
import traceback
from typing import Callable, Optional

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.log import EventLog
from miro_runtime.records import Position, as_dict
from miro_runtime.session.config import SessionConfig
from miro_runtime.session.errors import SessionError
from miro_runtime.session.ledger import HEALTH_ERROR, HEALTH_OK, HEALTH_WEDGED, TaskLedger, TaskState

log = logging.getLogger("miro.session")
DECISION_KEYS = ("task", "rule", "winner", "candidates", "not_profiled", "profiling_energy_j")
TRAIN_RETRIES = 3  # a failing training job is tried again this many times, then its task is FAILED
RETRY_BACKOFF_S = 1.0  # the wait before the first retry; it doubles for each next one
WEDGED_AFTER_S = 600.0  # work pending and no training progress for this long: the trainer is wedged
# what the position a checkpoint records means depends on these: changed across a restart while a task
# is mid-way, that task trains again from its start (the safe point) under the new settings
POSITION_KEYS = ("online", "batch_size")


class PausePolicy:
    """Training pauses while resources press and resumes when they clear; both are logged. The
    monitor is read at most every ``monitor_every_s`` (0.2 s at the least)."""

    def __init__(self, cfg: RunConfig, scfg: SessionConfig, log_: EventLog, monitor=None):
        self.cfg, self.scfg, self.log, self.monitor = cfg, scfg, log_, monitor
        self.paused: Optional[str] = None  # why training is paused now
        self._last_watch = 0.0

    def check(self) -> Optional[str]:
        """Why training must pause now, or None."""
        if self.monitor is None or time.monotonic() - self._last_watch < max(self.cfg.monitor_every_s, 0.2):
            return self.paused
        self._last_watch = time.monotonic()
        snap = self.monitor.snapshot()
        why = None
        sc = self.scfg
        if snap.available_ram_mb is not None and snap.available_ram_mb < sc.pause_ram_floor_mb:
            why = f"available RAM {snap.available_ram_mb:.0f} MB < pause_ram_floor_mb {sc.pause_ram_floor_mb:g}"
        bat = snap.battery
        low = bat and bat.get("percent") is not None and bat["percent"] < sc.pause_battery_floor
        if low and not bat.get("plugged"):
            why = f"battery {bat['percent']:g}% < pause_battery_floor {sc.pause_battery_floor:g}%, unplugged"
        if sc.pause_on_throttle and snap.throttled:
            why = f"thermal throttling ({snap.throttle_source})"
        if why and not self.paused:
            self.log.event("training_paused", why=why, resources=snap.to_dict())
        elif not why and self.paused:
            self.log.event("training_resumed", was=self.paused, resources=snap.to_dict())
        self.paused = why
        return why


class OnlineBacklog:
    """Online mode: batches stored but not yet trained, oldest first. Beyond ``online_backlog``
    samples the oldest go untrained: they stay stored, and in the memory's offer at task end."""

    def __init__(self, scfg: SessionConfig, log_: EventLog):
        self.scfg, self.log = scfg, log_
        self.batches: collections.deque = collections.deque()  # (task, x, y, ids)
        self.n = 0  # samples held
        self.untrained = 0  # samples dropped from training
        self.trained_upto = -1  # the highest sample id trained (a restart queues the ones above it)

    def head_task(self) -> Optional[int]:
        return self.batches[0][0] if self.batches else None

    def push(self, t: int, x, y, ids):
        self.batches.append((t, x, y, np.asarray(ids)))
        self.n += len(y)
        while self.n > self.scfg.online_backlog and len(self.batches) > 1:
            old = self.batches.popleft()
            self.n -= len(old[2])
            self.untrained += len(old[2])
            self.log.event("online_backlog_dropped", samples=len(old[2]), task=old[0],
                           why=f"more than online_backlog={self.scfg.online_backlog} untrained samples")

    def put_back(self, batch: tuple):
        """A batch whose step raised goes back to the front, to be tried again."""
        self.batches.appendleft(batch)
        self.n += len(batch[2])

    def drop_before(self, t: int) -> int:
        """Batches of tasks below ``t`` (failed ones) go untrained; -> samples dropped."""
        dropped = 0
        while self.batches and self.batches[0][0] < t:
            dropped += len(self.batches.popleft()[2])
        self.n -= dropped
        self.untrained += dropped
        return dropped

    def take(self, batch_size: int) -> tuple:
        """(task, x, y, ids): the next batch of at most ``batch_size`` samples of the oldest task."""
        t, x, y, ids = self.batches[0]
        if len(y) > batch_size:
            self.batches[0] = (t, x[batch_size:], y[batch_size:], ids[batch_size:])
        else:
            self.batches.popleft()
        yb = y[:batch_size]
        self.n -= len(yb)
        return t, x[:batch_size], yb, ids[:batch_size]


class Trainer:
    """The training loop over a session's learner; ``run`` is the thread's body. The session's
    condition ``work`` guards the stream and the ledger, and wakes the loop when work arrives."""

    def __init__(self, cfg: RunConfig, scfg: SessionConfig, ledger: TaskLedger, work: threading.Condition,
                 log_: EventLog, monitor=None):
        self.cfg, self.scfg, self.ledger, self.work, self.log = cfg, scfg, ledger, work, log_
        self.learner = None  # set by ``attach`` once the first sample (or a resume) fixes the model
        self.stream = None
        self.backlog = OnlineBacklog(scfg, log_)
        self.pause = PausePolicy(cfg, scfg, log_, monitor)
        self.pos = Position()  # where training stands (what a checkpoint records)
        self.state = "waiting for data"
        self.snapshot = None  # (model copy, inverse label map, steps, tasks trained): what predict reads
        self._stop = threading.Event()
        self._pos_lock = threading.Lock()
        self._jobs: collections.deque = collections.deque()  # (fn, Future): asked of the trainer
        self.retries, self.retry_backoff_s, self.wedged_after_s = TRAIN_RETRIES, RETRY_BACKOFF_S, WEDGED_AFTER_S
        self.attempts = 0  # failed attempts of the task in training (reset when it trains a step or finishes)
        self.errors = 0  # failed training jobs since start (the metrics' counter)
        self.last_error: Optional[dict] = None  # {"task", "error", "where", "attempt", "ts"}
        self.progress_at = time.monotonic()  # the last training progress (or idle moment)
        self.pending = False  # whether the last look for work found some
        # epoch mode, for ``progress``: the learner's last step, and (task, batches per epoch) of the task
        # training -- estimated from its samples, raised by the steps seen, exact once an epoch has ended
        # (a strategy may train on more than the task's own samples: joint)
        self._live: Optional[Position] = None
        self._epoch_batches: tuple = (-1, 0)

    def attach(self, learner, stream, pos: Position):
        self.learner, self.stream, self.pos = learner, stream, pos

    def restore(self, extra: dict):
        """The online progress a checkpoint kept (``extra_state``)."""
        self.backlog.trained_upto = extra.get("trained_upto", -1)
        self.backlog.untrained = extra.get("untrained", 0)

    def extra_state(self) -> dict:
        """Kept in every checkpoint: which online samples are trained, how many went untrained, and
        the settings its position depends on."""
        return {"trained_upto": self.backlog.trained_upto, "untrained": self.backlog.untrained,
                "position_cfg": {k: getattr(self.cfg, k) for k in POSITION_KEYS}}

    def position_changes(self, extra: dict) -> dict:
        """The settings the restored position depends on that differ now: {key: [then, now]}."""
        then = extra.get("position_cfg") or {}
        now = {k: getattr(self.cfg, k) for k in POSITION_KEYS}
        return {k: [then[k], now[k]] for k in POSITION_KEYS if k in then and then[k] != now[k]}

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self):
        self._stop.set()
        with self.work:
            self.work.notify_all()

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Train until ``stop()``; then return once the current step is done and a checkpoint is written."""
        while not self._stop.is_set():
            job = self._next_job()
            if job is None:
                continue
            if self.learner is not None:
                self.learner.energy_paused(False)
            try:
                job()
            except Exception as e:  # logged once with its cause, retried, then the task is failed; the daemon stays up
                self._failed(e)
                continue
            self.progress_at = time.monotonic()
        lr = self.learner
        if lr is not None and lr.strategy is not None and self.cfg.online and not self.ledger.interrupted:
            with self._pos_lock:  # online progress since the last checkpoint (epoch mode checkpointed itself)
                lr.checkpoint(self.pos.to_dict())

    def _next_job(self) -> Optional[Callable[[], None]]:
        with self.work:
            while not self._stop.is_set():
                was_paused = self.pause.paused
                why = self.pause.check()
                if why:
                    if not was_paused:
                        self.state = f"paused: {why}"
                    self._idle()
                    self.work.wait(min(1.0, self.cfg.monitor_every_s or 1.0))
                    continue
                if self._jobs:
                    fn, fut = self._jobs.popleft()
                    return lambda: _complete(fut, fn)
                self.pending = True
                if self.stream is not None:
                    led = self.ledger
                    self.backlog.drop_before(led.trained)  # batches of a failed task stay stored, untrained
                    head = self.backlog.head_task()
                    if head is not None and head == led.trained:  # online batches train in task order
                        if led.state(head) != TaskState.TRAINING:
                            return lambda: self._begin(head)
                        return self._online_step
                    t = led.trained
                    if led.is_ended(t) and not (self.cfg.online and head == t):
                        return lambda: self._finish(t)
                self.state = "idle" if self.stream is not None else "waiting for data"
                self.pending = False
                self.progress_at = time.monotonic()
                self._idle()
                self.work.wait(0.5)
        return None

    def _idle(self):
        """The trainer waits: the open task's energy window stops counting until the next job runs."""
        if self.learner is not None:
            self.learner.energy_paused(True)

    def _failed(self, e: Exception):
        """One attempt of the task in training raised: log it once, cancel its energy window, wait the
        back-off -- or, the retries spent, mark the task FAILED and move on to the next."""
        t = self.ledger.trained
        self.attempts += 1
        self.errors += 1
        frame = traceback.extract_tb(e.__traceback__)[-1]
        err = {"task": t, "error": f"{type(e).__name__}: {e}"[:500],
               "where": f"{frame.filename}:{frame.lineno} in {frame.name}", "attempt": self.attempts,
               "ts": round(time.time(), 3)}
        self.last_error = err
        log.debug("training job failed", exc_info=e)  # the whole traceback only at debug level
        if self.learner is not None:
            self.learner.abort_task()
        with self.work:
            self.ledger.abort()
        if self.attempts <= self.retries:
            wait = self.retry_backoff_s * 2 ** (self.attempts - 1)
            self.state = f"error: task {t}: {err['error']} (retry {self.attempts} of {self.retries} in {wait:g} s)"
            self.log.event("error", component="trainer", **err, retry_in_s=wait)
            self._stop.wait(wait)
            return
        self.log.event("error", component="trainer", **err, retry_in_s=None)
        with self.work:
            self.ledger.fail(t)
            dropped = self.backlog.drop_before(t + 1)
            if self.stream is not None:
                self.stream.free_train(t)  # freed from RAM; the flash tier keeps them
        with self._pos_lock:
            self.pos = Position.start_of(t + 1)
        self.attempts = 0
        self.state = f"error: task {t} failed: {err['error']}"
        self.log.event("task_failed", level="error", component="trainer", task=t, error=err["error"],
                       where=err["where"], attempts=self.retries + 1, online_untrained=dropped,
                       why=f"training failed {self.retries + 1} times; its samples stay stored; the next task trains")

    def on_learner_event(self, kind: str, payload: dict):
        """The learner's events (its ``on_event``): epoch mode's steps move ``progress`` on."""
        if kind != "step" or self.cfg.online:
            return
        pos, last = Position.from_dict(payload), self._live
        t, nb = self._epoch_batches
        if last is not None and last.task == pos.task and pos.epoch > last.epoch:
            nb = last.batch  # the epoch just done had this many batches: exact from now on
        self._epoch_batches = (pos.task, max(nb, pos.batch) if t == pos.task else pos.batch)
        self._live = pos

    def progress(self) -> Optional[dict]:
        """How far the next task to train is trained: epoch mode in steps (once it has ended), online
        mode in samples (trained of stored; ones the backlog skipped count as passed). None when no
        task has work. Read without the lock (status answers at once): figures are a moment's view."""
        led, s = self.ledger, self.stream
        t = led.trained
        if s is None or t >= len(s.tasks) or led.state(t) not in (TaskState.INGESTING, TaskState.ENDED,
                                                                   TaskState.TRAINING):
            return None
        stored = s.pending_train(t)
        if self.cfg.online:
            queued = sum(len(b[2]) for b in list(self.backlog.batches) if b[0] == t)  # list(): a snapshot
            return _progress(t, led.state(t), max(stored - queued, 0), stored, "samples")
        if led.state(t) == TaskState.INGESTING:
            return None  # epoch mode trains a task once it has ended
        epochs = (self.learner.cfg if self.learner is not None else self.cfg).epochs
        known_t, nb = self._epoch_batches
        nb = nb if known_t == t else -(-stored // self.cfg.batch_size)
        live = self._live if self._live is not None and self._live.task == t else self.pos.within(t)
        total = epochs * nb
        p = _progress(t, led.state(t), min(live.epoch * nb + live.batch, total), total, "steps")
        if p is not None:
            p.update(epoch=min(epochs, p["done"] // nb + 1), epochs=epochs)
        return p

    def health(self) -> str:
        """``wedged``: work pending and no progress for ``wedged_after_s`` (not while paused);
        ``error``: a task failed or the last job raised; else ``ok``."""
        if self.pending and not self.pause.paused and time.monotonic() - self.progress_at > self.wedged_after_s:
            return HEALTH_WEDGED
        return HEALTH_ERROR if self.ledger.failed or self.attempts else HEALTH_OK

    def _begin(self, t: int):
        pos = self.pos.within(t)
        self.state = f"training task {t}"
        self._live = None  # a retry starts from the position, not where the failed attempt got to
        self.learner.begin_task(t, pos.to_dict())
        with self.work:
            self.ledger.begin(t)
        with self._pos_lock:
            self.pos = pos
        self.log.event("task_begin", task=t, classes=self.stream.tasks[t].classes if t < len(self.stream.tasks) else [],
                       mode="online" if self.cfg.online else "epochs")

    def _online_step(self):
        with self.work:
            batch = self.backlog.take(self.cfg.batch_size)
            grow = self.stream.num_classes > self.learner.strategy.model.head.num_classes
        t, xb, yb, ib = batch
        self.state = f"training task {t} (online)"
        with self._pos_lock:
            before = (self.pos, self.backlog.trained_upto)
            self.pos = Position(t, 0, self.pos.batch + 1)
            self.backlog.trained_upto = max(self.backlog.trained_upto, int(ib.max()))
            try:
                if grow:
                    self.learner.grow_classes()
                self.learner.observe(t, xb, yb, ib, self.pos.to_dict())
            except Exception:  # tried again from the same batch
                self.pos, self.backlog.trained_upto = before
                with self.work:
                    self.backlog.put_back(batch)
                raise
        self.attempts = 0  # a step trained: the task's failures so far were transient
        if self.scfg.snapshot_every and self.learner.steps % self.scfg.snapshot_every == 0:
            self.snap()

    def _finish(self, t: int):
        lr = self.learner
        with self.work:
            x, y, ids = self.stream.train_arrays(t)
        if not len(y):  # ended with no train samples (or all evicted): nothing to learn, say so
            self.log.event("error", component="trainer", task=t,
                           error=f"task {t} ended with no stored training samples; skipped")
        if self.ledger.state(t) != TaskState.TRAINING:
            self._begin(t)  # epoch mode: the task's data is complete now (begin_task grows the head)
        if not self.cfg.online and len(y):
            self.state = f"training task {t} ({self.cfg.epochs} epochs)"
            if self._epoch_batches[0] != t:  # an estimate until its first epoch ends (on_learner_event)
                self._epoch_batches = (t, -(-len(y) // self.cfg.batch_size))
            pos = self.pos.within(t)
            if not lr.train_epochs(t, x, y, ids, pos.to_dict(), should_stop=self._stopping_step):
                self.ledger.interrupt()
                return
        self.state = f"evaluating task {t}"
        rec = as_dict(lr.finish_task(t, x, y, ids))
        # predict's copy first: whoever sees the task trained (task_end's wait reads the ledger) predicts
        # from the model evaluation just measured, not from a copy taken mid-task
        self.snap(trained=t + 1)
        with self.work:
            self.ledger.finish(t)
            self.stream.free_train(t)
            self.pos = Position.start_of(t + 1)
        self.attempts = 0
        self.log.event("task_trained", task=t, acc=rec["acc"], avg_acc=rec["avg_acc"], energy_j=rec["energy_j"],
                       energy_provenance=rec["energy_provenance"])

    def _stopping_step(self) -> bool:
        """Asked between epoch steps: stop now (shutdown) -- the learner then checkpoints. Also
        snapshots for predict."""
        lr = self.learner
        self.progress_at = time.monotonic()
        if lr.steps and self.scfg.snapshot_every and lr.steps % self.scfg.snapshot_every == 0:
            self.snap()
        return self._stop.is_set()

    # ------------------------------------------------------------------ asked of the trainer
    def request_profile(self) -> concurrent.futures.Future:
        """Miro now (``miro profile``): a profile round on the open task's samples so far, run between
        steps; the Future holds the decision."""
        return self.request(self._profile_now)

    def request(self, fn: Callable[[], dict]) -> concurrent.futures.Future:
        """``fn()`` run by the trainer between steps (it owns the model); the Future holds its answer."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.work:
            self._jobs.append((fn, fut))
            self.work.notify_all()
        return fut

    def _profile_now(self) -> dict:
        lr, t = self.learner, self.ledger.open_task
        with self.work:
            n = len(self.stream.train_arrays(t)[1]) if t >= 0 else 0
        if lr.hooks is None:
            raise SessionError("not-ready", "no controller: start the daemon with learning.miro = true")
        if t < self.ledger.trained or not n:
            raise SessionError("not-ready", "Miro profiles on the open task's samples: ingest some first")
        lr.hooks.task_begin(lr, t)
        d = as_dict(lr.hooks.decisions[-1])
        return {k: d.get(k) for k in DECISION_KEYS}

    def checkpoint(self) -> dict:
        """A checkpoint now if no epoch-mode task is mid-way (it checkpoints at its next boundary)."""
        with self.work, self._pos_lock:
            if not self.learner.in_task or self.cfg.online:
                self.learner.checkpoint(self.pos.to_dict())
                return {"written": True, "position": self.pos.to_dict()}
        return {"written": False, "why": "a task is training; a checkpoint follows at its next boundary"}

    def snap(self, trained: Optional[int] = None):
        """Copy the model for predict (after each task, every ``snapshot_every`` steps); ``trained``: the
        tasks it has learned, when the ledger does not say so yet."""
        if self.learner is None or self.learner.strategy.model.head.num_classes == 0:
            return  # nothing trained yet: predict says not-ready rather than answer from an empty head
        m = copy.deepcopy(self.learner.strategy.model).eval()
        self.snapshot = (m, list(self.stream.inv), self.learner.steps,
                         self.ledger.trained if trained is None else trained)


def _progress(t: int, state: str, done: int, total: int, unit: str) -> Optional[dict]:
    """Session.status's ``progress`` (every key always there; None when there is nothing to train)."""
    if total <= 0:
        return None
    return {"task": t, "state": state, "done": done, "total": total, "unit": unit,
            "fraction": round(done / total, 4), "epoch": None, "epochs": None}


def _complete(fut: concurrent.futures.Future, fn: Callable):
    try:
        fut.set_result(fn())
    except Exception as e:  # the caller gets it, the trainer goes on
        fut.set_exception(e)
