"""The CL engine as an open-ended learner: stream -> store -> memory -> step -> metrics, one call at
a time, for callers that never know a stream's length (the daemon) and for ``Experiment`` (a whole
known stream, ``miro run``), which drives the same calls in order.

A task's life: ``begin_task`` (the strategy's, the controller's, an energy window) -> ``store``
batches (durable in the flash tier) and, online, ``observe`` each as it arrives -> ``train_epochs``
(epoch mode) -> ``finish_task`` (memory update, window closed, evaluation, metrics line, atomic
checkpoint). ``predict``, ``evaluate`` and ``checkpoint`` work between any two calls of the thread
that trains. Controllers (Miro) see the learner through the ``Controller`` protocol of ``hooks.py``:
``cfg``, ``stream``, ``flash``, ``strategy``, ``meter``, ``device``, ``task_data(t)``,
``event(kind, **fields)``. Positions are ``records.Position`` (a ``{"task", "epoch", "batch"}`` dict
is accepted where one is taken); each finished task is a ``records.TaskRecord``.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np
import torch

from miro_runtime.profilers import ResourceMonitor, make_meter
from miro_runtime.storage import FlashTier, SampleSpec

from miro_runtime.config import RunConfig
from miro_runtime.engine.budget import BudgetGuard
from miro_runtime.engine.checkpoint import (CHECKPOINT, CheckpointError, load_latest, manifest_mismatch,
                                            save_checkpoint, store_manifests)
from miro_runtime.engine.hooks import Controller, StepProgress
from miro_runtime.engine.latent import Composed, LatentMode, replay_ns
from miro_runtime.engine.metrics import anon_rss_mb, evaluate, peak_rss_mb, run_summary
from miro_runtime.engine.strategies import build_model, make_strategy
from miro_runtime.log import EventLog
from miro_runtime.records import Position, TaskRecord

NS = "samples"  # the raw training samples' flash namespace (``Learner.ns`` is the one replay reads)


def _warm_optimizer() -> None:
    """The first optimizer a process builds imports torch's compiler stack (~900 modules, 1.3-1.8 s on this
    2-core box): paid when a learner opens, not inside task 0, where a task deadline counts it (it stopped
    the first task before its first step)."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _progress(cur: dict, window_j, in_window_j: float) -> StepProgress:
    """The task in training after a step, as a steering controller sees it (``cur``: the learner's task state)."""
    now = time.perf_counter()
    return StepProgress(cur["samples"], window_j, in_window_j, now - cur["wall0"], now - cur["begun"])


class Learner:
    """One continual learner over a RAM + flash memory hierarchy, driven step by step.

    ``stream`` is anything with the ``Stream`` surface the strategies read: ``shape``,
    ``num_classes``, ``tasks[t].classes``, ``classes_upto(t)``, ``train[t]`` / ``test[t]`` arrays
    (``LiveStream`` grows them as data arrives)."""

    def __init__(self, cfg: RunConfig, stream, hooks: Optional[Controller] = None,
                 monitor: Optional[ResourceMonitor] = None,
                 on_event: Optional[Callable] = None, log: Optional[EventLog] = None, extra_state=None,
                 retrain_from_store: bool = False):
        cfg.validate()
        if not cfg.run_dir:
            raise ValueError("RunConfig.run_dir is required (where the store, metrics and checkpoints live)")
        self.cfg, self.stream, self.on_event = cfg, stream, on_event
        self.hooks = hooks  # a Controller (hooks.py) or None: the session builds it, the engine only calls it
        # controllers that react to resources (Miro) get snapshots between steps; tests pass a monitor
        # reading fixture sysfs trees
        wants = hooks is not None and hooks.watches_resources
        self.monitor = (monitor or ResourceMonitor()) if wants else None
        self._last_watch = -math.inf
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self._own_log = log is None  # a log handed in (the daemon's) is its owner's to close
        self.log = log or EventLog(os.path.join(cfg.run_dir, "events.jsonl"))
        self.metrics_path = os.path.join(cfg.run_dir, "metrics.jsonl")
        self.extra_state = extra_state  # callable -> JSON-able dict kept in every checkpoint (the daemon's)
        self.retrain_from_store = retrain_from_store  # checkpoints gone on purpose: start over on the stored samples
        self.flash = self.strategy = self.meter = self.guard = None
        self.ns = replay_ns(cfg)
        self.latent: Optional[LatentMode] = None  # latent replay (latent.py): codec, trained part, open task
        self.view = stream  # the stream as the strategy sees it (latent mode: latents)
        self.acc: list = []  # row t: accuracy on tasks 0..t after training task t
        self.per_task: list = []  # TaskRecord of each finished task
        self.steps = 0
        self._cur = self._carry = None
        self._window = None
        self._n_checkpoints = 0
        self._ckpt_manifests: dict = {}  # what the last checkpoint recorded: its log entries stay
        self._wall_before = 0.0
        self.restored: dict = {}

    # ------------------------------------------------------------------ the controller's view
    def task_data(self, t: int):
        """(x uint8 (N, C, H, W), y int64 (N,)): the training samples task t delivered."""
        return self.stream.train[t]

    def event(self, kind: str, **fields) -> dict:
        return self.log.event(kind, **fields)

    def emit(self, kind: str, **payload) -> None:
        """Tell the caller's ``on_event`` (progress bars, the daemon's status)."""
        if self.on_event:
            self.on_event(kind, payload)

    # ------------------------------------------------------------------ open / close
    def open(self, resume: bool = False) -> Position:
        """Build model, flash tier, strategy and meter; on ``resume`` load the last checkpoint.
        Returns the position to continue from."""
        cfg, stream = self.cfg, self.stream
        self._t_start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, self.latent, self.view, self.flash = _open_parts(cfg, stream, self.device)
        self.strategy = make_strategy(cfg.strategy, model, cfg, self.flash, self.view, self.device)
        _warm_optimizer()
        self.meter = make_meter(cfg.energy_source)
        self.guard = BudgetGuard(cfg, self.log)
        self.peak_anon = anon_rss_mb()
        # intra-op threads are process-wide: set while open, given back at close (in-process callers).
        # One thread by default: the small models trained here gain little wall time from a second
        # one and pay for it in joules (its spin-waits are CPU time; README has the measurement)
        self._threads_before = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return self._restore() if resume else Position()

    def _inputs(self, t: int, x, ids) -> torch.Tensor:
        """The strategy's inputs for task t's samples: the images, or (latent mode) their latents."""
        return self.latent.inputs(t, x, ids, self.flash) if self.latent else torch.from_numpy(np.ascontiguousarray(x))

    def close(self):
        if self._window is not None:  # a task that raised: its energy window is cancelled, not leaked
            self.meter.cancel_window(self._window)
            self._window = None
        if self.strategy is not None:
            self.strategy.close()
        if self.flash is not None:
            self.flash.close()
        if self.meter is not None:
            self.meter.close()
            torch.set_num_threads(self._threads_before)
        if self._own_log:
            self.log.close()

    def grow_classes(self) -> bool:
        """Online: classes arrived mid-task; grow the head (a new optimizer). The flash spec grew when
        the samples were stored (the caller declares it in the same step as the new label)."""
        strat = self.strategy
        if strat.model.head.grow(len(self.stream.classes_upto(max(strat.task, 0)))):
            strat.model.to(strat.device)
            strat.renew_optimizer()
            return True
        return False

    # ------------------------------------------------------------------ a task, step by step
    def begin_task(self, t: int, pos: Position | dict):
        pos = Position.from_dict(pos)
        fresh = pos.epoch == 0 and pos.batch == 0
        wall0 = time.perf_counter()
        if fresh:
            self.strategy.begin_task(t)
        elif self.strategy.model.head.grow(len(self.stream.classes_upto(t))):
            # resumed mid-task: classes that arrived after the checkpoint (a restart, a mode change) need the head
            self.strategy.model.to(self.strategy.device)
            self.strategy.renew_optimizer()
        self.guard.sync(t)  # a budget changed between tasks is the one this task's decision plans for
        if self.hooks is not None and fresh:
            if len(self.task_data(t)[1]):
                self.hooks.task_begin(self, t)  # Miro profiles here: its energy is metered on its own
            else:  # online in the daemon: the task's data has not arrived yet
                self.event("controller_skipped", task=t, why="no samples of the task yet to profile on (online)")
        if self._window is not None:  # a window left open (an aborted attempt) is cancelled, never carried on
            self.meter.cancel_window(self._window)
        self._window = f"task{t}"
        self.meter.begin_window(self._window)
        self.guard.window_opened()
        # wall0: the window's start (wall_s matches energy_j: profiling is neither); begun: the task's, with
        # its profiling -- what a deadline counts
        self._cur = {"task": t, "wall0": time.perf_counter(), "begun": wall0, "train_s": 0.0, "samples": 0}

    def store(self, t: int, x, y, meta: Optional[dict] = None, ns: str = NS):
        """Write samples durably to the flash tier (returns once fsynced); -> PutResult (latent mode: the
        training samples' latents', stored with the raw samples in one transaction: LatentMode.store)."""
        if self.latent is not None and ns == NS:
            return self.latent.store(self.flash, t, x, y, meta, self.cfg.drop_raw)
        return self.flash.put_batch(ns, list(x), y, np.full(len(y), t), meta=meta)

    def observe(self, t: int, x, y, ids, pos: Position | dict | None = None):
        """Online: one step on an arriving batch (plus replay), then offer it to the memory."""
        cur = self._cur
        if not self.guard.allows(t, self.task_joules()):  # the budget is spent: stored, not trained
            cur["guard_skipped"] = cur.get("guard_skipped", 0) + len(y)
            return
        xt, yt = self._inputs(t, x, ids), torch.from_numpy(np.asarray(y))
        t0 = time.perf_counter()
        self.strategy.observe(xt, yt)
        self.strategy.remember(xt, y, ids, t)
        cur["train_s"] += time.perf_counter() - t0
        cur["samples"] += len(y)
        self._step(Position.start_of(t) if pos is None else Position.from_dict(pos))

    def train_epochs(self, t: int, x_task, y_task, ids_task, pos: Position | dict, should_stop=None) -> bool:
        """Epoch mode: the task's epochs from ``pos`` on. ``should_stop()`` is asked between steps
        (the daemon's shutdown): then a checkpoint at the current position is written and False
        returned; True once every epoch ran."""
        cfg, strat, cur = self.cfg, self.strategy, self._cur
        pos = Position.from_dict(pos)
        X, Y, _ = strat.training_data(t, self._inputs(t, x_task, ids_task), torch.from_numpy(y_task), ids_task)
        n = len(Y)
        nb = math.ceil(n / cfg.batch_size)
        e = pos.epoch
        while e < cfg.epochs:  # re-read each epoch: Miro may change the epochs mid-task
            perm = torch.from_numpy(np.random.default_rng([cfg.seed, t, e]).permutation(n))
            for b in range(pos.batch if e == pos.epoch else 0, nb):
                if should_stop is not None and should_stop():
                    self.checkpoint(Position(t, e, b))
                    return False
                if not self.guard.allows(t, self.task_joules(), time.perf_counter() - cur["begun"], cur["samples"]):
                    return True
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                t0 = time.perf_counter()
                strat.observe(X[idx], Y[idx])
                cur["train_s"] += time.perf_counter() - t0
                cur["samples"] += len(idx)
                self._step(Position(t, e, b + 1))
                if self.hooks is not None and self.hooks.steers_steps:  # Miro re-plans the task's length
                    self.hooks.between_steps(self, t, _progress(cur, self.task_energy_so_far(), self.task_joules()))
            e += 1
        return True

    def finish_task(self, t: int, x_task, y_task, ids_task) -> TaskRecord:
        """Memory update, energy window closed, evaluation, metrics line, checkpoint -> the record."""
        cfg, strat, cur = self.cfg, self.strategy, self._cur
        strat.end_task(t, self._inputs(t, x_task, ids_task), y_task, ids_task, cfg.online)
        if self.latent is not None:
            self.latent.task.clear()
        energy = self.meter.end_window(f"task{t}")  # ingest + training + memory update, not evaluation
        self._window = None
        here = {"energy_j": energy.joules, "components": energy.components,
                "wall_s": time.perf_counter() - cur["wall0"], "train_s": cur["train_s"], "samples": cur["samples"]}
        carry = self._carry if self._carry and self._carry["task"] == t else None
        self._carry = self._cur = None
        done = _add_partial(here, carry) if carry else here
        self.meter.begin_window(f"eval{t}")  # evaluation is work the budget pays for too
        row = evaluate(strat.model, self.view, t, self.device)
        ev = self.meter.end_window(f"eval{t}")
        eval_j = ev.joules
        self.guard.book_eval_time(t, ev.seconds)
        self.acc.append(row)
        known = [a for a in row if a is not None]
        rec = TaskRecord(task=t, acc=row, avg_acc=float(np.mean(known)) if known else None, wall_s=done["wall_s"],
                         train_s=done["train_s"], train_samples=done["samples"],
                         train_samples_per_s=done["samples"] / done["train_s"] if done["train_s"] else None,
                         energy_j=done["energy_j"], energy_components_j=done["components"],
                         energy_provenance=energy.summary(), energy_warnings=energy.warnings,
                         peak_rss_mb=peak_rss_mb(), peak_anon_rss_mb=max(self.peak_anon, anon_rss_mb()),
                         flash_records=int(self.flash.class_counts(self.ns).sum()),
                         torch_threads=torch.get_num_threads(), strategy=strat.stats())
        if carry:  # resumed in this task: its figures add what was metered before the restart
            rec.before_restart = {k: carry[k] for k in ("energy_j", "wall_s", "train_s", "samples", "restarts")}
            rec.before_restart["note"] = ("metered up to the last checkpoint before the restart; work between that "
                                          "checkpoint and the kill is not known and was redone (metered again)")
        if self.hooks is not None:
            self.hooks.task_end(self, t, rec)
        train_j = None if rec.energy_j is None else rec.energy_j - self.guard.window_closed()
        for kind, j in (("train", train_j), ("profile", rec.reaction_profiling_j), ("eval", eval_j)):
            self.guard.book(kind, j, t)
        rec.budget = self.guard.record(t)
        self.per_task.append(rec)
        line = rec.to_dict()
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        self.log.event("task_end", **line)
        self.emit("task_end", **line)
        self.checkpoint(Position.start_of(t + 1))
        return rec

    def abort_task(self):
        """A task that raised: cancel its energy window (nothing half-metered is reported)."""
        if self._window is not None:
            self.meter.cancel_window(self._window)
            self._window = None
            self.guard.window_closed()
        self._cur = None

    def _step(self, pos: Position):
        self.steps += 1
        if self.steps % 25 == 0:  # a /proc read: cheap enough every few steps for a true peak
            self.peak_anon = max(self.peak_anon, anon_rss_mb())
        self.emit("step", **pos.to_dict())
        self._watch(pos.task)
        if self.cfg.checkpoint_every and self.steps % self.cfg.checkpoint_every == 0:
            self.checkpoint(pos)

    def _watch(self, t: int):
        """Between steps, every ``monitor_every_s``: hand a resource snapshot to the controller (Miro
        re-decides when RAM, battery or thermals newly press; what it adopts applies from the next
        step on, the epochs of this task included)."""
        if self.monitor is None:
            return
        now = time.perf_counter()
        if now - self._last_watch < self.cfg.monitor_every_s:
            return
        self._last_watch = now
        self.hooks.on_resources(self, t, self.monitor.snapshot())

    # ------------------------------------------------------------------ reading the model
    @torch.no_grad()
    def predict(self, x, k: int = 3, model=None):
        """Top-k over the classes seen: (labels (N, k) int64, probs (N, k) float32), from ``model``
        (a snapshot) or the live model."""
        m = model or self.strategy.model
        if self.latent is not None:  # the trained part takes latents: raw images pass the frozen part first
            m = Composed(self.latent.codec, m)
        m.eval()
        out = m(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float()  # (N, K)
        p = torch.softmax(out, dim=1)
        k = min(k, p.shape[1])
        probs, labels = p.topk(k, dim=1)  # (N, k) each
        return labels.cpu().numpy(), probs.cpu().numpy()

    def evaluate(self, upto: Optional[int] = None) -> list:
        upto = len(self.stream.tasks) - 1 if upto is None else upto
        return evaluate(self.strategy.model, self.view, upto, self.device)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, pos: Position | dict):
        pos = Position.from_dict(pos)
        st = {"version": 1, "config": self.cfg.to_json(), "position": pos.to_dict(),
              "strategy": self.strategy.state_dict(), "torch_rng": torch.get_rng_state(),
              "metrics": json.dumps({"acc": self.acc, "per_task": [r.to_dict() for r in self.per_task],
                                     "steps": self.steps,
                                     "wall_s": self.wall_s(), "budget": self.guard.budget.state(),
                                     "partial": self._partial(pos)})}
        if self.hooks is not None:
            st["hooks"] = json.dumps(self.hooks.state())
        if self.extra_state is not None:
            st["extra"] = json.dumps(self.extra_state())
        # what the store held at this checkpoint: a resume on a store with fewer samples is refused
        manifests = store_manifests(self.flash)
        st["store"] = json.dumps({"seen": self.flash.seen(self.ns), "checkpoints": self._n_checkpoints + 1,
                                  "manifests": manifests})
        save_checkpoint(os.path.join(self.cfg.run_dir, CHECKPOINT), st)
        self._n_checkpoints += 1
        # the store's manifest log keeps what the previous checkpoint (still on disk) needs, no more
        self.flash.prune_manifest_log({ns: m["seen"] for ns, m in self._ckpt_manifests.items()})
        self._ckpt_manifests = manifests
        # the store remembers that checkpoints exist: losing every checkpoint file is then an error,
        # not a silent retrain from scratch on samples already stored
        self.flash.set_meta("checkpoints", str(self._n_checkpoints))
        self.log.event("checkpoint", **pos.to_dict(), steps=self.steps)
        self.emit("checkpoint", **pos.to_dict())

    def _partial(self, pos: Position) -> Optional[dict]:
        """What the task in progress has spent so far (a checkpoint in its middle), so a resumed
        run reports the task's whole cost, not only the part after the restart."""
        cur = self._cur
        if cur is None or pos.task != cur["task"] or (pos.epoch == 0 and pos.batch == 0):
            return None
        m = self.meter.peek(f"task{cur['task']}")
        part = {"task": cur["task"], "energy_j": m.joules, "components": m.components,
                "wall_s": time.perf_counter() - cur["wall0"], "train_s": cur["train_s"], "samples": cur["samples"],
                "restarts": 0}
        return _add_partial(part, self._carry) if self._carry and self._carry["task"] == cur["task"] else part

    def _restore(self) -> Position:
        rd = self.cfg.run_dir
        mismatched = []

        def accept(st, path):
            why = manifest_mismatch(self.flash, st, path)
            mismatched.extend([why] if why else [])
            return why
        st, path, problems = load_latest(rd, accept)
        if st is None and mismatched:
            raise CheckpointError("no usable checkpoint matches the store: " + "; ".join(problems))
        for p in problems:
            self.log.event("checkpoint_damaged", level="warning", problem=p,
                           using=path or "none")
        written = int(self.flash.get_meta("checkpoints") or 0)
        if st is None:
            _start_without_checkpoint(rd, problems, written, self.retrain_from_store, self.log)
            return Position()
        store = json.loads(st["store"]) if "store" in st else {}
        if store.get("seen") is not None and self.flash.seen(self.ns) < store["seen"]:
            raise CheckpointError(f"{path} was taken after {store['seen']} samples were stored, but the store in "
                                  f"{rd}/state has seen only {self.flash.seen(self.ns)}: data.mdb was replaced or "
                                  f"lost. Restore it (or `miro store salvage` it) before resuming")
        self._n_checkpoints = max(written, store.get("checkpoints", 0))
        self._ckpt_manifests = store.get("manifests", {})
        self.strategy.load_state_dict(st["strategy"])
        torch.set_rng_state(st["torch_rng"])
        m = json.loads(st["metrics"])
        self.acc, self.steps = m["acc"], m["steps"]
        self.per_task = [TaskRecord.from_dict(r) for r in m["per_task"]]
        self._wall_before = m.get("wall_s", 0.0)
        self.guard.budget.load_state(m.get("budget", {}))
        part = m.get("partial")
        if part and part["task"] == st["position"]["task"]:
            self._carry = dict(part, restarts=part["restarts"] + 1)
        if self.hooks is not None and "hooks" in st:
            self.hooks.load_state(self, json.loads(st["hooks"]))
        self.restored = json.loads(st["extra"]) if "extra" in st else {}
        self.log.event("resume", found_checkpoint=True, checkpoint=os.path.basename(path), **st["position"])
        return Position.from_dict(st["position"])

    # ------------------------------------------------------------------ summaries
    @property
    def in_task(self) -> bool:
        """A task has begun and is not finished (or aborted) yet."""
        return self._cur is not None

    def energy_paused(self, paused: bool) -> None:
        """Stop (or start again) counting the open task's energy while the task waits for work (an
        online task idle between batches, a pause for resources): a task's joules are its work's."""
        if self._window is not None:
            (self.meter.pause_window if paused else self.meter.resume_window)(self._window)

    def task_joules(self) -> float:
        """Joules the task in training has spent in its window so far, less what requests served meanwhile
        booked as their own (a resumed task: with the part metered before the restart)."""
        carry = self._carry["energy_j"] if self._carry and self._cur and self._carry["task"] == self._cur["task"] else 0
        return (self.task_energy_so_far() or 0.0) + (carry or 0.0) - self.guard.overlap_j

    def task_energy_so_far(self) -> Optional[float]:
        """Joules metered so far in the task in progress; None between tasks or when unresolved."""
        if self._window is None:
            return None
        try:
            return self.meter.peek(self._window).joules
        except ValueError:  # the meter holds no such window
            return None

    @property
    def wall_before_s(self) -> float:
        """Wall seconds the run spent before this process resumed it (0 for a fresh run)."""
        return self._wall_before

    def wall_s(self) -> float:
        return self._wall_before + time.perf_counter() - self._t_start

    def summary(self, wall_s: Optional[float] = None) -> dict:
        return run_summary(self, self.wall_s() if wall_s is None else wall_s)

    def energy_total(self):
        vals = [r.energy_j for r in self.per_task] + [r.profiling_energy_j or 0.0 for r in self.per_task]
        return None if not vals or any(v is None for v in vals) else float(sum(vals))

    def provenance(self):
        return "; ".join(sorted({r.energy_provenance for r in self.per_task})) or None


def _start_without_checkpoint(rd: str, problems: list, written: int, retrain: bool, log: EventLog) -> None:
    """A resume that found no checkpoint file: fine on a fresh store; an error when checkpoints were
    damaged or written and lost (unless asked to retrain on the stored samples)."""
    if problems:
        raise CheckpointError(f"no usable checkpoint in {rd}: " + "; ".join(problems) + ". The samples in the flash "
                              "tier are intact: move the damaged files aside to start over on them "
                              "(mirod --retrain-from-store), or start a new run")
    if written and retrain:
        log.event("retrain_from_store", level="warning", checkpoints_written=written,
                  why="no checkpoint file; asked to start over on the stored samples")
    elif written:
        raise CheckpointError(f"{os.path.join(rd, CHECKPOINT)} and checkpoint.prev.pt are missing, but the store in "
                              f"{rd}/state says {written} checkpoints were written: the run cannot continue where it "
                              "stopped. Restore the files, or start over on the stored samples "
                              "(mirod --retrain-from-store), or start a new run")
    log.event("resume", found_checkpoint=False)


def _open_parts(cfg: RunConfig, stream, device) -> tuple:
    """(model the strategy trains, LatentMode or None, the stream as the strategy sees it, the flash tier
    with the training namespaces declared: the raw samples unless ``drop_raw``, the latents in latent mode)."""
    model = build_model(cfg, stream)
    latent = LatentMode(model, stream, device) if cfg.latent_replay else None  # the frozen part only encodes
    flash = FlashTier(os.path.join(cfg.run_dir, "state"), sync_mode=cfg.sync_mode, seed=cfg.seed)
    if not cfg.drop_raw:
        flash.declare_samples(NS, SampleSpec(shape=stream.shape, dtype="uint8", num_classes=stream.num_classes,
                                             policy=cfg.flash_policy, budget_records=cfg.flash_budget))
    if latent is None:
        return model.to(device), None, stream, flash
    latent.declare(flash, cfg, stream.num_classes)
    return latent.model.to(device), latent, latent.view, flash


def _add_partial(a: dict, b: dict) -> dict:
    """Sum two parts of one task's cost (energy None if either part is unresolved)."""
    def add(x, y):
        return None if x is None or y is None else x + y
    out = dict(a)
    out["energy_j"] = add(a["energy_j"], b["energy_j"])
    out["components"] = {k: add(v, b["components"].get(k)) for k, v in a["components"].items()}
    for k in ("wall_s", "train_s", "samples"):
        out[k] = a[k] + b[k]
    out["restarts"] = max(a.get("restarts", 0), b.get("restarts", 0))
    return out
