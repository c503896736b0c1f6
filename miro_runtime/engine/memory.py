"""Episodic memory (EM) in RAM: insertion policy over the store's slotted RAM tier.

Class-balanced (the default: every seen class keeps an equal share, reservoir within a class)
or plain reservoir over the whole stream. Slots hold the flash sample id too, so CarM can swap
a slot's sample for another of the same class without moving anything else.
"""

from __future__ import annotations

import numpy as np
import torch

from miro_runtime.choices import EVICTION_POLICIES as EM_POLICIES

from miro_runtime.storage import RamTier


class EpisodicMemory:
    def __init__(self, capacity: int, shape, num_classes: int, policy: str = "class-balanced",
                 aux_dim: int = 0, seed: int = 0, dtype: torch.dtype = torch.uint8):
        if policy not in EM_POLICIES:
            raise ValueError(f"memory policy {policy!r} is not one of {EM_POLICIES}")
        self.ram = RamTier(capacity, shape, dtype, aux_dim)  # uint8 images, or float16 latents (latent replay)
        self.policy = policy
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)
        self.seen = np.zeros(num_classes, dtype=np.int64)  # stream samples offered, per class
        self.counts = np.zeros(num_classes, dtype=np.int64)  # samples held, per class

    def __len__(self):
        return self.ram.size

    @property
    def capacity(self):
        return self.ram.capacity

    def _target_slot(self, y: int) -> int:
        """Where a new sample of class y goes: a free slot, a slot to overwrite, or -1 (skip)."""
        ram = self.ram
        if ram.size < ram.capacity:
            return ram.size
        if ram.capacity == 0:
            return -1
        if self.policy == "reservoir":
            j = int(self.rng.integers(int(self.seen.sum())))
            return j if j < ram.capacity else -1
        largest = int(np.argmax(self.counts))
        if self.counts[y] < self.counts[largest]:
            victim_class = largest  # take room from the largest class
        else:  # y is among the largest: reservoir within its own class
            if self.rng.random() >= self.counts[y] / max(1, self.seen[y]):
                return -1
            victim_class = y
        members = np.nonzero(ram.labels[: ram.size].numpy() == victim_class)[0]
        return int(members[self.rng.integers(len(members))])

    def update(self, x: torch.Tensor, y, ids, tasks, aux=None) -> int:
        """Offer a batch of stream samples; returns how many were taken."""
        y = np.asarray(y, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        tasks = np.broadcast_to(np.asarray(tasks, dtype=np.int64), y.shape)
        taken = 0
        if len(y) and int(y.max()) >= self.num_classes:  # a live stream's classes grow as labels arrive
            self._grow(int(y.max()) + 1)
        for i in range(len(y)):
            c = int(y[i])
            self.seen[c] += 1
            slot = self._target_slot(c)
            if slot < 0:
                continue
            a = None if aux is None else aux[i]
            if slot == self.ram.size:
                self.ram.append(x[i], c, int(ids[i]), int(tasks[i]), a)
            else:
                self.counts[int(self.ram.labels[slot])] -= 1
                self.ram.replace(slot, x[i], c, int(ids[i]), int(tasks[i]), a)
            self.counts[c] += 1
            taken += 1
        return taken

    def _grow(self, num_classes: int):
        pad = num_classes - self.num_classes
        self.seen = np.concatenate([self.seen, np.zeros(pad, dtype=np.int64)])
        self.counts = np.concatenate([self.counts, np.zeros(pad, dtype=np.int64)])
        self.num_classes = num_classes

    def sample(self, k: int):
        """k random slots and their contents (copied atomically): (slots, batch dict)."""
        slots = self.ram.sample_slots(k, self.rng)
        return slots, self.ram.gather(slots)

    def resize(self, capacity: int) -> int:
        dropped = self.ram.resize(capacity, self.rng)
        self.counts = self.ram.class_counts(self.num_classes)
        return dropped

    def state(self) -> dict:
        st = {f"ram.{k}": v for k, v in self.ram.state().items()}
        st["seen"] = torch.from_numpy(self.seen.copy())
        st["capacity"] = self.ram.capacity
        return st

    def load_state(self, st: dict):
        if st["capacity"] != self.ram.capacity:
            self.ram.resize(st["capacity"])
        self.ram.load_state({k[4:]: v for k, v in st.items() if k.startswith("ram.")})
        self.seen = st["seen"].numpy().copy()
        self.num_classes = max(self.num_classes, len(self.seen))
        if len(self.seen) < self.num_classes:
            self.seen = np.concatenate([self.seen, np.zeros(self.num_classes - len(self.seen), dtype=np.int64)])
        self.counts = self.ram.class_counts(self.num_classes)
