"""The one shape every CL method has (Mammoth-style): ``begin_task`` / ``observe`` / ``end_task``,
plus ``remember`` (offer stream samples to the episodic memory) and ``training_data``.

``Strategy`` declares every hook a caller (the learner, Miro, the session) uses, each with a default
that does nothing or the plain thing, as Mammoth's ``ContinualModel`` does: callers never probe a
strategy for a method, and a wrapper (CarM) names what it forwards."""

from __future__ import annotations

import json
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..latent import replay_ns
from ..memory import EpisodicMemory


class Strategy:
    name = "base"
    uses_memory = False
    Options: ClassVar[Optional[type]] = None  # the method's ``--method-opt`` dataclass; None: it takes none

    @classmethod
    def build_model(cls, cfg, stream) -> torch.nn.Module:
        """The network this method trains: the backbone ``--model`` names (the prompt methods build a
        frozen ViT of their own)."""
        from ..models import make_model
        return make_model(cfg.model, stream.shape, cfg.freeze_blocks, cfg.input_size)

    @classmethod
    def option_files(cls, opts) -> tuple:
        """((flag, path), ...): files the method's parsed options name, checked before a run starts."""
        return ()

    def __init__(self, model, cfg, flash, stream, device="cpu"):
        self.model, self.cfg, self.flash, self.stream = model, cfg, flash, stream
        self.device = torch.device(device)
        self.rng = np.random.default_rng(cfg.seed + 17)
        self.task = -1
        self.opt = None
        self.last_replay = None  # (slots, replay logits, labels, slot versions) of the last step, for CarM
        self.memory = None
        self.skipped_steps = 0
        self.ns = replay_ns(cfg)  # the flash namespace replay reads: "latents" in latent mode (``stream.shape`` too)
        if self.uses_memory:
            self.memory = EpisodicMemory(cfg.memory, stream.shape, stream.num_classes, cfg.em_policy,
                                         aux_dim=self.aux_dim, seed=cfg.seed + 5,
                                         dtype=torch.float16 if cfg.latent_replay else torch.uint8)

    aux_dim = 0

    # ---------------------------------------------------------------- lifecycle
    def begin_task(self, t: int) -> None:
        self.task = t
        if self.model.head.grow(len(self.stream.classes_upto(t))):
            self.model.to(self.device)
        self.opt = self.make_optimizer()

    def make_optimizer(self):
        """SGD over what trains (a frozen backbone's parameters are not the optimizer's to carry)."""
        return torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr,
                               momentum=self.cfg.momentum)

    def renew_optimizer(self) -> None:
        """The head grew mid-task (online, new classes): a fresh optimizer over the new parameters."""
        self.opt = self.make_optimizer()

    def training_data(self, t, x, y, ids):
        """What the epochs of task t iterate over (default: the task's own samples)."""
        return x, y, ids

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        return self.step(self.incoming_loss(self.model(x.to(self.device)), y.to(self.device)))

    def incoming_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the stream's samples, ``out`` (B, K). With ``cfg.ace`` (ER-ACE, Caccia et al.
        2022) only the classes present in the batch compete: a new task's first steps then raise its own
        logits without pushing every old class's down, which is what makes accuracy dip at a task's start."""
        if self.cfg.ace:
            present = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
            present[y.unique()] = True
            out = out.masked_fill(~present, torch.finfo(out.dtype).min)  # (B, K): absent classes out of the softmax
        return F.cross_entropy(out, y)

    def step(self, loss) -> float:
        """Backward + clipped SGD step. Clipping keeps momentum SGD stable when a replay term
        (DER++'s logit MSE) spikes right after the head grows; a non-finite loss skips the step."""
        value = float(loss.detach())
        if not np.isfinite(value):
            self.skipped_steps += 1
            return value
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        return value

    def remember(self, x: torch.Tensor, y, ids, t: int) -> None:
        """Offer stream samples to the episodic memory (no-op for memoryless methods)."""
        if self.memory is not None:
            self.memory.update(x, y, ids, t, self.aux_for(x, t))

    def aux_for(self, x, t):
        return None

    def end_task(self, t: int, x, y, ids, online: bool) -> None:
        """Epoch mode fills the memory from the finished task (online mode did so per batch)."""
        if not online and self.memory is not None:
            perm = self.rng.permutation(len(y))
            for i in range(0, len(perm), 256):
                idx = perm[i:i + 256]
                self.remember(x[idx], y[idx], ids[idx], t)

    def settle(self) -> None:
        """Every asynchronous write the method started has landed (before a checkpoint, a resize, the
        task's memory update); nothing to wait for by default."""

    def close(self) -> None:
        pass

    # ---------------------------------------------------------------- what callers read
    @property
    def swap_engine(self):
        """The storage.SwapEngine refreshing the memory from flash (CarM); None for the others."""
        return None

    def stats(self) -> dict:
        """Kept in each task's record (TaskRecord.strategy)."""
        return {"memory": None if self.memory is None else {"size": len(self.memory),
                                                            "capacity": self.memory.capacity},
                "skipped_steps": self.skipped_steps}

    def summary_extra(self) -> dict:
        """Keys merged into the run's summary (the prompt methods: step cost, AToM/ALD applied)."""
        return {}

    def set_knobs(self, **knobs) -> None:
        """Adopt the method's own knobs (a controller's choice: REP's r_max, theta_bar); the base
        methods have none."""
        if knobs:
            raise ValueError(f"{self.name} has no tunable knobs {sorted(knobs)}")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        st = {"model": self.model.state_dict(), "head_classes": self.model.head.num_classes,
              "task": self.task, "rng": json.dumps(self.rng.bit_generator.state)}
        if self.opt is not None:
            st["opt"] = self.opt.state_dict()
        if self.memory is not None:
            st["memory"] = self.memory.state()
            st["memory_rng"] = json.dumps(self.memory.rng.bit_generator.state)
        return st

    def load_state_dict(self, st: dict) -> None:
        self.model.head.grow(st["head_classes"])
        self.model.load_state_dict(st["model"])
        self.model.to(self.device)
        self.task = st["task"]
        self.rng.bit_generator.state = json.loads(st["rng"])
        self.opt = self.make_optimizer()
        if "opt" in st:
            self.opt.load_state_dict(st["opt"])
        if self.memory is not None and "memory" in st:
            self.memory.load_state(st["memory"])
            self.memory.rng.bit_generator.state = json.loads(st["memory_rng"])
