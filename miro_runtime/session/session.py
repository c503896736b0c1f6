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

``Session`` is the front (open or resume, ingest, end a task, predict, evaluate, status); the task
states are the ``TaskLedger``'s (ledger.py), the training thread the ``Trainer``'s (trainer.py),
the growing stream and its label map the ``LiveStream``'s (stream.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
import time
from typing import Optional

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.engine.streams import check_images
from miro_runtime.log import EventLog
from miro_runtime.records import Position, as_dict
from miro_runtime.session.config import SessionConfig
from miro_runtime.session.errors import SessionError
from miro_runtime.session.ledger import ENDED_KEY, FAILED_KEY, SPLITS, TRAIN, TaskLedger
from miro_runtime.session.stream import LABELS_KEY, TASKS_KEY, TEST_NS, TRAIN_TASKS_KEY, LiveStream
from miro_runtime.session.trainer import Trainer

__all__ = ["Session", "SessionError", "SessionConfig", "LiveStream", "TEST_NS"]

BATCH_PREFIX = "batch/"  # flash meta: batch/<client's batch id> = its acknowledgement (JSON), committed with it
BATCH_ID_MAX_BYTES = 128
# what shapes a state dir's model, memory and store
FIXED = ("strategy", "replay", "model", "em_policy", "flash_policy", "latent_replay", "freeze_blocks", "input_size",
         "drop_raw")
PER_TASK_KEYS = ("task", "acc", "avg_acc", "energy_j", "energy_provenance", "train_samples", "train_s", "wall_s")
LAST_DECISION_KEYS = ("task", "rule", "winner", "profiling_energy_j")


class Session:
    def __init__(self, cfg: RunConfig, scfg: Optional[SessionConfig] = None, log_: Optional[EventLog] = None,
                 monitor=None, retrain_from_store: bool = False):
        self.cfg, self.scfg = cfg, scfg or SessionConfig()
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.log = log_ or EventLog(os.path.join(cfg.run_dir, "events.jsonl"))
        self.retrain_from_store = retrain_from_store
        self.lock = threading.RLock()  # the live stream's structure and the task ledger
        self.work = threading.Condition(self.lock)  # wakes the trainer when work arrives
        self.inflight = threading.BoundedSemaphore(self.scfg.max_inflight)
        self.ledger = TaskLedger()
        self.trainer = Trainer(cfg, self.scfg, self.ledger, self.work, self.log, monitor)
        self.started = time.time()
        self.counters = {"ingested_train": 0, "ingested_test": 0, "ingest_batches": 0, "predictions": 0}

    # what the daemon reads: the trainer's and the ledger's state
    @property
    def learner(self):
        return self.trainer.learner

    @property
    def stream(self) -> Optional[LiveStream]:
        return self.trainer.stream

    @property
    def state(self) -> str:
        return self.trainer.state

    @property
    def paused(self) -> Optional[str]:
        return self.trainer.pause.paused

    @property
    def open_task(self) -> int:
        return self.ledger.open_task

    @property
    def ended(self) -> list:
        return self.ledger.ended

    @property
    def done(self) -> int:
        """Tasks trained and evaluated."""
        return self.ledger.trained

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
            meta = {k: f.get_meta(k) for k in (LABELS_KEY, TASKS_KEY, TRAIN_TASKS_KEY, ENDED_KEY, FAILED_KEY)}
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
        diff = [f"learning.{k} = {stored[k]!r} there, {getattr(self.cfg, k)!r} here" for k in FIXED
                if k in stored and stored[k] != getattr(self.cfg, k)]
        if diff:
            raise SessionError("state", f"state directory {self.cfg.run_dir} was created with another learner: "
                                        f"{'; '.join(diff)}. Set them back, or start on a fresh state directory")

    def _start(self, shape, resume: bool, meta: Optional[dict] = None):
        from miro_runtime.control import make_controller
        from miro_runtime.engine.learner import NS, Learner
        from miro_runtime.storage import SampleSpec
        if resume:
            self._check_same_run()
        meta = meta or {}
        s = LiveStream.from_meta(shape, self.scfg.max_classes, meta)
        lr = Learner(self.cfg, s, hooks=make_controller(self.cfg), log=self.log,
                     extra_state=self.trainer.extra_state, retrain_from_store=self.retrain_from_store,
                     on_event=self.trainer.on_learner_event)
        pos = self._open_learner(lr, resume)
        if not resume:
            with open(os.path.join(self.cfg.run_dir, "config.json"), "w") as fh:
                fh.write(self.cfg.to_json())
        lr.flash.declare_samples(TEST_NS, SampleSpec(shape=s.shape, dtype="uint8", num_classes=s.num_classes))
        self.ledger.attach(lr.flash)
        self.trainer.attach(lr, s, pos)
        if resume:
            self._recover(lr, NS, meta.get(ENDED_KEY), meta.get(FAILED_KEY))
        self.trainer.snap()

    def _open_learner(self, lr, resume: bool) -> Position:
        """Open ``lr`` (on ``resume`` from its checkpoint) -> the position to continue from. A damaged
        checkpoint or store is a SessionError naming the next step, never a traceback."""
        try:
            return Position.from_dict(lr.open(resume=resume))
        except SessionError:
            raise
        except Exception as e:
            lr.close()
            from miro_runtime.engine.checkpoint import CheckpointError
            from miro_runtime.storage import StoreError
            if isinstance(e, (CheckpointError, StoreError)):  # our own messages carry their next step
                raise SessionError("state", str(e)) from e
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "Weights only load failed" in msg or "weights_only" in msg:
                # torch's own text suggests weights_only=False: never, for a file read from disk
                msg = "it is damaged or not a miro checkpoint (torch.load(weights_only=True) refused it)"
            raise SessionError("state", f"cannot resume from {os.path.join(self.cfg.run_dir, 'checkpoint.pt')}: "
                                        f"{msg[:300]}. The samples in the flash tier are intact: move the checkpoint "
                                        f"aside and start mirod --retrain-from-store to train afresh on them") from e

    def _recover(self, lr, ns: str, ended_json: Optional[str], failed_json: Optional[str] = None):
        """Rebuild the live stream and the ledger from the store and position the trainer after a restart."""
        s, backlog = self.stream, self.trainer.backlog
        self.trainer.restore(lr.restored or {})
        s.restore_tests(lr.flash)
        failed = json.loads(failed_json or "[]")  # failed tasks were skipped: the next task is after them too
        trained = max([r.task + 1 for r in lr.per_task] + [t + 1 for t in failed], default=0)
        restored = s.restore_train(lr.flash, ns, first=trained)
        self.ledger.restore(ended_json, trained, s.train_tasks, failed_json)
        self._safe_point(lr.restored or {})
        if self.cfg.online:  # batches stored but not trained before the restart: train them now
            for t in restored:
                x, y, ids = s.train_arrays(t)
                keep = ids > backlog.trained_upto
                if keep.any():
                    backlog.push(t, x[keep], y[keep], ids[keep])
        self.log.event("session_resume", tasks_done=trained, open_task=self.open_task, ended=self.ended,
                       classes=len(s.inv), pending_online=backlog.n, position=self.trainer.pos.to_dict())
        with self.lock:
            self.work.notify_all()

    def _safe_point(self, extra: dict):
        """A setting the checkpoint's position depends on (the mode, the batch size) changed across the
        restart while a task was mid-way: that task trains again from its start under the new setting,
        on all its stored samples -- its position would mean something else now. Logged with the reason."""
        pos = self.trainer.pos
        changed = self.trainer.position_changes(extra)
        if not changed or (pos.epoch == 0 and pos.batch == 0) or pos.task < self.ledger.trained:
            return
        self.trainer.pos = Position.start_of(pos.task)
        self.log.event("config_applied", level="warning", task=pos.task, changed=changed, was=pos.to_dict(),
                       why=f"task {pos.task} was mid-way under the old settings: it trains again from its start "
                           f"under the new ones, on every sample it has stored")

    # ------------------------------------------------------------------ ingest
    def already_ingested(self, batch_id: str) -> Optional[dict]:
        """The acknowledgement of the batch committed under ``batch_id``, or None (never committed).
        The caller holds the lock when the answer must stay true until its own store."""
        ack = self.learner.flash.get_meta(BATCH_PREFIX + batch_id) if self.learner is not None else None
        return None if ack is None else {**json.loads(ack), "duplicate": True, "batch_id": batch_id}

    def ingest(self, task: int, split: str, x, labels, batch_id: Optional[str] = None) -> dict:
        """Validate, store durably, hand to the trainer. Returns once the samples are fsynced.
        ``batch_id`` (a client's string, 1 to 128 bytes) makes it exactly-once: it is committed with
        the batch, and a batch id already committed stores nothing and answers the original
        acknowledgement with ``duplicate: true``. Without one, a resend after a lost answer stores
        the samples again (at-least-once)."""
        if batch_id is not None:
            try:
                size = len(batch_id.encode()) if isinstance(batch_id, str) else -1
            except UnicodeEncodeError:  # a lone surrogate: JSON can carry one, LMDB keys cannot
                size = -1
            if not 0 < size <= BATCH_ID_MAX_BYTES:
                raise SessionError("params", f"batch_id must be a string of 1 to {BATCH_ID_MAX_BYTES} bytes "
                                             f"(UTF-8), got {str(batch_id)[:40]!r}" +
                                   (f" ({size} bytes)" if size > 0 else ""))
        if split not in SPLITS:
            raise SessionError("params", f"split must be 'train' or 'test', got {split!r}")
        if isinstance(task, bool) or not isinstance(task, int) or task < 0:
            raise SessionError("params", f"task must be an integer >= 0, got {task!r}")
        x = np.asarray(x)
        if x.ndim != 4 or 0 in x.shape:
            raise SessionError("params", f"samples must be a non-empty (n, c, h, w) array, got shape {list(x.shape)}")
        labels = labels.reshape(-1).tolist() if isinstance(labels, np.ndarray) else list(labels)
        bad = next((v for v in labels if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
                    or v < 0), None)  # a float is never truncated into a class: refused by name
        if bad is not None:
            raise SessionError("params", f"labels must be integers >= 0, got {bad!r}")
        labels = [int(v) for v in labels]
        if len(labels) != len(x):
            raise SessionError("params", f"{len(x)} samples but {len(labels)} labels")
        if not self.inflight.acquire(timeout=self.scfg.ingest_timeout_s):
            raise SessionError("busy", f"the flash writer is behind ({self.scfg.max_inflight} ingests in flight for "
                                       f"{self.scfg.ingest_timeout_s:g} s); nothing was stored, send again")
        try:
            return self._ingest(task, split, x, labels, batch_id)
        finally:
            self.inflight.release()

    def _ingest(self, task: int, split: str, x, labels: list, batch_id: Optional[str] = None) -> dict:
        from miro_runtime.engine.latent import replay_ns
        from miro_runtime.engine.learner import NS
        with self.lock:  # every store runs under it: the check below stays true until this batch commits
            dup = self.already_ingested(batch_id) if batch_id is not None else None
            if dup is not None:  # committed before (its answer lost to a kill, say): store nothing
                self.log.event("ingest_duplicate", task=dup.get("task"), batch_id=batch_id, acked=dup["acked"])
                return dup
            if self.stream is None:
                if self.trainer.stopping:
                    raise SessionError("stopping", "the daemon is stopping")
                self._start(x.shape[1:], resume=False)  # the first ingest fixes shape and model
                self.log.event("model_chosen", shape=list(x.shape[1:]), model=self.cfg.model,
                               strategy=self.cfg.strategy)
            s, train = self.stream, split == TRAIN
            try:
                x = check_images(x, s.shape, f"ingest into task {task} ({split})")
            except ValueError as e:
                raise SessionError("params", str(e)) from None
            if train:
                implicit = self.ledger.admit_train(task)
                if implicit is not None:
                    self._ended(implicit, implicit=True)
            else:
                self.ledger.admit_test(task)
            y, new = s.map_labels(task, labels)
            opens = train and task >= s.train_tasks  # a task's first train samples, new classes or not
            if opens:
                s.train_tasks = task + 1
            meta = s.label_meta() if new or opens else {}  # in the same transaction as the batch that needs it
            if new:
                f = self.learner.flash
                for ns in dict.fromkeys((NS, replay_ns(self.cfg), TEST_NS)):  # latent mode: the latents' too
                    f.declare_samples(ns, dataclasses.replace(f.spec(ns), num_classes=s.num_classes))
            if batch_id is not None:  # the answer, committed with the batch; put_batch fills in the marks
                ack = {"acked": len(labels), "task": task, "split": split, "new_classes": bool(new)}
                marks = ", ".join(f'"{k}": {{{k}}}' for k in ("first_id", "stored", "evicted"))
                meta[BATCH_PREFIX + batch_id] = json.dumps(ack)[:-1] + ", " + marks + "}"
            if train:
                self.ledger.opened(task)
            s.ensure_task(task)
            res = self.learner.store(task, x, y, meta=meta, ns=NS if train else TEST_NS)
            if train:
                s.add_train(task, res.ids, x, y)
                self.counters["ingested_train"] += len(y)
                if self.cfg.online:
                    self.trainer.backlog.push(task, x, y, res.ids)
            else:
                s.add_test(task, x, y)
                self.counters["ingested_test"] += len(y)
            self.counters["ingest_batches"] += 1
            self.work.notify_all()
        return {"acked": int(len(y)), "task": task, "split": split, "first_id": int(res.ids[0]),
                "stored": int(res.stored.sum()), "evicted": int(res.evicted), "new_classes": bool(new)}

    # ------------------------------------------------------------------ task ends
    def end_task(self, task: int) -> dict:
        """Commit the end of ``task`` (the open one); training of it is the trainer's."""
        with self.lock:
            if not self.ledger.end(task):
                return {"task": task, "ended": True, "already": True}
            self._ended(task, implicit=False)
            return {"task": task, "ended": True, "samples": self.stream.pending_train(task)}

    def _ended(self, task: int, implicit: bool):
        """The ledger committed ``task``'s end: log it and wake the trainer (the caller holds the lock)."""
        self.log.event("task_end_requested", task=task, implicit=implicit)
        self.work.notify_all()

    # ------------------------------------------------------------------ the trainer
    def run_trainer(self):
        """The training loop (one thread). Returns after ``stop()`` once the current step is done
        and a checkpoint is written."""
        self.trainer.run()

    def stop(self):
        self.trainer.stop()

    def request_profile(self) -> concurrent.futures.Future:
        """Miro now (``miro profile``): a profile round on the open task's samples so far, run by the
        trainer between steps; the Future holds the decision."""
        return self.trainer.request_profile()

    def fleet_round(self, kind: str, arrays: Optional[dict], labels: Optional[list], steps: int,
                    server_round: int) -> concurrent.futures.Future:
        """A federated round's request (federated.py), run by the trainer between steps: ``train`` loads the
        fleet's model when sent, trains ``steps`` local steps and answers the model with its label map and class
        counts; ``evaluate`` loads it and answers the accuracy on this board's test samples."""
        from miro_runtime.session import federated
        if self.learner is None:
            raise SessionError("not-ready", f"fleet {kind}: no task has trained on this board yet: ingest samples "
                                            f"and end a task first")
        return self.trainer.request(lambda: federated.round_job(self, kind, arrays, labels, steps, server_round))

    def checkpoint(self) -> dict:
        """Ask for a checkpoint: written by the trainer between steps (or here when it is idle)."""
        if self.learner is None:
            raise SessionError("not-ready", "nothing to checkpoint yet")
        return self.trainer.checkpoint()

    # ------------------------------------------------------------------ reads
    def predict(self, x, k: int = 3) -> dict:
        snap = self.trainer.snapshot
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
                "per_task": [{k: as_dict(r).get(k) for k in PER_TASK_KEYS} for r in lr.per_task]}

    def status(self) -> dict:
        lr, s, pos, backlog = self.learner, self.stream, self.trainer.pos, self.trainer.backlog
        out = {"state": self.state, "paused": self.paused, "uptime_s": round(time.time() - self.started, 3),
               "run_dir": self.cfg.run_dir, "open_task": self.open_task, "ended_tasks": list(self.ended),
               "tasks_trained": self.done, "current_task": pos.task, "position": pos.to_dict(),
               "mode": "online" if self.cfg.online else "epochs", "strategy": self.cfg.strategy,
               "classes_seen": len(s.inv) if s else 0, "class_labels": list(s.inv) if s else [],
               "counters": dict(self.counters, online_pending=backlog.n, online_untrained=backlog.untrained),
               # every key is always there (None before the first sample), so clients need no special case
               "memory": None, "flash": None, "swap": None, "steps": 0, "energy": None, "miro": None,
               "last_acc": None, "last_avg_acc": None,
               # health: "ok", "error" (a task failed, or the last training job raised and is being retried),
               # "wedged" (work pending and no training progress for wedged_after_s)
               "health": self.trainer.health(), "failed_tasks": list(self.ledger.failed),
               "last_error": self.trainer.last_error, "trainer_errors": self.trainer.errors,
               # the next task to train, how far: {task, state, done, total, unit ("steps" in epoch mode,
               # "samples" online), fraction, epoch (the one in progress, from 1), epochs}, or None
               "progress": self.trainer.progress(),
               # samples the store holds (``counters`` count since this process started)
               "stored": {"train": 0, "test": 0}}
        out["budget"] = _budget(lr, self.cfg, out["progress"], self.open_task)
        if lr is None or lr.strategy is None:
            return out
        strat = lr.strategy
        mem = strat.memory
        out["memory"] = None if mem is None else {"size": len(mem), "capacity": mem.capacity}
        counts = lr.flash.class_counts("samples")
        out["stored"] = {"train": int(counts.sum()), "test": int(lr.flash.class_counts(TEST_NS).sum())}
        out["flash"] = {"records": out["stored"]["train"], "budget_records": self.cfg.flash_budget,
                        "test_records": out["stored"]["test"],
                        "bytes": int(counts.sum()) * lr.flash.spec("samples").record_bytes}
        if lr.latent is not None:  # latent replay: the frozen part's outputs, stored beside the raw samples
            from miro_runtime.engine.latent import NS_LATENT
            z = int(lr.flash.class_counts(NS_LATENT).sum())
            out["flash"]["latents"] = {"records": z, "bytes": z * lr.flash.spec(NS_LATENT).record_bytes,
                                       "shape": list(lr.latent.codec.latent_shape),
                                       "frozen": lr.latent.codec.fingerprint}
        if strat.swap_engine is not None:  # CarM's: swaps between flash and the RAM memory
            out["swap"] = strat.swap_engine.stats()
        out["steps"] = lr.steps
        out["energy"] = _energy(lr)
        out["miro"] = self._miro_status(lr)
        out["last_acc"] = lr.acc[-1] if lr.acc else None
        out["last_avg_acc"] = as_dict(lr.per_task[-1])["avg_acc"] if lr.per_task else None
        return out

    def _miro_status(self, lr) -> dict:
        c = self.cfg  # the knobs in force, whether Miro tunes them or not (Knobs.key's format)
        knobs = f"mem={c.memory},flash={c.flash_budget},swap={c.swap_ratio},epochs={c.epochs}"
        hooks = lr.hooks
        d = as_dict(hooks.decisions[-1]) if hooks is not None and hooks.decisions else None
        return {"enabled": hooks is not None, "rule": c.miro_rule if hooks is not None else None,
                "knobs": (hooks.knobs_key() if hooks is not None else None) or knobs,
                "last_decision": d and {k: d[k] for k in LAST_DECISION_KEYS if k in d}}

    def close(self):
        self.stop()
        if self.learner is not None:
            self.learner.close()


def _budget(lr, cfg: RunConfig, progress: Optional[dict], open_task: int) -> Optional[dict]:
    """Session.status's ``budget`` (engine/budget.py's figures), None without a budget: what is in force,
    joules spent by kind (training, profiling, evaluation, predict and KV requests), the guard's trips;
    for the task in training (else the open one) what it spent, what remains and a forecast of its
    whole cost (spent / the fraction trained); ``pending``: a budget set since the trainer's last step,
    in force from its next one (None when none waits). Every key always there."""
    from miro_runtime.engine.budget import MODE_NONE, EnergyBudget
    configured = {"task_j": cfg.energy_budget_j, "power_w": cfg.power_budget_w, "bucket_s": cfg.power_bucket_s}
    guard = lr.guard if lr is not None else None
    if guard is None:  # before the first sample: the configured budget, nothing spent yet
        budget, in_force = EnergyBudget(cfg.energy_budget_j, cfg.power_budget_w, cfg.power_bucket_s), configured
    else:
        budget = guard.budget
        in_force = {"task_j": budget.task_j, "power_w": budget.power_w, "bucket_s": budget.bucket_s}
    if budget.mode == MODE_NONE and cfg.energy_budget_j is None and cfg.power_budget_w is None:
        return None
    t = progress["task"] if progress else open_task if open_task >= 0 else None
    in_window = lr.task_joules() if progress and guard is not None and lr.in_task else 0.0  # the task training
    out = {"task": None, "task_spent_j": None, "remaining_j": None, **budget.status(t, in_window),
           "pending": None if configured == in_force else configured, "forecast_j": None}
    frac = progress["fraction"] if progress else 0.0
    if out["task_spent_j"] and frac > 0:
        out["forecast_j"] = round(out["task_spent_j"] / frac, 6)
    return out


def _energy(lr) -> dict:
    """Joules of the trained tasks, of the task in progress so far, and their sum."""
    energy = lr.energy_total()
    cur = lr.task_energy_so_far()
    return {"tasks_j": energy, "current_task_j": cur,
            "total_j": None if energy is None and lr.per_task else (energy or 0.0) + (cur or 0.0),
            "provenance": lr.provenance() or _prov(lr.meter)}


def _prov(meter) -> Optional[str]:
    try:
        p = meter.provenance()
        return "; ".join(f"{k}: {v}" for k, v in p.items()) if isinstance(p, dict) else str(p)
    except Exception:
        return None
