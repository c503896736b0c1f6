"""The CL engine: stream -> store -> memory -> step -> metrics, in one direction.

Each task's batches are validated whole, then ingested into the crash-safe flash tier (the stream
position is written in the same LMDB transaction as the samples), then trained on -- epochs over
the task's samples (the CarM/Miro setting) or a single pass as batches arrive (online) -- while
the strategy replays from its RAM episodic memory. After each task: evaluation on every task so
far, a metrics line, and an atomic checkpoint. Runs in-process; `miro run` and the daemon wrap it.
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

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .log import EventLog
from .metrics import anon_rss_mb, bwt, evaluate, final_avg_acc, forgetting, peak_rss_mb
from .models import make_model
from .streams import Stream, make_stream
from .strategies import make_strategy

NS = "samples"
CHECKPOINT = "checkpoint.pt"


class Experiment:
    """One continual-learning run. ``Experiment(cfg).run()`` returns the summary dict."""

    def __init__(self, cfg: RunConfig, stream: Optional[Stream] = None, resume: bool = False,
                 on_event: Optional[Callable] = None, hooks=None, monitor: Optional[ResourceMonitor] = None):
        cfg.validate()
        if not cfg.run_dir:
            raise ValueError("RunConfig.run_dir is required (where the store, metrics and checkpoints live)")
        self.cfg, self.resume, self.on_event = cfg, resume, on_event
        if hooks is None and cfg.miro:
            from .miro import MiroController
            hooks = MiroController(cfg, rule=cfg.miro_rule, search=cfg.miro_search, budget_frac=cfg.miro_budget)
        self.hooks = hooks  # optional object with task_begin(exp, t) / task_end(exp, t, record)
        # hooks that react to resources (Miro) get snapshots between steps; tests pass a monitor
        # reading fixture sysfs trees
        wants = hooks is not None and hasattr(hooks, "on_resources")
        self.monitor = (monitor or ResourceMonitor()) if wants else None
        self._last_watch = -math.inf
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.stream = stream or make_stream(cfg.stream, cfg.tasks, cfg.seed, cfg.data_dir, cfg.download,
                                            **cfg.synthetic)
        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.log = EventLog(os.path.join(cfg.run_dir, "events.jsonl"))
        self.metrics_path = os.path.join(cfg.run_dir, "metrics.jsonl")

    @classmethod
    def from_run_dir(cls, run_dir: str, **kw) -> "Experiment":
        """Resume the run kept in ``run_dir`` with the configuration it was started with."""
        path = os.path.join(run_dir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no run to resume in {run_dir} (config.json missing)")
        with open(path) as fh:
            cfg = RunConfig.from_json(fh.read())
        cfg.run_dir = run_dir
        return cls(cfg, resume=True, **kw)

    def _emit(self, kind, **payload):
        if self.on_event:
            self.on_event(kind, payload)

    # ------------------------------------------------------------------ stream -> store
    def _ingest(self, t: int, chunk: int):
        """Store task t in the flash tier, skipping batches a previous (killed) run acknowledged.
        Yields (batch index, x, y, ids) for batches as they become durable."""
        pos = self.flash.get_meta("ingest_pos")
        done_t, done_b = (int(v) for v in pos.split(":")) if pos else (-1, 0)
        first = self.flash.get_meta(f"task{t}_first_id")
        for b, x, y in self.stream.batches(t, chunk):
            if t < done_t or (t == done_t and b < done_b):
                ids = int(first) + b * chunk + np.arange(len(y))
            else:
                meta = {"ingest_pos": f"{t}:{b + 1}"}
                if b == 0:
                    meta[f"task{t}_first_id"] = "{first_id}"
                res = self.flash.put_batch(NS, list(x), y, np.full(len(y), t), meta=meta)
                ids = res.ids
            yield b, x, y, ids

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, pos: dict):
        st = {"version": 1, "config": self.cfg.to_json(), "position": pos,
              "strategy": self.strategy.state_dict(), "torch_rng": torch.get_rng_state(),
              "metrics": json.dumps({"acc": self.acc, "per_task": self.per_task, "steps": self.steps,
                                     "wall_s": self._wall_before + time.perf_counter() - self._t_start,
                                     "partial": self._partial(pos)})}
        if self.hooks is not None:
            st["hooks"] = json.dumps(self.hooks.state())
        save_checkpoint(os.path.join(self.cfg.run_dir, CHECKPOINT), st)
        self.log.event("checkpoint", **pos, steps=self.steps)
        self._emit("checkpoint", **pos)

    def _partial(self, pos: dict) -> Optional[dict]:
        """What the task in progress has spent so far (a checkpoint in its middle), so a resumed
        run reports the task's whole cost, not only the part after the restart."""
        cur = self._cur
        if cur is None or pos["task"] != cur["task"] or (pos["epoch"] == 0 and pos["batch"] == 0):
            return None
        m = self.meter.peek(f"task{cur['task']}")
        part = {"task": cur["task"], "energy_j": m.joules, "components": m.components,
                "wall_s": time.perf_counter() - cur["wall0"], "train_s": cur["train_s"], "samples": cur["samples"],
                "restarts": 0}
        return _add_partial(part, self._carry) if self._carry and self._carry["task"] == cur["task"] else part

    def _restore(self) -> dict:
        path = os.path.join(self.cfg.run_dir, CHECKPOINT)
        if not os.path.exists(path):
            self.log.event("resume", found_checkpoint=False)
            return {"task": 0, "epoch": 0, "batch": 0}
        st = load_checkpoint(path)
        self.strategy.load_state_dict(st["strategy"])
        torch.set_rng_state(st["torch_rng"])
        m = json.loads(st["metrics"])
        self.acc, self.per_task, self.steps = m["acc"], m["per_task"], m["steps"]
        self._wall_before = m.get("wall_s", 0.0)
        part = m.get("partial")
        if part and part["task"] == st["position"]["task"]:
            self._carry = dict(part, restarts=part["restarts"] + 1)
        if self.hooks is not None and "hooks" in st:
            self.hooks.load_state(self, json.loads(st["hooks"]))
        self.log.event("resume", found_checkpoint=True, **st["position"])
        return dict(st["position"])

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        cfg, stream = self.cfg, self.stream
        t_start = time.perf_counter()
        if not self.resume:
            with open(os.path.join(cfg.run_dir, "config.json"), "w") as fh:
                fh.write(cfg.to_json())
        torch.manual_seed(cfg.seed)
        model = make_model(cfg.model, stream.shape).to(self.device)
        self.flash = FlashTier(os.path.join(cfg.run_dir, "state"), sync_mode=cfg.sync_mode, seed=cfg.seed)
        self.flash.declare_samples(NS, SampleSpec(shape=stream.shape, dtype="uint8", num_classes=stream.num_classes,
                                                  policy=cfg.flash_policy, budget_records=cfg.flash_budget))
        self.strategy = make_strategy(cfg.strategy, model, cfg, self.flash, stream, self.device)
        self.meter = make_meter(cfg.energy_source)
        self.acc, self.per_task, self.steps = [], [], 0
        self._t_start, self._wall_before, self._cur, self._carry = t_start, 0.0, None, None
        self.peak_anon = anon_rss_mb()
        pos = self._restore() if self.resume else {"task": 0, "epoch": 0, "batch": 0}
        self.log.event("run_begin", config=json.loads(cfg.to_json()), stream=stream.describe(),
                       resumed=self.resume, position=pos)
        # intra-op threads are process-wide: set for this run, given back after it (in-process callers).
        # One thread by default: the small models trained here gain little wall time from a second
        # one and pay for it in joules (its spin-waits are CPU time; README has the measurement)
        threads_before = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            for t in range(pos["task"], len(stream.tasks)):
                self._task(t, pos if t == pos["task"] else {"task": t, "epoch": 0, "batch": 0})
        finally:
            self.strategy.close()
            self.flash.close()
            self.meter.close()
            torch.set_num_threads(threads_before)
        summary = self._summary(self._wall_before + time.perf_counter() - t_start)
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        self.log.event("run_end", final_avg_acc=summary["final_avg_acc"], forgetting=summary["forgetting"])
        self.log.close()
        return summary

    def _task(self, t: int, pos: dict):
        cfg, stream, strat = self.cfg, self.stream, self.strategy
        fresh = pos["epoch"] == 0 and pos["batch"] == 0
        stream.validate_task(t)  # bad input stops here: nothing of this task is stored yet
        wall0 = time.perf_counter()
        if fresh:
            strat.begin_task(t)
        if self.hooks is not None and fresh:
            self.hooks.task_begin(self, t)  # Miro profiles here: its energy is metered on its own
        self.meter.begin_window(f"task{t}")
        cur = self._cur = {"task": t, "wall0": wall0, "train_s": 0.0, "samples": 0}
        x_task, y_task = stream.train[t]
        chunk = cfg.batch_size if cfg.online else 256
        n_batches = math.ceil(len(y_task) / cfg.batch_size)
        steps_total = n_batches * (1 if cfg.online else cfg.epochs)
        self._emit("task_begin", task=t, steps=steps_total, done=pos["epoch"] * n_batches + pos["batch"],
                   classes=stream.tasks[t].classes)
        self.log.event("task_begin", task=t, classes=stream.tasks[t].classes, samples=len(y_task))
        all_ids = []
        for b, x, y, ids in self._ingest(t, chunk):
            all_ids.append(ids)
            if cfg.online and b >= pos["batch"]:  # single pass: train as each batch arrives
                xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
                t0 = time.perf_counter()
                strat.observe(xt, yt)
                strat.remember(xt, y, ids, t)
                cur["train_s"] += time.perf_counter() - t0
                cur["samples"] += len(y)
                self._step({"task": t, "epoch": 0, "batch": b + 1})
        ids_task = np.concatenate(all_ids)
        if not cfg.online:
            X, Y, _ = strat.training_data(t, torch.from_numpy(x_task), torch.from_numpy(y_task), ids_task)
            n = len(Y)
            nb = math.ceil(n / cfg.batch_size)
            e = pos["epoch"]
            while e < cfg.epochs:  # re-read each epoch: Miro may change the epochs mid-task
                perm = torch.from_numpy(np.random.default_rng([cfg.seed, t, e]).permutation(n))
                for b in range(pos["batch"] if e == pos["epoch"] else 0, nb):
                    idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                    t0 = time.perf_counter()
                    strat.observe(X[idx], Y[idx])
                    cur["train_s"] += time.perf_counter() - t0
                    cur["samples"] += len(idx)
                    self._step({"task": t, "epoch": e, "batch": b + 1})
                e += 1
        strat.end_task(t, torch.from_numpy(x_task), y_task, ids_task, cfg.online)
        energy = self.meter.end_window(f"task{t}")  # ingest + training + memory update, not evaluation
        here = {"energy_j": energy.joules, "components": energy.components, "wall_s": time.perf_counter() - wall0,
                "train_s": cur["train_s"], "samples": cur["samples"]}
        carry = self._carry if self._carry and self._carry["task"] == t else None
        self._carry = self._cur = None
        done = _add_partial(here, carry) if carry else here
        row = evaluate(strat.model, stream, t, self.device)
        self.acc.append(row)
        rec = {"task": t, "acc": row, "avg_acc": float(np.mean(row)), "wall_s": done["wall_s"],
               "train_s": done["train_s"], "train_samples": done["samples"],
               "train_samples_per_s": done["samples"] / done["train_s"] if done["train_s"] else None,
               "energy_j": done["energy_j"], "energy_components_j": done["components"],
               "energy_provenance": energy.summary(), "energy_warnings": energy.warnings,
               "peak_rss_mb": peak_rss_mb(), "peak_anon_rss_mb": max(self.peak_anon, anon_rss_mb()),
               "flash_records": int(self.flash.class_counts(NS).sum()), "torch_threads": torch.get_num_threads(),
               **strat.stats()}
        if carry:  # resumed in this task: its figures add what was metered before the restart
            rec["before_restart"] = {k: carry[k] for k in ("energy_j", "wall_s", "train_s", "samples", "restarts")}
            rec["before_restart"]["note"] = ("metered up to the last checkpoint before the restart; work between that "
                                             "checkpoint and the kill is not known and was redone (metered again)")
        if self.hooks is not None:
            self.hooks.task_end(self, t, rec)
        self.per_task.append(rec)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        self.log.event("task_end", **{k: v for k, v in rec.items()})
        self._emit("task_end", **rec)
        self._checkpoint({"task": t + 1, "epoch": 0, "batch": 0})

    def _step(self, pos):
        self.steps += 1
        if self.steps % 25 == 0:  # a /proc read: cheap enough every few steps for a true peak
            self.peak_anon = max(self.peak_anon, anon_rss_mb())
        self._emit("step", **pos)
        self._watch(pos["task"])
        if self.cfg.checkpoint_every and self.steps % self.cfg.checkpoint_every == 0:
            self._checkpoint(pos)

    def _watch(self, t: int):
        """Between steps, every ``monitor_every_s``: hand a resource snapshot to the hooks (Miro
        re-decides when RAM, battery or thermals newly press; what it adopts applies from the next
        step on, the epochs of this task included)."""
        if self.monitor is None:
            return
        now = time.perf_counter()
        if now - self._last_watch < self.cfg.monitor_every_s:
            return
        self._last_watch = now
        self.hooks.on_resources(self, t, self.monitor.snapshot())

    def _summary(self, wall_s: float) -> dict:
        T = len(self.stream.tasks)
        acc = [row + [None] * (T - len(row)) for row in self.acc]
        train_s = sum(r["train_s"] for r in self.per_task)
        samples = sum(r["train_samples"] for r in self.per_task)
        out = {"final_avg_acc": final_avg_acc(self.acc), "forgetting": forgetting(self.acc), "bwt": bwt(self.acc),
               "acc_matrix": acc, "train_samples_per_s": samples / train_s if train_s else None,
               "peak_rss_mb": peak_rss_mb(), "peak_anon_rss_mb": max((r["peak_anon_rss_mb"] for r in self.per_task),
                                                                     default=None),
               "energy_j": self._energy_total(), "energy_provenance": self._provenance(),
               "wall_s": wall_s, "train_s": train_s, "steps": self.steps,
               "config": json.loads(self.cfg.to_json()), "stream": self.stream.describe(),
               "per_task": self.per_task}
        if self.hooks is not None:
            out.update(self.hooks.summary())
        last = self.per_task[-1] if self.per_task else {}
        if "swap" in last:
            out["swap"] = last["swap"]
        return out


    def _energy_total(self):
        vals = [r["energy_j"] for r in self.per_task] + [r.get("profiling_energy_j") or 0.0 for r in self.per_task]
        return None if not vals or any(v is None for v in vals) else float(sum(vals))

    def _provenance(self):
        return "; ".join(sorted({r["energy_provenance"] for r in self.per_task})) or None


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


def run(cfg: RunConfig, **kw) -> dict:
    """Run one experiment in-process and return its summary."""
    return Experiment(cfg, **kw).run()
