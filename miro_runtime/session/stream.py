"""LiveStream: the stream a session grows as samples arrive, and its label map.

Clients label samples with any ints in [0, max_classes); the stream maps them to contiguous internal
ids in order of first arrival (as the batch streams relabel in arrival order), so the growing head
only has outputs for classes seen. The map and each task's classes are flash meta, written in the
same transaction as the batch that changes them; after a restart ``from_meta`` and ``restore_*``
read the stream back from the store.
"""

from __future__ import annotations

import json

import numpy as np

from miro_runtime.engine.streams import TaskSpec
from miro_runtime.session.errors import SessionError

LABELS_KEY = "live/labels"  # flash meta: the client label of each internal id, in arrival order (JSON list)
TASKS_KEY = "live/tasks"  # flash meta: the internal ids first seen in each task (JSON list of lists)
TRAIN_TASKS_KEY = "live/train_tasks"  # flash meta: how many tasks have train samples (the last is open or ended)
TEST_NS = "test"  # the flash namespace of test samples (train samples live in the learner's NS)
READ_CHUNK = 4096  # ids read back per batch when a restart recovers untrained samples


class LiveStream:
    """A stream that grows as data arrives. Clients' labels (any ints in [0, max_classes)) map to
    contiguous ids in order of first arrival, as the batch streams relabel in arrival order, so the
    growing head only has outputs for classes seen; ``inv`` maps back."""

    name = "live"

    def __init__(self, shape, max_classes: int):
        self.shape = tuple(int(s) for s in shape)
        self.max_classes = max_classes
        self.inv: list = []  # internal id -> client label
        self.map: dict = {}  # client label -> internal id
        self.tasks: list = []  # TaskSpec per task: the classes first seen in it
        # tasks that got train samples: a task may bring no new class (domain-incremental), and test samples
        # sent ahead may create the next task's entry, so neither ``tasks`` nor the label map counts them
        self.train_tasks = 0
        self.train: list = []  # per task (x, y); the open task's grows, a trained task's is freed
        self.train_ids: list = []  # per task, the flash ids of train[t]
        self.test: list = []  # per task (x, y), kept for evaluation
        self._chunks: dict = {}  # task -> [(ids, x, y)] not yet merged into train[t]

    @classmethod
    def from_meta(cls, shape, max_classes: int, meta: dict) -> "LiveStream":
        """A stream with the label map and task classes a store's meta holds (none: an empty one)."""
        s = cls(shape, max_classes)
        if meta.get(LABELS_KEY):
            s.inv = [int(v) for v in json.loads(meta[LABELS_KEY])]
            s.map = {v: i for i, v in enumerate(s.inv)}
            for t, classes in enumerate(json.loads(meta.get(TASKS_KEY) or "[]")):
                s.ensure_task(t)
                s.tasks[t].classes = list(classes)
        # a store written before the key: every task the map names had train samples (restore_train adds
        # any later task it finds samples of)
        s.train_tasks = int(meta.get(TRAIN_TASKS_KEY) or len(s.tasks))
        return s

    def label_meta(self) -> dict:
        """The flash meta that makes the label map durable (committed with the batch that grew it)."""
        return {LABELS_KEY: json.dumps(self.inv), TASKS_KEY: json.dumps([t.classes for t in self.tasks]),
                TRAIN_TASKS_KEY: str(self.train_tasks)}

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

    # ------------------------------------------------------------------ after a restart
    def restore_tests(self, flash):
        """Every stored test sample back into its task's test set."""
        if not int(flash.class_counts(TEST_NS).sum()):
            return
        n_classes = len(flash.class_counts(TEST_NS))
        ids = np.sort(np.concatenate([flash.class_ids(TEST_NS, c) for c in range(n_classes)]))
        b = flash.read_batch(TEST_NS, ids)
        for t in np.unique(b["tasks"]).tolist():
            self.ensure_task(t)
            m = b["tasks"] == t
            self.add_test(t, b["x"][m], b["labels"][m])

    def restore_train(self, flash, ns: str, first: int) -> list:
        """The stored train samples of tasks ``first`` on (not yet trained: the open one, an ended one
        cut short) back into the stream; returns the tasks that got samples back."""
        ids_all = [flash.class_ids(ns, c) for c in range(len(flash.class_counts(ns)))]
        ids_all = np.sort(np.concatenate(ids_all)) if ids_all else np.zeros(0, np.int64)
        if not ids_all.size:
            return []
        # train ids grow with arrival and tasks arrive in order, so the pending tasks' samples are a
        # suffix of the ids: read back from the end until a chunk reaches an older task, never the
        # whole store (months of samples on a board)
        parts, end = [], ids_all.size
        while end > 0:
            b = flash.read_batch(ns, ids_all[max(0, end - READ_CHUNK):end])
            keep = b["tasks"] >= first
            parts.append({k: b[k][keep] for k in ("x", "labels", "tasks", "ids")})
            if not keep.all():
                break
            end -= READ_CHUNK
        b = {k: np.concatenate([p[k] for p in reversed(parts)]) for k in parts[0]}
        restored = np.unique(b["tasks"]).tolist()  # from the samples themselves, whatever the meta says
        for t in restored:
            m = b["tasks"] == t
            self.ensure_task(t)
            self.add_train(t, b["ids"][m], b["x"][m], b["labels"][m])
        self.train_tasks = max([self.train_tasks] + [t + 1 for t in restored])
        return restored
