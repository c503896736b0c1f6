"""Class-aligned federated averaging (FedAvg, McMahan et al. 2017, with the output layer aligned by class): boards
of a class-incremental fleet meet their classes in different orders, so row i of one board's head is not row i
of another's. A global registry gives every client label a slot; shared layers average weighted by each
board's samples, each head row weighted by that class's samples on the boards that have it (a class one board
knows keeps that board's row exactly). A reply whose shapes do not fit is rejected by name, never averaged:
stock FedAvg broadcasts a 1-row head into a 10-row one without a word.

numpy only: the server's ServerApp and the tests use it without torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


class ReplyError(ValueError):
    """A board's reply that cannot be aggregated; the message names the board and what is wrong."""


@dataclass
class BoardUpdate:
    """One board's reply to a training round.

    ``labels[i]`` is the client label of row i of every array named in ``head`` (axis 0: one row per class,
    in the board's own order); ``counts[i]`` the training samples of that class the board holds; every
    other array is shared and averaged by ``samples`` (default: the sum of ``counts``)."""
    board: str
    arrays: Dict[str, np.ndarray]
    labels: List[int]
    counts: List[int]
    head: Tuple[str, ...]
    samples: Optional[int] = None

    def check(self) -> None:
        """Refuse a reply that contradicts itself, naming the board and the field."""
        who = f"board {self.board!r}"
        if len(set(self.labels)) != len(self.labels):
            dup = [v for v, n in Counter(self.labels).items() if n > 1]
            raise ReplyError(f"{who}: labels {dup} appear more than once in its label map")
        if len(self.counts) != len(self.labels):
            raise ReplyError(f"{who}: {len(self.counts)} class counts for {len(self.labels)} labels")
        if any(int(c) < 0 for c in self.counts):
            raise ReplyError(f"{who}: class counts must be >= 0, got {list(self.counts)}")
        if self.samples is not None and self.samples < 0:
            raise ReplyError(f"{who}: samples must be >= 0, got {self.samples}")
        missing = [k for k in self.head if k not in self.arrays]
        if missing:
            raise ReplyError(f"{who}: head arrays {missing} are not in its reply")
        for k in self.head:
            a = self.arrays[k]
            if a.ndim < 1 or a.shape[0] != len(self.labels):
                raise ReplyError(f"{who}: head array {k!r} has shape {list(a.shape)}: axis 0 must have one row per "
                                 f"class ({len(self.labels)})")

    @property
    def weight(self) -> int:
        return int(self.samples if self.samples is not None else sum(int(c) for c in self.counts))


@dataclass
class ClassRegistry:
    """Client label -> global slot, in order of first report (the server's, kept across rounds)."""
    labels: List[int] = field(default_factory=list)

    def slot(self, label: int) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            self.labels.append(int(label))
            return len(self.labels) - 1

    def slots(self, labels: Sequence[int]) -> List[int]:
        return [self.slot(int(v)) for v in labels]


@dataclass
class GlobalModel:
    """The round's result: shared arrays, head arrays with one row per global slot, the slots' client labels
    and summed counts, and the replies left out with why."""
    shared: Dict[str, np.ndarray]
    head: Dict[str, np.ndarray]
    labels: List[int]
    counts: List[int]
    boards: List[str]
    rejected: Dict[str, str]

    def for_board(self, labels: Sequence[int]) -> Tuple[Dict[str, np.ndarray], List[int]]:
        """What a board gets back: every array, its head rows for its own classes in its own order, then
        the rows of classes it does not know yet in global order (it may adopt them) -> (arrays, labels)."""
        own = [int(v) for v in labels]
        unknown = [v for v in own if v not in self.labels]
        if unknown:
            raise ReplyError(f"labels {unknown} are not in the global registry (it holds {self.labels})")
        order = own + [v for v in self.labels if v not in own]
        idx = np.array([self.labels.index(v) for v in order], dtype=np.int64)
        out = dict(self.shared)
        out.update({k: a[idx] for k, a in self.head.items()})
        return out, order


def _signature(u: BoardUpdate) -> Dict[str, Tuple[Tuple[int, ...], str, str]]:
    """Per array: its shape (a head array's without axis 0, which counts the board's classes), its kind
    (head or shared) and dtype: what must be the same on every board for an average to mean anything."""
    return {k: (tuple(a.shape[1:]) if k in u.head else tuple(a.shape), "head" if k in u.head else "shared",
                str(a.dtype)) for k, a in u.arrays.items()}


def _expected(updates: List[BoardUpdate]) -> Dict[str, Tuple[Tuple[int, ...], str, str]]:
    """The signature most replies carry; a tie goes to the board whose name sorts first, so the choice
    never depends on the order replies arrived in."""
    votes: Counter = Counter()
    sigs = {}
    for u in sorted(updates, key=lambda u: u.board):  # a Counter keeps first-seen order; max keeps the first
        key = tuple(sorted(_signature(u).items()))
        votes[key] += 1
        sigs[key] = _signature(u)
    return sigs[max(votes, key=votes.get)] if votes else {}


def _misfit(u: BoardUpdate, expect: dict) -> Optional[str]:
    """Why ``u`` does not fit the expected signature (the first difference, by name), or None."""
    mine = _signature(u)
    who = f"board {u.board!r}"
    missing, extra = sorted(set(expect) - set(mine)), sorted(set(mine) - set(expect))
    if missing:
        return f"{who}: arrays {missing} are missing from its reply (the other boards send them)"
    if extra:
        return f"{who}: arrays {extra} are in its reply and in no other board's"
    for k in sorted(expect):
        (shape, kind, dtype), (m_shape, m_kind, m_dtype) = expect[k], mine[k]
        if kind != m_kind:
            return f"{who}: array {k!r} is a {m_kind} array there, a {kind} array on the other boards"
        if shape != m_shape or dtype != m_dtype:
            want = f"[rows, {', '.join(map(str, shape))}]" if kind == "head" else list(shape)
            return f"{who}: array {k!r} has shape {list(u.arrays[k].shape)} {m_dtype}, the others {want} {dtype}"
    return None


def aggregate(updates: Sequence[BoardUpdate], registry: ClassRegistry, min_boards: int = 1) -> GlobalModel:
    """Class-aligned FedAvg over the replies that fit. A reply that contradicts itself or whose array names,
    shapes or dtypes differ from what most replies carry is left out (``rejected``, with the reason); fewer
    than ``min_boards`` replies left is a ReplyError (the round fails by name, nothing averaged)."""
    rejected: Dict[str, str] = {}
    ok: List[BoardUpdate] = []
    for u in updates:
        if u.board in rejected or any(o.board == u.board for o in ok):
            rejected[u.board] = f"board {u.board!r} replied more than once in one round; none of its replies is used"
            ok = [o for o in ok if o.board != u.board]
            continue
        try:
            u.check()
            ok.append(u)
        except ReplyError as e:
            rejected[u.board] = str(e)
    expect = _expected(ok)
    fit = []
    for u in ok:
        problem = _misfit(u, expect)
        if problem:
            rejected[u.board] = problem
        else:
            fit.append(u)
    if len(fit) < min_boards:
        why = "; ".join(f"{b}: {r}" for b, r in sorted(rejected.items())) or "no replies"
        raise ReplyError(f"{len(fit)} usable replies, fewer than the round's minimum of {min_boards} ({why})")
    for u in fit:
        registry.slots(u.labels)
    total = sum(u.weight for u in fit)
    shared: Dict[str, np.ndarray] = {}
    head: Dict[str, np.ndarray] = {}
    for k, (_, kind, dtype) in expect.items():
        if kind == "shared":
            if total > 0:
                acc = sum(u.arrays[k].astype(np.float64) * (u.weight / total) for u in fit)
            else:  # no samples anywhere: the plain mean
                acc = sum(u.arrays[k].astype(np.float64) for u in fit) / len(fit)
            shared[k] = acc.astype(dtype)
    # head rows: only the slots some board reported this round (a slot registered earlier whose boards are
    # all missing now has no weights to send back); each row weighted by its class's samples per board
    present = sorted({s for u in fit for s in registry.slots(u.labels)})
    pos = {s: i for i, s in enumerate(present)}
    counts = np.zeros(len(present), dtype=np.int64)
    rows = {u.board: np.asarray([pos[s] for s in registry.slots(u.labels)], dtype=np.int64) for u in fit}
    for u in fit:
        np.add.at(counts, rows[u.board], np.asarray(u.counts, dtype=np.int64))
    for k, (shape, kind, dtype) in expect.items():
        if kind != "head":
            continue
        tail = (1,) * len(shape)
        num = np.zeros((len(present), *shape), dtype=np.float64)
        plain = np.zeros_like(num)
        seen = np.zeros(len(present), dtype=np.int64)
        for u in fit:
            a = u.arrays[k].astype(np.float64)
            num[rows[u.board]] += a * np.asarray(u.counts, dtype=np.float64).reshape(-1, *tail)
            plain[rows[u.board]] += a
            seen[rows[u.board]] += 1
        den = counts.astype(np.float64)
        untrained = den == 0  # a class no board holds samples of yet: the plain mean of its rows
        num[untrained], den[untrained] = plain[untrained], seen[untrained]
        head[k] = (num / den.reshape(-1, *tail)).astype(dtype)
    return GlobalModel(shared=shared, head=head, labels=[registry.labels[s] for s in present],
                       counts=[int(c) for c in counts], boards=[u.board for u in fit], rejected=rejected)
