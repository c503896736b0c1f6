"""A board's side of a federated round (FedAvg's client, McMahan et al. 2017, class-aligned): the model's
arrays go out with the label map and per-class sample counts; the fleet's aggregate comes in aligned by client
label, and classes this board has not seen are adopted (their rows join its head, their labels its map). A few
local steps on the board's own stored samples run between. No flwr here: mirod's fleet_train / fleet_evaluate
call it, and the ClientApp shim forwards Flower's messages to them.

Arrays travel as .npy bytes (``np.save``; read back with ``allow_pickle=False``), the format Flower's
``Array`` already carries, so the shim passes them through without numpy. Runs in the trainer thread
(``Trainer.request``): it owns the model.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import time
from typing import Optional

import numpy as np

from miro_runtime.session.errors import SessionError
from miro_runtime.session.stream import LABELS_KEY, TASKS_KEY, TEST_NS

HEAD = ("head.fc.weight", "head.fc.bias")  # one row per class, in the board's internal (arrival) order
MAX_STEPS = 10_000


def encode(a: np.ndarray) -> str:
    """An array as base64 of its .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def decode(name: str, data: str) -> np.ndarray:
    """The array a request carries under ``name`` (base64 .npy); a clear error naming it otherwise."""
    try:
        raw = base64.b64decode(data, validate=True)
        a = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as e:
        raise SessionError("params", f"array {name!r} is not base64 of .npy bytes: {str(e)[:200]}") from None
    if a.dtype.kind != "f":
        raise SessionError("params", f"array {name!r} is {a.dtype}: the model's arrays are floating point")
    return a


def _model_arrays(lr) -> dict:
    """name -> tensor of every floating-point parameter and buffer the strategy trains (what a round moves)."""
    return {k: v for k, v in lr.strategy.model.state_dict().items() if v.is_floating_point()}


def export(session) -> dict:
    """The board's model for the fleet: arrays (base64 .npy), its client labels in head order, the stored
    training samples per class, and which arrays are the head."""
    lr, s = session.learner, session.stream
    np_arrays = {k: v.detach().cpu().numpy() for k, v in _model_arrays(lr).items()}
    arrays = {k: encode(a) for k, a in np_arrays.items()}
    counts = lr.flash.class_counts(lr.ns)
    per_class = [int(counts[c]) if c < len(counts) else 0 for c in range(len(s.inv))]
    rows = int(lr.strategy.model.head.num_classes)
    return {"arrays": arrays, "shapes": {k: list(a.shape) for k, a in np_arrays.items()},
            "dtypes": {k: str(a.dtype) for k, a in np_arrays.items()},
            "labels": list(s.inv[:rows]), "counts": per_class[:rows], "head": list(HEAD),
            "samples": int(sum(per_class))}


def _check_ready(session, what: str):
    lr = session.learner
    if lr is None or not lr.per_task:
        raise SessionError("not-ready", f"{what}: no task has trained on this board yet")
    if session.cfg.latent_replay:
        raise SessionError("not-ready", f"{what}: fleet rounds are not supported with learning.latent_replay "
                                        "yet (the latents' frozen part would have to match on every board)")
    if lr.in_task:
        raise SessionError("busy", f"{what}: task {session.trainer.pos.task} is training; the round is refused")
    if session.paused:
        raise SessionError("busy", f"{what}: training is paused ({session.paused})")
    lr.guard.sync(max(session.open_task, 0))  # a round is a step: a budget set since the last one is in force
    rem = lr.guard.budget.remaining(max(session.open_task, 0))
    if rem is not None and rem <= 0:
        raise SessionError("busy", f"{what}: the energy budget of task {max(session.open_task, 0)} is spent")


def load(session, arrays: dict, labels: list) -> dict:
    """Adopt the fleet's model: every shared array replaced, each head row put at its class's row (by client
    label), rows of classes this board has not seen appended (their labels join the map, durably, before the
    model uses them). Checked whole before anything changes; -> {"adopted": [labels]}."""
    import torch
    lr, s = session.learner, session.stream
    own = _model_arrays(lr)
    labels = [int(v) for v in labels]
    if len(set(labels)) != len(labels):
        raise SessionError("params", f"labels {labels} name a class more than once")
    missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
    if missing or extra:
        raise SessionError("params", "the fleet's arrays do not match this board's model: "
                                     + "; ".join(p for p in (missing and f"missing {missing}",
                                                             extra and f"unknown {extra}") if p))
    got = {k: decode(k, v) for k, v in arrays.items()}
    for k, a in got.items():
        want = tuple(own[k].shape)
        if k in HEAD:
            if a.ndim != len(want) or a.shape[0] != len(labels) or tuple(a.shape[1:]) != want[1:]:
                raise SessionError("params", f"head array {k!r} has shape {list(a.shape)}: it needs one row per "
                                             f"label ({len(labels)}) of shape {list(want[1:])}")
        elif tuple(a.shape) != want:
            raise SessionError("params", f"array {k!r} has shape {list(a.shape)}, this board's {list(want)}")
    adopted = [v for v in labels if v not in s.map]
    if len(s.inv) + len(adopted) > s.max_classes:
        raise SessionError("params", f"adopting {len(adopted)} classes would exceed max_classes={s.max_classes}")
    if adopted:
        _adopt(session, adopted)
    model = lr.strategy.model
    model.head.grow(len(s.inv))
    with torch.no_grad():
        params = model.state_dict()
        for k, a in got.items():
            t = torch.tensor(a).to(params[k].dtype)  # a copy: the decoded array may be read-only
            if k in HEAD:
                rows = torch.tensor([s.map[v] for v in labels], dtype=torch.long)
                params[k][rows] = t
            else:
                params[k].copy_(t)
    model.to(lr.strategy.device)
    lr.strategy.renew_optimizer()
    return {"adopted": adopted}


def _adopt(session, labels: list):
    """New client labels join the map as classes of the last trained task, the stored specs grow to hold
    them, and the map is committed in one transaction (a crash leaves the old map or the new, whole)."""
    from miro_runtime.engine.latent import replay_ns
    from miro_runtime.engine.learner import NS
    lr, s = session.learner, session.stream
    with session.lock:
        last = len(lr.per_task) - 1
        for v in labels:
            c = s.map[v] = len(s.inv)
            s.inv.append(v)
            s.tasks[last].classes.append(c)
        f = lr.flash
        for ns in dict.fromkeys((NS, replay_ns(session.cfg), TEST_NS)):
            f.declare_samples(ns, dataclasses.replace(f.spec(ns), num_classes=s.num_classes))
        meta = s.label_meta()
        f.set_metas({LABELS_KEY: meta[LABELS_KEY], TASKS_KEY: meta[TASKS_KEY]})


def train_local(session, steps: int, seed: int = 0) -> dict:
    """``steps`` SGD steps on batches drawn uniformly from every training sample the board has stored, with the
    softmax restricted to the classes the board holds samples of (FedRS, Li et al. 2021, at its limit): a
    board never pushes down the rows of classes it only adopted, whose owners train them, so the aggregate
    keeps every class calibrated. -> {"steps", "samples", "loss"}."""
    import torch
    import torch.nn.functional as F
    lr = session.learner
    strat = getattr(lr.strategy, "base", lr.strategy)  # CarM wraps the method whose model and optimizer train
    f, ns, bs = lr.flash, lr.ns, session.cfg.batch_size
    counts = f.class_counts(ns)
    owned = [c for c in range(len(counts)) if counts[c] > 0]
    if not owned:
        raise SessionError("not-ready", "no training samples stored on this board")
    ids = np.concatenate([f.class_ids(ns, c) for c in owned])
    cols = torch.tensor(owned, dtype=torch.long, device=strat.device)  # (C,) the head rows trained here
    pos = torch.full((max(owned) + 1,), -1, dtype=torch.long)
    pos[torch.tensor(owned)] = torch.arange(len(owned))  # internal id -> its column among the owned
    rng = np.random.default_rng([session.cfg.seed, seed])
    losses, n = [], 0
    strat.model.train()
    for _ in range(steps):
        b = f.read_batch(ns, np.sort(rng.choice(ids, size=min(bs, ids.size), replace=False)))
        x, y = torch.from_numpy(b["x"]).to(strat.device), pos[torch.from_numpy(b["labels"].astype(np.int64))]
        strat.opt.zero_grad(set_to_none=True)
        out = strat.model(x)[:, cols]  # (B, C): only the board's own classes compete
        losses.append(strat.step(F.cross_entropy(out, y.to(strat.device))))
        n += len(y)
    return {"steps": steps, "samples": n, "loss": float(np.nanmean(losses)) if losses else None}


def accuracy(session) -> dict:
    """Accuracy on the board's own stored test samples, every trained task, predicting among all its classes."""
    lr = session.learner
    row = lr.evaluate(upto=len(lr.per_task) - 1)
    ys = [len(session.stream.test[t][1]) for t in range(len(row))]
    known = [(a, n) for a, n in zip(row, ys) if a is not None and n]
    acc = sum(a * n for a, n in known) / sum(n for _, n in known) if known else None
    return {"acc": acc, "acc_per_task": row, "test_samples": int(sum(n for _, n in known))}


def round_job(session, kind: str, arrays: Optional[dict], labels: Optional[list], steps: int,
              server_round: int) -> dict:
    """One fleet request, run by the trainer: ``train`` (load the fleet's model if sent, ``steps`` local steps,
    reply the model) or ``evaluate`` (load it, answer the accuracy on the board's own test samples). Metered in
    an energy window of its own, booked as ``fleet``; the model is checkpointed and snapshot for predict."""
    what = f"fleet {kind} (round {server_round})"
    _check_ready(session, what)
    if not 0 <= steps <= MAX_STEPS:
        raise SessionError("params", f"steps must be 0 to {MAX_STEPS}, got {steps}")
    lr, t0 = session.learner, time.perf_counter()
    window = f"fleet-{kind}-{server_round}-{time.monotonic_ns()}"
    lr.meter.begin_window(window)
    joules = None
    try:
        adopted = load(session, arrays, labels or [])["adopted"] if arrays else []
        out: dict = {"round": server_round, "adopted": adopted}
        if kind == "train":
            out.update(train_local(session, steps, seed=server_round))
            out.update(export(session))
        else:
            out.update(accuracy(session))
        joules = lr.meter.end_window(window).joules
    except BaseException:
        lr.meter.cancel_window(window)
        raise
    lr.guard.book("fleet", joules, max(session.open_task, 0))
    session.trainer.checkpoint()
    session.trainer.snap()
    out.update(energy_j=joules, seconds=round(time.perf_counter() - t0, 4), classes=len(session.stream.inv))
    session.log.event("fleet_round", request=kind, round=server_round, adopted=adopted, classes=out["classes"],
                      energy_j=joules, seconds=out["seconds"],
                      **{k: out[k] for k in ("steps", "loss", "acc") if k in out})
    return out
