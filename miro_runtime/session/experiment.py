"""``miro run``: a whole known stream driven through the incremental ``Learner``.

Each task's batches are validated whole, then stored in the crash-safe flash tier (the stream
position is written in the same LMDB transaction as the samples, so a restart never stores a batch
twice), then trained on -- epochs over the task's samples (the CarM/Miro setting) or a single pass
as batches arrive (online) -- while the strategy replays from its RAM episodic memory. After each
task: evaluation on every task so far, a metrics line, and an atomic checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import numpy as np

from miro_runtime.profilers import ResourceMonitor

from miro_runtime.config import RunConfig
from miro_runtime.control import make_controller
from miro_runtime.engine.hooks import Controller
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import Stream, make_stream
from miro_runtime.log import EventLog
from miro_runtime.records import Position


class Experiment:
    """One continual-learning run over a known stream. ``Experiment(cfg).run()`` returns the summary."""

    def __init__(self, cfg: RunConfig, stream: Optional[Stream] = None, resume: bool = False,
                 on_event: Optional[Callable] = None, hooks: Optional[Controller] = None,
                 monitor: Optional[ResourceMonitor] = None):
        cfg.validate()
        if not cfg.run_dir:
            raise ValueError("RunConfig.run_dir is required (where the store, metrics and checkpoints live)")
        self.cfg, self.resume = cfg, resume
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.stream = stream or load_stream(cfg)
        from miro_runtime.engine.strategies import check_method
        check_method(cfg)
        check_resources(cfg, self.stream)
        if cfg.strategy == "joint" and cfg.flash_budget is not None:
            n = sum(len(y) for _, y in self.stream.train)
            if n > cfg.flash_budget:  # joint trains on every stored sample: a truncated store is another bound
                raise ValueError(f"--strategy joint trains on every sample of the stream ({n}), but --flash-budget "
                                 f"{cfg.flash_budget} keeps fewer: pass --flash-budget 0 (unbounded) or >= {n}")
        if hooks is None:
            hooks = make_controller(cfg)
        # the run's log outlives the learner's close: the run_end line follows it
        self.log = EventLog(os.path.join(cfg.run_dir, "events.jsonl"))
        self.learner = Learner(cfg, self.stream, hooks=hooks, monitor=monitor, on_event=on_event, log=self.log)

    @classmethod
    def from_run_dir(cls, run_dir: str, **kw) -> "Experiment":
        """Resume the run kept in ``run_dir`` with the configuration it was started with: config.json,
        or, when that file is damaged or gone, the copy inside the latest good checkpoint."""
        import logging

        from miro_runtime.engine.checkpoint import any_checkpoint, load_latest
        path = os.path.join(run_dir, "config.json")
        if not os.path.isdir(run_dir) or not (os.path.exists(path) or any_checkpoint(run_dir)):
            raise FileNotFoundError(f"no run to resume in {run_dir} (config.json missing)")
        try:
            with open(path, "rb") as fh:
                cfg = RunConfig.from_json(fh.read().decode("utf-8", "replace"), origin=path)
        except (OSError, ValueError) as e:
            st, ck, _ = load_latest(run_dir)
            if st is None or "config" not in st:
                raise ValueError(f"{e if not isinstance(e, OSError) else f'{path}: {e.strerror}'}; and no "
                                 f"usable checkpoint in {run_dir} holds a copy of the configuration") from None
            cfg = RunConfig.from_json(st["config"], origin=f"the configuration inside {ck}")
            logging.getLogger("miro").warning("%s; resuming with the copy inside %s", e, ck)
        cfg.run_dir = run_dir
        return cls(cfg, resume=True, **kw)

    def _ingest(self, t: int, chunk: int):
        """Store task t, skipping batches a previous (killed) run acknowledged.
        Yields (batch index, x, y, ids) for batches as they become durable."""
        flash = self.learner.flash
        pos = flash.get_meta("ingest_pos")
        done_t, done_b = (int(v) for v in pos.split(":")) if pos else (-1, 0)
        first = flash.get_meta(f"task{t}_first_id")
        for b, x, y in self.stream.batches(t, chunk):
            if t < done_t or (t == done_t and b < done_b):
                ids = int(first) + b * chunk + np.arange(len(y))
            else:
                meta = {"ingest_pos": f"{t}:{b + 1}"}
                if b == 0:
                    meta[f"task{t}_first_id"] = "{first_id}"
                ids = self.learner.store(t, x, y, meta=meta).ids
            yield b, x, y, ids

    def run(self) -> dict:
        cfg, stream, lr = self.cfg, self.stream, self.learner
        t_start = time.perf_counter()
        if not self.resume:
            with open(os.path.join(cfg.run_dir, "config.json"), "w") as fh:
                fh.write(cfg.to_json())
        pos = lr.open(self.resume)
        self.log.event("run_begin", config=json.loads(cfg.to_json()), stream=stream.describe(),
                       resumed=self.resume, position=pos.to_dict())
        try:
            for t in range(pos.task, len(stream.tasks)):
                self._task(t, pos.within(t))
        except BaseException:
            lr.abort_task()
            raise
        finally:
            lr.close()
        summary = lr.summary(lr.wall_before_s + time.perf_counter() - t_start)
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        self.log.event("run_end", final_avg_acc=summary["final_avg_acc"], forgetting=summary["forgetting"])
        self.log.close()
        return summary

    def _task(self, t: int, pos: Position):
        cfg, stream, lr = self.cfg, self.stream, self.learner
        stream.validate_task(t)  # bad input stops here: nothing of this task is stored yet
        lr.begin_task(t, pos)
        x_task, y_task = stream.train[t]
        chunk = cfg.batch_size if cfg.online else 256
        n_batches = -(-len(y_task) // cfg.batch_size)
        steps_total = n_batches * (1 if cfg.online else cfg.epochs)
        lr.emit("task_begin", task=t, steps=steps_total, done=pos.epoch * n_batches + pos.batch,
                classes=stream.tasks[t].classes)
        self.log.event("task_begin", task=t, classes=stream.tasks[t].classes, samples=len(y_task))
        all_ids = []
        for b, x, y, ids in self._ingest(t, chunk):
            all_ids.append(ids)
            if cfg.online and b >= pos.batch:  # single pass: train as each batch arrives
                lr.observe(t, x, y, ids, Position(t, 0, b + 1))
        ids_task = np.concatenate(all_ids)
        if not cfg.online:
            lr.train_epochs(t, x_task, y_task, ids_task, pos)
        lr.finish_task(t, x_task, y_task, ids_task)


def load_stream(cfg: RunConfig) -> Stream:
    """The stream a configuration names, cut to ``cfg.classes`` when given."""
    if cfg.classes:
        from miro_runtime.config import parse_classes
        from miro_runtime.engine.streams import select_classes
        whole = make_stream(cfg.stream, None, cfg.seed, cfg.data_dir, cfg.download, **cfg.synthetic)
        stream = select_classes(whole, parse_classes(cfg.classes), cfg.tasks)
    else:
        stream = make_stream(cfg.stream, cfg.tasks, cfg.seed, cfg.data_dir, cfg.download, **cfg.synthetic)
    if cfg.train_per_class:
        from miro_runtime.engine.streams import limit_per_class
        stream = limit_per_class(stream, cfg.train_per_class)
    return stream


def check_resources(cfg: RunConfig, stream) -> None:
    """Before anything is allocated: the device exists, and the RAM memory fits in available RAM."""
    import psutil
    import torch
    dev = cfg.device
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {dev}: no CUDA device is available here (torch.cuda.is_available() is "
                             f"False); use --device cpu or auto")
        idx = int(dev.split(":")[1]) if ":" in dev else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: no Apple GPU here; use --device cpu")
    per = int(np.prod(stream.shape)) + 64 + 4 * stream.num_classes  # pixels, slot bookkeeping, DER++ logits
    need = cfg.memory * per
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        raise ValueError(f"--memory {cfg.memory}: a RAM memory of {cfg.memory} samples of {list(stream.shape)} needs "
                         f"{need / 2**30:.1f} GiB; {avail / 2**30:.1f} GiB is available here")


def run(cfg: RunConfig, **kw) -> dict:
    """Run one experiment in-process and return its summary."""
    return Experiment(cfg, **kw).run()
