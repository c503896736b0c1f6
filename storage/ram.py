"""RAM tier: the episodic memory as preallocated tensor slots (CarM's RAM EM).

One tensor of shape (N, *sample_shape) plus per-slot label / task / id arrays: no Python object
per sample, O(1) replace, and a single lock that makes every slot write and every batch gather
atomic, so a slot being refilled by the swap engine is never read half-written. The lock is held
only for memcpy-sized work; flash reads happen outside it.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import torch

from .errors import BadRecordError


class RamTier:
    def __init__(self, capacity: int, sample_shape, dtype=torch.uint8, aux_dim: int = 0):
        if capacity < 0:
            raise BadRecordError(f"RAM tier capacity must be >= 0, got {capacity}")
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dtype = dtype
        self.aux_dim = int(aux_dim)
        self.lock = threading.Lock()
        self.generation = 0  # bumped by resize so in-flight swaps aimed at old slots are dropped
        self._alloc(int(capacity))
        self.size = 0  # slots [0, size) are filled

    def _alloc(self, n: int):
        self.data = torch.zeros((n, *self.sample_shape), dtype=self.dtype)  # (N, *shape)
        self.labels = torch.full((n,), -1, dtype=torch.int64)  # (N,)
        self.tasks = torch.full((n,), -1, dtype=torch.int64)  # (N,)
        self.aux = torch.zeros((n, self.aux_dim), dtype=torch.float32)  # (N, A)
        self.sample_ids = np.full(n, -1, dtype=np.int64)  # (N,) id in the flash tier, -1: none
        # (N,) bumped whenever a slot gets a new owner (append / replace: the memory's insertion,
        # which may change its class). A swap planned against an older version is not applied;
        # swaps themselves keep the class and do not bump it, so back-to-back swaps still land
        self.versions = np.zeros(n, dtype=np.int64)
        # numpy views over the tensors (shared memory), for the swap worker's writes: a few us per
        # field instead of a torch dispatch each, and no torch op on the worker thread
        self._np = (self.data.numpy(), self.labels.numpy(), self.tasks.numpy(), self.aux.numpy())

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.data, self.labels, self.tasks, self.aux)) \
            + self.sample_ids.nbytes

    def _check(self, x):
        x = torch.as_tensor(x)
        if tuple(x.shape) != self.sample_shape or x.dtype != self.dtype:
            raise BadRecordError(f"RAM tier holds {self.dtype}{list(self.sample_shape)}, "
                                 f"got {x.dtype}{list(x.shape)}")
        return x

    def _write_slot(self, slot, x, label, sample_id, task, aux):
        self.data[slot].copy_(x)
        self.labels[slot] = int(label)
        self.tasks[slot] = int(task)
        self.sample_ids[slot] = int(sample_id)
        self.versions[slot] += 1
        if self.aux_dim and aux is not None:
            self.aux[slot].copy_(torch.as_tensor(aux, dtype=torch.float32).reshape(-1)[: self.aux_dim])

    def append(self, x, label: int, sample_id: int = -1, task: int = 0, aux=None) -> int:
        """Fill the next free slot; returns it, or -1 when full."""
        x = self._check(x)
        with self.lock:
            if self.size >= self.capacity:
                return -1
            slot = self.size
            self._write_slot(slot, x, label, sample_id, task, aux)
            self.size += 1
            return slot

    def replace(self, slot: int, x, label: int, sample_id: int = -1, task: int = 0, aux=None,
                generation: Optional[int] = None) -> bool:
        """Overwrite one filled slot in O(1). With ``generation``, refuses if a resize happened since."""
        x = self._check(x)
        with self.lock:
            if generation is not None and generation != self.generation:
                return False
            if not 0 <= slot < self.size:
                return False
            self._write_slot(slot, x, label, sample_id, task, aux)
            return True

    def replace_many(self, slots, x, labels, sample_ids, tasks, aux=None,
                     generation: Optional[int] = None, versions=None) -> int:
        """Overwrite several filled slots under one lock hold (the swap engine's write).
        ``x`` is (K, *shape) of the tier's dtype. With ``versions``, a slot written since those
        versions were read is left alone. Returns how many slots were written."""
        # numpy only: this runs on swap worker threads, where a torch op would start a second
        # OpenMP team that competes with the trainer's for the cores (measured: 2x slower steps)
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        data, lab, tsk, aux_np = self._np
        if x.shape[1:] != data.shape[1:] or x.dtype != data.dtype:
            raise BadRecordError(f"RAM tier holds {data.dtype}{list(self.sample_shape)}, "
                                 f"got {x.dtype}{list(x.shape[1:])}")
        slots = np.asarray(slots, dtype=np.int64)
        with self.lock:
            if generation is not None and generation != self.generation:
                return 0
            ok = (slots >= 0) & (slots < self.size)
            if versions is not None:
                ok[ok] = self.versions[slots[ok]] == np.asarray(versions)[ok]
            if not ok.all():
                slots, x = slots[ok], x[ok]
                labels, sample_ids, tasks = (np.asarray(a)[ok] for a in (labels, sample_ids, tasks))
                aux = None if aux is None else np.asarray(aux)[ok]
            if not slots.size:
                return 0
            data[slots] = x
            lab[slots] = labels
            tsk[slots] = tasks
            if self.aux_dim and aux is not None:
                aux_np[slots] = aux
            self.sample_ids[slots] = sample_ids
            return int(slots.size)

    def gather(self, slots) -> dict:
        """Copy the given slots out atomically: {'x', 'y', 'task', 'aux', 'ids'}."""
        idx = torch.as_tensor(np.asarray(slots, dtype=np.int64))
        with self.lock:
            if idx.numel() and int(idx.max()) >= self.size:
                raise IndexError(f"slot {int(idx.max())} is not filled (size {self.size})")
            return {"x": self.data.index_select(0, idx), "y": self.labels.index_select(0, idx),
                    "task": self.tasks.index_select(0, idx), "aux": self.aux.index_select(0, idx),
                    "ids": self.sample_ids[idx.numpy()].copy(), "versions": self.versions[idx.numpy()].copy()}

    def sample_slots(self, k: int, rng: np.random.Generator) -> np.ndarray:
        with self.lock:
            n = self.size
        return rng.choice(n, size=min(k, n), replace=False) if n else np.empty(0, dtype=np.int64)

    def class_counts(self, num_classes: int) -> np.ndarray:
        with self.lock:
            lab = self.labels[: self.size].numpy()
        return np.bincount(lab[lab >= 0], minlength=num_classes)

    def ids_snapshot(self) -> np.ndarray:
        with self.lock:
            return self.sample_ids[: self.size].copy()

    def contains(self, sample_id: int) -> bool:
        with self.lock:
            return bool((self.sample_ids[: self.size] == sample_id).any())

    def resize(self, capacity: int, rng: Optional[np.random.Generator] = None) -> int:
        """Change capacity at run time, keeping the samples that still fit. When shrinking, the
        samples dropped come from the largest classes first (class balance is kept). Returns the
        number of samples dropped."""
        if capacity < 0:
            raise BadRecordError(f"RAM tier capacity must be >= 0, got {capacity}")
        rng = rng or np.random.default_rng(0)
        with self.lock:
            n = self.size
            keep = np.arange(n)
            if capacity < n:
                labels = self.labels[:n].numpy()
                counts = np.bincount(labels[labels >= 0], minlength=1) if n else np.zeros(1, int)
                drop = np.zeros_like(counts)
                for _ in range(n - capacity):
                    drop[int(np.argmax(counts - drop))] += 1
                mask = np.ones(n, dtype=bool)
                for c in np.nonzero(drop)[0]:
                    members = np.nonzero(labels == c)[0]
                    mask[rng.choice(members, size=int(drop[c]), replace=False)] = False
                keep = np.nonzero(mask)[0]
            old = (self.data, self.labels, self.tasks, self.aux, self.sample_ids)
            self._alloc(int(capacity))
            k = torch.as_tensor(keep)
            m = keep.size
            self.data[:m] = old[0].index_select(0, k)
            self.labels[:m] = old[1].index_select(0, k)
            self.tasks[:m] = old[2].index_select(0, k)
            self.aux[:m] = old[3].index_select(0, k)
            self.sample_ids[:m] = old[4][keep]
            self.versions[:m] = 1
            self.size = m
            self.generation += 1
            return n - m

    def state(self) -> dict:
        """Slot contents for checkpoints: ids say what the slots held; tensors restore them exactly."""
        with self.lock:
            n = self.size
            return {"data": self.data[:n].clone(), "labels": self.labels[:n].clone(),
                    "tasks": self.tasks[:n].clone(), "aux": self.aux[:n].clone(),
                    "sample_ids": torch.from_numpy(self.sample_ids[:n].copy())}

    def load_state(self, st: dict):
        n = st["labels"].shape[0]
        if n > self.capacity:
            self.resize(n)
        with self.lock:
            self.data[:n] = st["data"]
            self.labels[:n] = st["labels"]
            self.tasks[:n] = st["tasks"]
            if self.aux_dim:
                self.aux[:n] = st["aux"]
            self.sample_ids[:n] = st["sample_ids"].numpy()
            self.versions[:n] += 1
            self.size = n
            self.generation += 1
