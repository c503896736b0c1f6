"""An open-ended learning session: samples arrive from clients, tasks end when a client says so,
and nothing says in advance how many tasks or classes there will be. mirod is a socket around this
class; it also runs in-process (tests, notebooks).

Durability: ``ingest`` returns once the samples are committed and fsynced in the flash tier; the
label map and the task structure are written in the same LMDB transaction as the batch that changes
them, and a task's end is committed before it is acknowledged. A restart -- whatever killed the
process -- rebuilds everything from the store and the last checkpoint and carries on: the task being
ingested gets its stored samples back, an ended task whose training was cut short trains again
from its last checkpoint, and online batches not yet trained are trained.

Threads: any number of ingest/predict/status callers; one trainer thread (``run_trainer``) owns
the model while it trains. ``predict`` reads a snapshot of the model (taken after each task and
every ``snapshot_every`` steps), so it never waits behind a training step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.log import EventLog
from miro_runtime.engine.streams import TaskSpec, check_images

log = logging.getLogger("miro.session")
TEST_NS = "test"


class SessionError(ValueError):
    """A request the session refuses; ``kind`` says why (params, conflict, busy, not-ready)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class LiveStream:
    """A stream that grows as data arrives. Clients' labels (any ints in [0, max_classes)) map to
    contiguous ids in order of first arrival, as the batch streams relabel in arrival order, so the
    growing head only has outputs for classes seen; ``user_label`` maps back."""

    name = "live"

    def __init__(self, shape, max_classes: int):
        self.shape = tuple(int(s) for s in shape)
        self.max_classes = max_classes
        self.inv: list = []  # internal id -> client label
        self.map: dict = {}  # client label -> internal id
        self.tasks: list = []  # TaskSpec per task: the classes first seen in it
        self.train: list = []  # per task (x, y); the open task's grows, a trained task's is freed
        self.train_ids: list = []  # per task, the flash ids of train[t]
        self.test: list = []  # per task (x, y), kept for evaluation
        self._chunks: dict = {}  # task -> [(ids, x, y)] not yet merged into train[t]

    @property
    def num_classes(self) -> int:
        return max(1, len(self.inv))

    def classes_upto(self, t: int) -> list:
        return [c for task in self.tasks[: t + 1] for c in task.classes]

    def describe(self) -> dict:
        return {"name": "live", "shape": list(self.shape), "num_classes": len(self.inv),
                "tasks": [t.classes for t in self.tasks], "class_labels": list(self.inv),
                "train_sizes": [len(y) for _, y in self.train], "test_sizes": [len(y) for _, y in self.test]}

    def ensure_task(self, t: int):
        while len(self.tasks) <= t:
            self.tasks.append(TaskSpec(len(self.tasks), []))
            self.train.append((np.zeros((0, *self.shape), np.uint8), np.zeros(0, np.int64)))
            self.train_ids.append(np.zeros(0, np.int64))
            self.test.append((np.zeros((0, *self.shape), np.uint8), np.zeros(0, np.int64)))

    def map_labels(self, t: int, labels) -> tuple:
        """(internal ids, whether new classes appeared); new classes join task t."""
        new = False
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            c = self.map.get(v)
            if c is None:
                if len(self.inv) >= self.max_classes:
                    raise SessionError("params", f"label {v}: this daemon holds at most max_classes="
                                                 f"{self.max_classes} classes (config key max_classes)")
                c = self.map[v] = len(self.inv)
                self.inv.append(v)
                self.ensure_task(t)
                self.tasks[t].classes.append(c)
                new = True
            out[i] = c
        return out, new

    def add_train(self, t: int, ids, x, y):
        self._chunks.setdefault(t, []).append((np.asarray(ids, dtype=np.int64), x, y))

    def pending_train(self, t: int) -> int:
        return len(self.train[t][1]) + sum(len(c[2]) for c in self._chunks.get(t, []))

    def train_arrays(self, t: int) -> tuple:
        """(x, y, ids) of the task's samples in id order (the order a restart reads them back)."""
        parts = self._chunks.pop(t, [])
        if parts:
            ids = np.concatenate([self.train_ids[t]] + [p[0] for p in parts])
            x = np.concatenate([self.train[t][0]] + [p[1] for p in parts])
            y = np.concatenate([self.train[t][1]] + [p[2] for p in parts])
            order = np.argsort(ids, kind="stable")
            self.train[t], self.train_ids[t] = (x[order], y[order]), ids[order]
        return self.train[t][0], self.train[t][1], self.train_ids[t]

    def free_train(self, t: int):
        self.train[t] = (np.zeros((0, *self.shape), np.uint8), np.zeros(0, np.int64))
        self.train_ids[t] = np.zeros(0, np.int64)

    def add_test(self, t: int, x, y):
        x0, y0 = self.test[t]
        self.test[t] = (np.concatenate([x0, x]), np.concatenate([y0, y]))


@dataclass
class SessionConfig:
    """What the session adds to a RunConfig (the daemon's TOML holds both)."""

    max_classes: int = 256
    snapshot_every: int = 50  # steps between predict snapshots (and after every task)
    online_backlog: int = 20000  # online: untrained samples held; beyond it the oldest go untrained
    pause_ram_floor_mb: float = 64.0  # training pauses while available RAM is under this
    pause_battery_floor: float = 10.0  # ... or the battery is under this % and unplugged
    pause_on_throttle: bool = False  # ... or the CPU is thermally throttled
    ingest_timeout_s: float = 30.0  # a client waits this long for the writer, then gets 'busy'
    max_inflight: int = 8  # ingests being written at once; more wait (backpressure)


class Session:
    def __init__(self, cfg: RunConfig, scfg: Optional[SessionConfig] = None, log_: Optional[EventLog] = None,
                 monitor=None, retrain_from_store: bool = False):
        self.cfg, self.scfg = cfg, scfg or SessionConfig()
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.log = log_ or EventLog(os.path.join(cfg.run_dir, "events.jsonl"))
        self.monitor = monitor
        self.retrain_from_store = retrain_from_store
        self.lock = threading.RLock()  # the live stream's structure and the task state
        self.work = threading.Condition(self.lock)
        self.inflight = threading.BoundedSemaphore(self.scfg.max_inflight)
        self.learner = None
        self.stream: Optional[LiveStream] = None
        self.open_task = -1  # the task train samples go to
        self.ended: list = []  # tasks whose end was committed, in order
        self.done = 0  # tasks trained and evaluated
        self.pending: collections.deque = collections.deque()  # online: (task, x, y, ids) to train
        self.pending_n = 0
        self.untrained = 0  # online samples the backlog dropped from training (still stored)
        self.trained_upto = -1  # online: highest sample id trained
        self.pos = {"task": 0, "epoch": 0, "batch": 0}
        self.state = "waiting for data"
        self.paused: Optional[str] = None
        self.snapshot = None  # (model copy, inverse label map, steps, task)
        self.started = time.time()
        self.counters = {"ingested_train": 0, "ingested_test": 0, "ingest_batches": 0, "predictions": 0}
        self._task_begun = -1
        self._stop = threading.Event()
        self._pos_lock = threading.Lock()
        self._last_watch = 0.0
        self._stopped_in_task = False
        self._jobs: collections.deque = collections.deque()  # (fn, Future): asked of the trainer

    # ------------------------------------------------------------------ open / restart
    @property
    def state_dir(self) -> str:
        return os.path.join(self.cfg.run_dir, "state")

    def open(self):
        """Resume whatever the state directory holds (nothing: wait for the first ingest)."""
        if not os.path.exists(os.path.join(self.state_dir, "data.mdb")):
            return
        from miro_runtime.storage import FlashTier
        with FlashTier(self.state_dir, readonly=True) as f:
            try:
                spec = f.spec("samples")
            except Exception:
                return  # created, never written: nothing to resume
            meta = {k: f.get_meta(k) for k in ("live/labels", "live/tasks", "live/ended")}
        self._start(spec.shape, resume=True, meta=meta)

    def _check_same_run(self):
        """A state dir is one learner: what shapes its model and memory cannot change under it."""
        path = os.path.join(self.cfg.run_dir, "config.json")
        try:
            with open(path) as fh:
                stored = json.load(fh)
        except (OSError, ValueError) as e:
            raise SessionError("state", f"{path} is unreadable ({e}); the state directory's configuration is "
                                        f"unknown: restore the file or start on a fresh state directory") from None
        if not isinstance(stored, dict):
            raise SessionError("state", f"{path} holds no configuration object")
        fixed = ("strategy", "replay", "model", "em_policy", "flash_policy")
        diff = [f"learning.{k} = {stored[k]!r} there, {getattr(self.cfg, k)!r} here" for k in fixed
                if k in stored and stored[k] != getattr(self.cfg, k)]
        if diff:
            raise SessionError("state", f"state directory {self.cfg.run_dir} was created with another learner: "
                                        f"{'; '.join(diff)}. Set them back, or start on a fresh state directory")

    def _start(self, shape, resume: bool, meta: Optional[dict] = None):
        from miro_runtime.engine.learner import NS, Learner
        from miro_runtime.storage import SampleSpec
        if resume:
            self._check_same_run()
        s = LiveStream(shape, self.scfg.max_classes)
        meta = meta or {}
        if meta.get("live/labels"):
            s.inv = [int(v) for v in json.loads(meta["live/labels"])]
            s.map = {v: i for i, v in enumerate(s.inv)}
            for t, classes in enumerate(json.loads(meta["live/tasks"] or "[]")):
                s.ensure_task(t)
                s.tasks[t].classes = list(classes)
        self.ended = json.loads(meta.get("live/ended") or "[]")
        self.stream = s
        from miro_runtime.control import make_controller
        lr = Learner(self.cfg, s, hooks=make_controller(self.cfg), log=self.log, extra_state=self._extra_state,
                     retrain_from_store=self.retrain_from_store)
        try:
            self.pos = lr.open(resume=resume)
        except SessionError:
            raise
        except Exception as e:  # a damaged checkpoint or store: named, never a traceback
            lr.close()
            from miro_runtime.storage import StoreError

            from miro_runtime.engine.checkpoint import CheckpointError
            if isinstance(e, (CheckpointError, StoreError)):  # our own messages carry their next step
                raise SessionError("state", str(e)) from e
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "Weights only load failed" in msg or "weights_only" in msg:
                # torch's own text suggests weights_only=False: never, for a file read from disk
                msg = "it is damaged or not a miro checkpoint (torch.load(weights_only=True) refused it)"
            raise SessionError("state", f"cannot resume from {os.path.join(self.cfg.run_dir, 'checkpoint.pt')}: "
                                        f"{msg[:300]}. The samples in the flash tier are intact: move the checkpoint "
                                        f"aside and start mirod --retrain-from-store to train afresh on them") from e
        if not resume:
            with open(os.path.join(self.cfg.run_dir, "config.json"), "w") as fh:
                fh.write(self.cfg.to_json())
        lr.flash.declare_samples(TEST_NS, SampleSpec(shape=s.shape, dtype="uint8", num_classes=s.num_classes))
        self.learner = lr
        if resume:
            self._recover(lr, NS)
        self._snap()

    def _recover(self, lr, ns):
        """Rebuild the live stream from the store and position the trainer after a restart."""
        s, f = self.stream, lr.flash
        extra = lr.restored or {}
        self.trained_upto = extra.get("trained_upto", -1)
        self.untrained = extra.get("untrained", 0)
        self.done = len(lr.acc)
        # test sets: every stored test sample, by task
        n_test = int(f.class_counts(TEST_NS).sum())
        if n_test:
            ids = np.sort(np.concatenate([f.class_ids(TEST_NS, c) for c in range(len(f.class_counts(TEST_NS)))]))
            b = f.read_batch(TEST_NS, ids)
            for t in np.unique(b["tasks"]).tolist():
                s.ensure_task(t)
                m = b["tasks"] == t
                s.add_test(t, b["x"][m], b["labels"][m])
        # train samples of tasks not yet trained (the open one, an ended one cut short)
        pending = sorted(set(range(self.done, len(s.tasks))))
        ids_all = [f.class_ids(ns, c) for c in range(len(f.class_counts(ns)))]
        ids_all = np.sort(np.concatenate(ids_all)) if ids_all else np.zeros(0, np.int64)
        if pending and ids_all.size:
            # train ids grow with arrival and tasks arrive in order, so the pending tasks' samples are a
            # suffix of the ids: read back from the end until a chunk reaches an older task, never the
            # whole store (months of samples on a board)
            parts, end = [], ids_all.size
            while end > 0:
                b = f.read_batch(ns, ids_all[max(0, end - 4096):end])
                keep = b["tasks"] >= self.done
                parts.append({k: b[k][keep] for k in ("x", "labels", "tasks", "ids")})
                if not keep.all():
                    break
                end -= 4096
            b = {k: np.concatenate([p[k] for p in reversed(parts)]) for k in parts[0]}
            for t in pending:
                m = b["tasks"] == t
                if m.any():
                    s.ensure_task(t)
                    s.add_train(t, b["ids"][m], b["x"][m], b["labels"][m])
        self.open_task = len(s.tasks) - 1 if s.tasks and (len(s.tasks) - 1) not in self.ended else \
            (max(self.ended) if self.ended else -1)
        if self.cfg.online:  # batches stored but not trained before the restart: train them now
            for t in pending:
                if t in s._chunks:
                    x, y, ids = s.train_arrays(t)
                    keep = ids > self.trained_upto
                    if keep.any():
                        self._queue(t, x[keep], y[keep], ids[keep])
        self.log.event("session_resume", tasks_done=self.done, open_task=self.open_task, ended=self.ended,
                       classes=len(s.inv), pending_online=self.pending_n, position=self.pos)
        with self.lock:
            self.work.notify_all()

    def _extra_state(self) -> dict:
        return {"trained_upto": self.trained_upto, "untrained": self.untrained}

    # ------------------------------------------------------------------ ingest
    def already_ingested(self, source: str) -> bool:
        """Whether samples tagged ``source`` (an inbox file's identity) were committed before."""
        return self.learner is not None and self.learner.flash.get_meta(f"inbox/{source}") is not None

    def ingest(self, task: int, split: str, x, labels, source: Optional[str] = None) -> dict:
        """Validate, store durably, hand to the trainer. Returns once the samples are fsynced."""
        if split not in ("train", "test"):
            raise SessionError("params", f"split must be 'train' or 'test', got {split!r}")
        if isinstance(task, bool) or not isinstance(task, int) or task < 0:
            raise SessionError("params", f"task must be an integer >= 0, got {task!r}")
        x = np.asarray(x)
        if x.ndim != 4 or 0 in x.shape:
            raise SessionError("params", f"samples must be a non-empty (n, c, h, w) array, got shape {list(x.shape)}")
        labels = [int(v) for v in labels]
        if len(labels) != len(x):
            raise SessionError("params", f"{len(x)} samples but {len(labels)} labels")
        if any(v < 0 for v in labels):
            raise SessionError("params", "labels must be integers >= 0")
        if not self.inflight.acquire(timeout=self.scfg.ingest_timeout_s):
            raise SessionError("busy", f"the flash writer is behind ({self.scfg.max_inflight} ingests in flight for "
                                       f"{self.scfg.ingest_timeout_s:g} s); nothing was stored, send again")
        try:
            return self._ingest(task, split, x, labels, source)
        finally:
            self.inflight.release()

    def _ingest(self, task, split, x, labels, source=None) -> dict:
        from miro_runtime.engine.learner import NS
        with self.lock:
            if self.stream is None:
                if self._stop.is_set():
                    raise SessionError("stopping", "the daemon is stopping")
                self._start(x.shape[1:], resume=False)  # the first ingest fixes shape and model
                self.log.event("model_chosen", shape=list(x.shape[1:]), model=self.cfg.model,
                               strategy=self.cfg.strategy)
            s = self.stream
            try:
                x = check_images(x, s.shape, f"ingest into task {task} ({split})")
            except ValueError as e:
                raise SessionError("params", str(e)) from None
            if split == "train":
                self._check_train_task(task)
            elif task > max(self.open_task, 0) + 1:
                raise SessionError("conflict", f"test samples for task {task}: tasks so far end at "
                                               f"{self.open_task}; number tasks in order")
            y, new = s.map_labels(task, labels)
            meta = {}
            if new:  # the map goes into the same transaction as the batch that needs it
                meta = {"live/labels": json.dumps(s.inv), "live/tasks": json.dumps([t.classes for t in s.tasks])}
                f = self.learner.flash
                for ns in (NS, TEST_NS):
                    f.declare_samples(ns, dataclasses.replace(f.spec(ns), num_classes=s.num_classes))
            if source:  # committed with the samples: a restart after a kill does not ingest the file twice
                meta[f"inbox/{source}"] = "1"
            if split == "train" and task > self.open_task:
                self.open_task = task
            s.ensure_task(task)
            res = self.learner.store(task, x, y, meta=meta, ns=NS if split == "train" else TEST_NS)
            if split == "train":
                s.add_train(task, res.ids, x, y)
                self.counters["ingested_train"] += len(y)
                if self.cfg.online:
                    self._queue(task, x, y, res.ids)
            else:
                s.add_test(task, x, y)
                self.counters["ingested_test"] += len(y)
            self.counters["ingest_batches"] += 1
            self.work.notify_all()
        return {"acked": int(len(y)), "task": task, "split": split, "first_id": int(res.ids[0]),
                "stored": int(res.stored.sum()), "evicted": int(res.evicted), "new_classes": bool(new)}

    def _check_train_task(self, task):
        if task in self.ended or task < self.open_task:
            raise SessionError("conflict", f"task {task} has ended; train samples go to task {self.open_task + 1}"
                                           f"{'' if task < self.open_task else ' (a new task)'}")
        if task > self.open_task + 1:
            raise SessionError("conflict", f"tasks are numbered in order: the next task is {self.open_task + 1}, "
                                           f"got {task}")
        if task == self.open_task + 1 and self.open_task >= 0 and self.open_task not in self.ended:
            self._end(self.open_task, implicit=True)

    def _queue(self, t, x, y, ids):
        self.pending.append((t, x, y, np.asarray(ids)))
        self.pending_n += len(y)
        while self.pending_n > self.scfg.online_backlog and len(self.pending) > 1:
            old = self.pending.popleft()  # still stored, and still in the memory's offer at task end
            self.pending_n -= len(old[2])
            self.untrained += len(old[2])
            self.log.event("online_backlog_dropped", samples=len(old[2]), task=old[0],
                           why=f"more than online_backlog={self.scfg.online_backlog} untrained samples")

    # ------------------------------------------------------------------ task ends
    def end_task(self, task: int) -> dict:
        """Commit the end of ``task`` (the open one); training of it is the trainer's."""
        with self.lock:
            if task in self.ended:
                return {"task": task, "ended": True, "already": True}
            if task != self.open_task:
                raise SessionError("conflict", f"task {task} is not the open task ({self.open_task}); "
                                               f"{'ingest its samples first' if task > self.open_task else 'ended'}")
            self._end(task)
            return {"task": task, "ended": True, "samples": self.stream.pending_train(task)}

    def _end(self, task, implicit=False):
        self.ended.append(task)
        self.learner.flash.set_meta("live/ended", json.dumps(self.ended))  # durable before acknowledged
        self.log.event("task_end_requested", task=task, implicit=implicit)
        self.work.notify_all()

    # ------------------------------------------------------------------ the trainer
    def stop(self):
        self._stop.set()
        with self.lock:
            self.work.notify_all()

    def run_trainer(self):
        """The training loop (one thread). Returns after ``stop()`` once the current step is done
        and a checkpoint is written."""
        while not self._stop.is_set():
            job = self._next_job()
            if job is None:
                continue
            try:
                job()
            except Exception as e:  # logged with its context; the daemon stays up
                log.exception("training failed")
                self.log.event("error", component="trainer", error=f"{type(e).__name__}: {e}")
                self.state = f"error: {type(e).__name__}: {e}"
                if self.learner is not None:
                    self.learner.abort_task()
                self._stop.wait(1.0)
        lr = self.learner
        if lr is not None and lr.strategy is not None and self.cfg.online and not self._stopped_in_task:
            with self._pos_lock:  # online progress since the last checkpoint (epoch mode checkpointed itself)
                lr.checkpoint(dict(self.pos))

    def _next_job(self):
        with self.lock:
            while not self._stop.is_set():
                if self._pressure():
                    self.work.wait(min(1.0, self.cfg.monitor_every_s or 1.0))
                    continue
                if self._jobs:
                    fn, fut = self._jobs.popleft()
                    return lambda: _complete(fut, fn)
                if self.stream is not None:
                    if self.pending:
                        t = self.pending[0][0]
                        if self._task_begun != t and self.done == t:
                            return lambda: self._begin(t)
                        if self.done == t:
                            return self._online_step
                    t = self.done
                    if t in self.ended and not (self.cfg.online and self.pending and self.pending[0][0] == t):
                        return lambda: self._finish(t)
                self.state = "idle" if self.stream is not None else "waiting for data"
                self.work.wait(0.5)
        return None

    def _pressure(self) -> bool:
        """The training policy: pause while resources press, resume when they clear (both logged)."""
        if self.monitor is None or time.monotonic() - self._last_watch < max(self.cfg.monitor_every_s, 0.2):
            return self.paused is not None
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
            self.state = f"paused: {why}"
        elif not why and self.paused:
            self.log.event("training_resumed", was=self.paused, resources=snap.to_dict())
        self.paused = why
        return why is not None

    def _begin(self, t):
        pos = self.pos if self.pos["task"] == t else {"task": t, "epoch": 0, "batch": 0}
        self.state = f"training task {t}"
        self.learner.begin_task(t, pos)
        self._task_begun = t
        with self._pos_lock:
            self.pos = dict(pos)
        self.log.event("task_begin", task=t, classes=self.stream.tasks[t].classes if t < len(self.stream.tasks) else [],
                       mode="online" if self.cfg.online else "epochs")

    def _online_step(self):
        with self.lock:
            t, x, y, ids = self.pending[0]
            bs = self.cfg.batch_size
            xb, yb, ib = x[:bs], y[:bs], ids[:bs]
            if len(y) > bs:
                self.pending[0] = (t, x[bs:], y[bs:], ids[bs:])
            else:
                self.pending.popleft()
            self.pending_n -= len(yb)
            grow = self.stream.num_classes > self.learner.strategy.model.head.num_classes
        if grow:
            self.learner.grow_classes()
        self.state = f"training task {t} (online)"
        with self._pos_lock:
            self.pos = {"task": t, "epoch": 0, "batch": self.pos.get("batch", 0) + 1}
            self.trained_upto = max(self.trained_upto, int(ib.max()))
            self.learner.observe(t, xb, yb, ib, dict(self.pos))
        self._after_step()

    def request_profile(self) -> concurrent.futures.Future:
        """Miro now (``miro profile``): a profile round on the open task's samples so far, run by the
        trainer between steps; the Future holds the decision."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self._jobs.append((self._profile_now, fut))
            self.work.notify_all()
        return fut

    def _profile_now(self) -> dict:
        lr, t = self.learner, self.open_task
        with self.lock:
            n = len(self.stream.train_arrays(t)[1]) if t >= 0 else 0
        if lr.hooks is None:
            raise SessionError("not-ready", "no controller: start the daemon with learning.miro = true")
        if t < self.done or not n:
            raise SessionError("not-ready", "Miro profiles on the open task's samples: ingest some first")
        lr.hooks.task_begin(lr, t)
        d = lr.hooks.decisions[-1]
        return {k: d.get(k) for k in ("task", "rule", "winner", "candidates", "not_profiled", "profiling_energy_j")}

    def _after_step(self):
        if self.scfg.snapshot_every and self.learner.steps % self.scfg.snapshot_every == 0:
            self._snap()

    def _finish(self, t):
        lr = self.learner
        with self.lock:
            x, y, ids = self.stream.train_arrays(t)
        if not len(y):  # ended with no train samples (or all evicted): nothing to learn, say so
            self.log.event("error", component="trainer", task=t,
                           error=f"task {t} ended with no stored training samples; skipped")
        if self._task_begun != t:
            self._begin(t)  # epoch mode: the task's data is complete now (begin_task grows the head)
        if not self.cfg.online and len(y):
            self.state = f"training task {t} ({self.cfg.epochs} epochs)"
            pos = self.pos if self.pos["task"] == t else {"task": t, "epoch": 0, "batch": 0}
            if not lr.train_epochs(t, x, y, ids, pos, should_stop=self._stopping_step):
                self._stopped_in_task = True
                return
        self.state = f"evaluating task {t}"
        rec = lr.finish_task(t, x, y, ids)
        with self.lock:
            self.done = t + 1
            self.stream.free_train(t)
            self.pos = {"task": t + 1, "epoch": 0, "batch": 0}
            self._task_begun = -1
        self._snap()
        self.log.event("task_trained", task=t, acc=rec["acc"], avg_acc=rec["avg_acc"], energy_j=rec["energy_j"],
                       energy_provenance=rec["energy_provenance"])

    def _stopping_step(self) -> bool:
        """Asked between epoch steps: stop now (shutdown) -- the learner then checkpoints. Also keeps
        the position current and snapshots for predict."""
        lr = self.learner
        if lr.steps and self.scfg.snapshot_every and lr.steps % self.scfg.snapshot_every == 0:
            self._snap()
        return self._stop.is_set()

    def _snap(self):
        if self.learner is None or self.learner.strategy.model.head.num_classes == 0:
            return  # nothing trained yet: predict says not-ready rather than answer from an empty head
        m = copy.deepcopy(self.learner.strategy.model).eval()
        self.snapshot = (m, list(self.stream.inv), self.learner.steps, self.done)

    # ------------------------------------------------------------------ reads
    def predict(self, x, k: int = 3) -> dict:
        snap = self.snapshot
        if snap is None or self.stream is None:
            raise SessionError("not-ready", "no model yet: ingest samples and end a task first")
        model, inv, steps, done = snap
        try:
            x = check_images(np.asarray(x), self.stream.shape, "predict")
        except ValueError as e:
            raise SessionError("params", str(e)) from None
        labels, probs = self.learner.predict(x, k, model=model)
        self.counters["predictions"] += len(x)
        user = [[inv[c] if c < len(inv) else None for c in row] for row in labels.tolist()]
        return {"labels": [r[0] for r in user], "topk": user, "probs": probs.round(6).tolist(),
                "snapshot_steps": steps, "tasks_trained": done}

    def evaluate(self) -> dict:
        lr = self.learner
        if lr is None or not lr.acc:
            raise SessionError("not-ready", "no task has been trained and evaluated yet")
        from miro_runtime.engine.metrics import bwt, final_avg_acc, forgetting
        T = max(len(r) for r in lr.acc)
        acc = [row + [None] * (T - len(row)) for row in lr.acc]
        return {"acc_matrix": acc, "final_avg_acc": final_avg_acc(lr.acc), "forgetting": forgetting(lr.acc),
                "bwt": bwt(lr.acc), "tasks": len(lr.acc), "energy_j": lr.energy_total(),
                "energy_provenance": lr.provenance(),
                "per_task": [{k: r.get(k) for k in ("task", "acc", "avg_acc", "energy_j", "energy_provenance",
                                                    "train_samples", "train_s", "wall_s")} for r in lr.per_task]}

    def status(self) -> dict:
        lr, s = self.learner, self.stream
        out = {"state": self.state, "paused": self.paused, "uptime_s": round(time.time() - self.started, 3),
               "run_dir": self.cfg.run_dir, "open_task": self.open_task, "ended_tasks": list(self.ended),
               "tasks_trained": self.done, "current_task": self.pos.get("task"), "position": dict(self.pos),
               "mode": "online" if self.cfg.online else "epochs", "strategy": self.cfg.strategy,
               "classes_seen": len(s.inv) if s else 0, "class_labels": list(s.inv) if s else [],
               "counters": dict(self.counters, online_pending=self.pending_n, online_untrained=self.untrained),
               # every key is always there (None before the first sample), so clients need no special case
               "memory": None, "flash": None, "swap": None, "steps": 0, "energy": None, "miro": None,
               "last_acc": None, "last_avg_acc": None}
        if lr is None or lr.strategy is None:
            return out
        strat = lr.strategy
        mem = strat.memory
        out["memory"] = None if mem is None else {"size": len(mem), "capacity": mem.capacity}
        counts = lr.flash.class_counts("samples")
        out["flash"] = {"records": int(counts.sum()), "budget_records": self.cfg.flash_budget,
                        "test_records": int(lr.flash.class_counts(TEST_NS).sum()),
                        "bytes": int(counts.sum()) * lr.flash.spec("samples").record_bytes}
        if hasattr(strat, "engine"):
            out["swap"] = strat.engine.stats()
        out["steps"] = lr.steps
        energy = lr.energy_total()
        cur = None
        if lr._window is not None:
            try:
                cur = lr.meter.peek(lr._window).joules
            except ValueError:
                cur = None
        out["energy"] = {"tasks_j": energy, "current_task_j": cur,
                         "total_j": None if energy is None and lr.per_task else (energy or 0.0) + (cur or 0.0),
                         "provenance": lr.provenance() or _prov(lr.meter)}
        c = self.cfg  # the knobs in force, whether Miro tunes them or not (Knobs.key's format)
        knobs = f"mem={c.memory},flash={c.flash_budget},swap={c.swap_ratio},epochs={c.epochs}"
        d = (getattr(lr.hooks, "decisions", None) or [None])[-1] if lr.hooks is not None else None
        out["miro"] = {"enabled": lr.hooks is not None, "rule": c.miro_rule if lr.hooks is not None else None,
                       "knobs": lr.hooks.current.key() if hasattr(lr.hooks, "current") else knobs,
                       "last_decision": d and {k: d[k] for k in ("task", "rule", "winner", "profiling_energy_j")
                                               if k in d}}
        out["last_acc"] = lr.acc[-1] if lr.acc else None
        out["last_avg_acc"] = lr.per_task[-1]["avg_acc"] if lr.per_task else None
        return out

    def checkpoint(self) -> dict:
        """Ask for a checkpoint: written by the trainer between steps (or here when it is idle)."""
        if self.learner is None:
            raise SessionError("not-ready", "nothing to checkpoint yet")
        with self.lock, self._pos_lock:
            if self.learner._cur is None or self.cfg.online:
                self.learner.checkpoint(dict(self.pos))
                return {"written": True, "position": dict(self.pos)}
        return {"written": False, "why": "a task is training; a checkpoint follows at its next boundary"}

    def close(self):
        self.stop()
        if self.learner is not None:
            self.learner.close()


def _complete(fut, fn):
    try:
        fut.set_result(fn())
    except Exception as e:  # the caller gets it, the trainer goes on
        fut.set_exception(e)


def _prov(meter) -> Optional[str]:
    try:
        p = meter.provenance()
        return "; ".join(f"{k}: {v}" for k, v in p.items()) if isinstance(p, dict) else str(p)
    except Exception:
        return None
