"""Typed records that cross module boundaries: what a result *is*, with documented fields and units,
turned into JSON only at the edges (the log, the socket, summary.json, checkpoints). Standard
library only: control commands and the daemon's event loop import them without torch or numpy."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Optional


@dataclass(frozen=True)
class Position:
    """Where training stands in a stream: task ``task``, epoch ``epoch``, ``batch`` batches of that
    epoch done. A checkpoint stores it; a resume continues from it."""

    task: int = 0
    epoch: int = 0
    batch: int = 0

    @classmethod
    def start_of(cls, task: int) -> "Position":
        """The first step of ``task``."""
        return cls(task, 0, 0)

    def within(self, task: int) -> "Position":
        """This position if it lies in ``task``, else the start of ``task``."""
        return self if self.task == task else Position.start_of(task)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Position":
        """From a checkpoint's or a client's ``{"task", "epoch", "batch"}`` (a Position passes through)."""
        if isinstance(d, Position):
            return d
        return cls(int(d.get("task", 0)), int(d.get("epoch", 0)), int(d.get("batch", 0)))


def as_dict(rec) -> dict:
    """A record as the JSON-able dict sent at the edges (a plain dict passes through)."""
    if rec is None or isinstance(rec, dict):
        return rec
    to = getattr(type(rec), "to_dict", None)
    return to(rec) if to is not None else asdict(rec)


@dataclass
class TaskRecord:
    """What the learner measured of one finished task (``Learner.finish_task``): one metrics.jsonl line,
    one ``task_end`` event, one entry of the summary's ``per_task``.

    Energy is the task's own window: ingest, training and the memory update, not the evaluation (J;
    None when the meter could not resolve it). Times are wall seconds. A controller that tunes the
    run (Miro) sets the three fields at the end in its ``task_end`` hook; left None they are not
    written."""

    task: int
    acc: list  # accuracy (0..1) on the test set of each task 0..task after training this one; None: no test samples
    avg_acc: Optional[float]  # mean of the known entries of ``acc``
    wall_s: float  # the energy window's start to the end of the memory update, s (no profiling; resumed: both parts)
    train_s: float  # of which in training steps, s
    train_samples: int  # samples trained on (epochs x task size, or the online batches)
    train_samples_per_s: Optional[float]  # train_samples / train_s
    energy_j: Optional[float]  # the task window's energy, J (less what a controller counts as profiling)
    energy_components_j: dict  # component (cpu, dram, gpu, soc, board) -> J or None
    energy_provenance: str  # how each component was measured or estimated
    energy_warnings: list  # what the meter could not do in this window
    peak_rss_mb: float  # the process's peak resident set so far, MiB
    peak_anon_rss_mb: float  # its peak anonymous (heap) resident set so far, MiB
    flash_records: int  # training samples in the flash tier after the task
    torch_threads: int  # intra-op threads the task trained with
    strategy: dict = field(default_factory=dict)  # the strategy's ``stats()``: memory, skipped_steps, swap, ...
    before_restart: Optional[dict] = None  # a task resumed mid-way: what was metered before the restart
    reaction_profiling_j: Optional[float] = None  # controller: mid-task profiling moved out of energy_j, J
    profiling_energy_j: Optional[float] = None  # controller: this task's profiling energy, J
    knobs: Optional[dict] = None  # controller: the knobs the task ended with
    budget: Optional[dict] = None  # under an energy budget: the task's joules by kind, and whether the guard tripped

    _FIXED = ("task", "acc", "avg_acc", "wall_s", "train_s", "train_samples", "train_samples_per_s", "energy_j",
              "energy_components_j", "energy_provenance", "energy_warnings", "peak_rss_mb", "peak_anon_rss_mb",
              "flash_records", "torch_threads")
    _TAIL = ("before_restart", "reaction_profiling_j", "profiling_energy_j", "knobs", "budget")

    def to_dict(self) -> dict:
        """The JSON line: the fixed fields, the strategy's stats flat beside them, then what is set of the rest."""
        out = {k: getattr(self, k) for k in self._FIXED}
        out.update(self.strategy)
        out.update({k: getattr(self, k) for k in self._TAIL if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TaskRecord":
        """From a checkpoint's JSON (a record of an older version lacks some fields: they read None)."""
        if isinstance(d, TaskRecord):
            return d
        known = set(cls._FIXED) | set(cls._TAIL)
        return cls(**{k: d.get(k) for k in cls._FIXED}, **{k: d[k] for k in cls._TAIL if k in d},
                   strategy={k: v for k, v in d.items() if k not in known})


@dataclass
class Candidate:
    """One arm a Miro round can choose: profiled now, or (bandit) the mean of its recent profiles."""

    knobs: Any  # the arm: miro_runtime.control.knobs.Knobs (hashable, ``key()`` names it)
    acc: float  # accuracy (0..1) on the round's held-out validation slice
    joules: float  # predicted training energy of the whole task at these knobs, J
    seconds: float  # predicted training time of the whole task, s
    profile_j: float = 0.0  # what profiling it cost this round, J (0: taken from the window)
    n_val: Optional[int] = None  # validation samples behind ``acc``; None: ties are not broken by its error
    from_window: bool = False  # the mean of the sliding window, not profiled this round

    def to_dict(self) -> dict:
        """The candidate as a decision lists it."""
        return {"knobs": self.knobs.key(), "acc": self.acc, "predicted_task_j": self.joules,
                "profile_j": self.profile_j, "from_window": self.from_window}


@dataclass
class Decision:
    """One Miro decision: a round at a task boundary (or asked for), or a mid-task reaction to a
    resource pressure. Kept in the controller's state (checkpoints), the summary's ``miro_decisions``
    and one ``miro_decision`` event each."""

    task: int
    rule: str  # the selection rule that chose (choices.MIRO_RULES)
    search: str  # grid | bandit
    winner: str  # the knobs adopted, as Knobs.key()
    candidates: list  # the arms chosen among, as ``Candidate.to_dict()`` gives them
    not_profiled: list  # [{"knobs": key, "why": str}]: arms left out of the round and why
    profiling_energy_j: float  # what the decision's profiling cost, J
    budget_j: Optional[float]  # the profiling cap of the task, J (None before a task's energy is known)
    provenance: str  # the meter's provenance of those joules
    tie: Optional[str] = None  # task 0: how the tie between arms no profile tells apart was broken
    mid_task: bool = False  # a reaction to a resource pressure, not a boundary round
    trigger: Optional[dict] = None  # reaction: pressure -> why it fired
    how: Optional[str] = None  # reaction: how the winner was chosen
    resources: Optional[dict] = None  # reaction: the resource snapshot that fired it
    energy_budget: Optional[dict] = None  # under a user's budget: what the task had left, the reserve, how chosen
    predicted: Optional[dict] = None  # the winner's predicted task energy (J) and accuracy, checked at the task's end

    def to_dict(self) -> dict:
        out: dict = {"task": self.task}
        if self.tie:
            out["tie"] = self.tie
        if self.mid_task:
            out.update(mid_task=True, trigger=self.trigger, how=self.how, resources=self.resources)
        out.update(rule=self.rule, search=self.search, winner=self.winner, candidates=self.candidates,
                   not_profiled=self.not_profiled, profiling_energy_j=self.profiling_energy_j,
                   budget_j=self.budget_j, provenance=self.provenance)
        out.update({k: v for k, v in (("energy_budget", self.energy_budget), ("predicted", self.predicted)) if v})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        """From a checkpoint's JSON (what a field did not exist for yet reads as its default)."""
        if isinstance(d, Decision):
            return d
        return cls(**{f.name: d.get(f.name, None if f.default is MISSING else f.default) for f in fields(cls)})
