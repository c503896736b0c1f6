"""mirod's RPC methods, one coroutine each, like gunicorn's ctl/handlers.py: typed parameters
declared once in the signature (server.py checks a request against them and maps every failure to
an error code), one change of state, a dict back. Blocking work (the session, the flash tier, a
generation) runs in the daemon's thread pools so the event loop always answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

from msgspec import Meta

from miro_runtime.choices import LOG_LEVELS
from miro_runtime.daemon.config import (LIVE, ConfigError, DaemonConfig, default_toml, overrides_path, read_overrides,
                                         write_overrides)
from miro_runtime.daemon.files import SampleError, decode_array, file_batch_id, read_folder, read_npz, sha256_of
from miro_runtime.log import select
from miro_runtime.records import as_dict
from miro_runtime.wire import protocol as P
from miro_runtime.wire.protocol import DTYPES

if TYPE_CHECKING:
    from miro_runtime.daemon.process import Daemon

# who may call what (server.py decides it from the peer's credentials). kv_generate is inference: it
# changes no learning state (it may store prompt prefixes in the KV namespace)
READ_ONLY = frozenset({"ping", "status", "eval", "predict", "logs", "config_show", "task_list", "kv_generate",
                       "budget_show"})
MUTATING = frozenset({"ingest", "task_end", "config_set", "config_unset", "config_reload", "profile", "checkpoint",
                      "budget_set", "shutdown", "fleet_train", "fleet_evaluate"})
# methods that refuse parameters they do not declare; the others ignore extras (the client's ingest sends `wait`)
STRICT = frozenset({"kv_generate", "budget_set", "fleet_train", "fleet_evaluate"})

# a task's state in task_list
TASK_OPEN, TASK_ENDED, TASK_TRAINED, TASK_FAILED = "open", "ended", "trained", "failed"
TASK_RESULT = ("acc", "avg_acc", "energy_j", "energy_provenance", "budget")  # what task_end --wait adds once trained
# the [learning] keys of the energy budget (engine/budget.py); budget_set writes them together
ENERGY_KEY, POWER_KEY, BUCKET_KEY = "learning.energy_budget_j", "learning.power_budget_w", "learning.power_bucket_s"

# parameter types; a Meta description is the words an error uses for the type
Count = Annotated[int, Meta(ge=1)]
UnixSeconds = Annotated[float, Meta(description="unix seconds")]
Shape = Annotated[list[Annotated[int, Meta(gt=0)]],
                  Meta(min_length=4, max_length=4, description="[n, c, h, w] of positive integers")]
Dtype = Literal[DTYPES]
Base64 = Annotated[str, Meta(description="a base64 string of the raw C-order bytes")]
Labels = Annotated[list[int], Meta(description="integers (a list, one per sample)")]
BatchId = Annotated[str, Meta(min_length=1, max_length=128, description="a string of 1 to 128 bytes")]
TableKey = Annotated[str, Meta(description="a string 'table.key'")]
Positive = Annotated[float, Meta(gt=0)]
Arrays = Annotated[dict[str, str], Meta(description="an object of array name -> base64 of its .npy bytes")]
Steps = Annotated[int, Meta(ge=0, le=10000)]
Round = Annotated[int, Meta(ge=0)]


class Handlers:
    """Every RPC method of mirod; ``d`` is the running daemon (process.py) whose session, pools,
    configuration and log they use."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self._requests = itertools.count()  # numbers the energy windows of requests: each has its own

    async def _work(self, fn, *args, pool=None):
        """``fn(*args)`` in a worker thread (the I/O pool unless another is named)."""
        return await asyncio.get_running_loop().run_in_executor(pool or self.d.pool, fn, *args)

    def _metered(self, kind: str, fn, *args):
        """``fn(*args)`` in an energy window of its own, its joules booked on the energy budget as ``kind``
        against the open task -- a request that fails spent them too. Blocking: run it in the worker
        thread, so a request's wait in the queue is not metered. Unmetered before the first sample (no
        learner, no meter and no budget yet)."""
        s = self.d.session
        lr = s.learner
        if lr is None or lr.guard is None:
            return fn(*args)
        window = f"{kind}-{next(self._requests)}"
        lr.meter.begin_window(window)
        try:
            return fn(*args)
        finally:
            lr.guard.book(kind, lr.meter.end_window(window).joules, max(s.open_task, 0))

    # ------------------------------------------------------------------ read-only
    async def ping(self) -> dict:
        return {"pong": True, "pid": os.getpid()}

    async def status(self) -> dict:
        d = self.d
        st = d.session.status()
        st["kv"] = {"enabled": d.cfg.kv.enabled, **d.kv.status()}
        st["fleet"] = d.fleet.status()
        st["daemon"] = {"pid": os.getpid(), "uptime_s": round(time.time() - d.started, 3), "socket": d.sock_path,
                        "state_dir": d.state_dir, "logs_dir": d.logs_dir, "open_connections": d.server.conns,
                        **d.server.counters}
        return st

    async def eval(self) -> dict:
        return await self._work(self.d.session.evaluate)

    async def task_list(self) -> dict:
        s = self.d.session
        lr = s.learner
        tasks = []
        recs = {r.task: as_dict(r) for r in lr.per_task} if lr is not None else {}  # failed tasks have none
        for t, spec in enumerate(s.stream.tasks if s.stream else []):
            rec = recs.get(t)
            state = (TASK_FAILED if t in s.ledger.failed else TASK_TRAINED if t < s.done else
                     TASK_ENDED if t in s.ended else TASK_OPEN)
            tasks.append({"task": t, "classes": [s.stream.inv[c] for c in spec.classes], "state": state,
                          "test_samples": int(len(s.stream.test[t][1])),
                          "avg_acc": rec and rec["avg_acc"], "energy_j": rec and rec["energy_j"],
                          "budget": rec and rec.get("budget")})
        return {"tasks": tasks}

    async def predict(self, shape: Shape, data: Base64, dtype: Dtype = "uint8", k: Count = 3) -> dict:
        """The top-k labels of ``shape`` images, from the last trained model's snapshot."""
        s = self.d.session
        return await self._work(self._metered, "predict", lambda: s.predict(decode_array(shape, dtype, data), k),
                                pool=self.d.predict_pool)

    async def kv_generate(self, prompt: str, max_new_tokens: int = 32, policy: Optional[str] = None,
                          hot_budget: Optional[int] = None, slo_tpot_ms: Optional[float] = None,
                          slo_tbt_ms: Optional[float] = None) -> dict:
        """Greedy generation through the tiered KV cache, within the [kv] table's RAM and flash share: lossless
        requests decode together (their TPOT/TBT targets: these, or kv.slo_tpot_ms / kv.slo_tbt_ms); a lossy
        policy or a hot budget of its own runs alone between them."""
        d = self.d
        if not d.cfg.kv.enabled:
            raise P.ProtocolError(P.NOT_READY, "KV generation is off (kv.enabled = false)")
        # bad input answered at once (a ValueError here is INVALID_PARAMS), not after the queue
        fut = d.kv.submit(prompt, max_new_tokens, policy, hot_budget, slo_tpot_ms, slo_tbt_ms)
        res = await asyncio.wrap_future(fut)
        d.log.event("kv_generate", policy=res["policy"], prompt_tokens=res["prompt_tokens"],
                    new_tokens=res["new_tokens"], tokens_per_s=res["tokens_per_s"], ttft_s=res["ttft_s"],
                    hot_bytes=res["hot_bytes"], cold_bytes=res["cold_bytes"], prefix_hits=res["prefix_hits"],
                    served=res["served"], queued_s=res.get("queued_s"), tpot_ms=res.get("tpot_ms"),
                    tpot_met=res.get("tpot_met"), tbt_met=res.get("tbt_met"), deferrals=res.get("deferrals"))
        return res

    async def budget_show(self) -> dict:
        """The energy budget (Session.status's ``budget``: None without one) and its three settings."""
        lcfg = self.d.cfg.learning
        return {"budget": self.d.session.status()["budget"],
                "config": {k: getattr(lcfg, k.split(".", 1)[1]) for k in (ENERGY_KEY, POWER_KEY, BUCKET_KEY)}}

    async def config_show(self, defaults: bool = False) -> dict:
        cfg = self.d.cfg
        return {"config": cfg.to_dict(), "sources": cfg.source, "live_keys": {k: sorted(v) for k, v in LIVE.items()},
                "defaults_toml": default_toml() if defaults else None}

    async def logs(self, level: Literal[LOG_LEVELS] = "debug", component: Optional[str] = None,
                   task: Optional[int] = None, since: Optional[UnixSeconds] = None,
                   until: Optional[UnixSeconds] = None, limit: Count = 200, after: Optional[int] = None) -> dict:
        """Filtered lines of the JSON log: level (minimum), component, task, since/until, limit (the last
        N matches), after (a byte offset: lines appended since, for follow)."""
        import aiofiles
        path = os.path.join(self.d.logs_dir, "mirod.jsonl")
        async with aiofiles.open(path, "rb") as fh:
            if after is not None and after >= 0:
                size = os.path.getsize(path)
                await fh.seek(after if after <= size else 0)  # a rotation since: start the new file over
            data = await fh.read(8 << 20)
            offset = await fh.tell()
        out = select(data.splitlines(), level, component, task, since, until)
        return {"lines": out[-limit:], "offset": offset, "path": path}

    # ------------------------------------------------------------------ mutating
    async def ingest(self, task: Optional[int] = None, split: str = "train", path: Optional[str] = None,
                     shape: Optional[Shape] = None, dtype: Dtype = "uint8", data: Optional[Base64] = None,
                     labels: Optional[Labels] = None, batch_id: Optional[BatchId] = None) -> dict:
        """Samples into ``task``: arrays (shape, dtype, data, labels), or a ``path`` on the daemon's
        machine (see ingest_file). Returns once they are durable. A ``batch_id`` already committed
        stores nothing and answers the original acknowledgement with ``duplicate: true``."""
        if self.d.stopping.is_set():
            raise P.ProtocolError(P.STOPPING, "the daemon is stopping; nothing was stored")
        if path is not None:
            res = await self._work(self.ingest_file, path, task, split, batch_id)
        else:
            missing = [n for n, v in (("task", task), ("shape", shape), ("data", data), ("labels", labels))
                       if v is None]
            if missing:
                raise P.ProtocolError(P.INVALID_PARAMS, f"an ingest of arrays needs task, shape, data and labels "
                                                        f"(or a path); missing: {', '.join(missing)}")
            s = self.d.session
            res = await self._work(lambda: s.ingest(task, split, decode_array(shape, dtype, data), labels, batch_id))
        # TEST-ONLY fault injection (tests/daemon/test_exactly_once.py): MIRO_FAULT=after_ingest_commit makes
        # mirod SIGKILL itself between the commit and the acknowledgement. Unset in every real deployment.
        if os.environ.get("MIRO_FAULT") == "after_ingest_commit":
            os.kill(os.getpid(), signal.SIGKILL)
        return res

    def ingest_file(self, path: str, task: Optional[int] = None, split: Optional[str] = None,
                    batch_id: Optional[str] = None) -> dict:
        """An .npz (into its own task and split, else ``task``/``split``, else the open task's train
        split) or an image folder (each of its tasks ingested and ended, after the open one). An
        .npz is one batch, ingested exactly once: its batch id is ``batch_id`` or else the file's
        own (its sha256 and sample range, as ``miro ingest`` names a batch). Blocking."""
        s = self.d.session
        if not os.path.exists(path):
            raise SampleError(f"path {path} does not exist (on the daemon's machine)")
        if os.path.isdir(path):
            first = s.ledger.next_task()
            out = {"acked": 0, "tasks": []}
            for i, ft in enumerate(read_folder(path)):
                r = s.ingest(first + i, "train", ft.x, ft.labels)
                if ft.test_labels:
                    s.ingest(first + i, "test", ft.test_x, ft.test_labels)
                s.end_task(first + i)
                out["acked"] += r["acked"] + len(ft.test_labels)
                out["tasks"].append(first + i)
            return out
        npz = read_npz(path)
        t = npz.task if npz.task is not None else task if task is not None else s.ledger.next_task()
        return s.ingest(t, npz.split if npz.split is not None else split or "train", npz.x, npz.y,
                        batch_id=batch_id or file_batch_id(sha256_of(path), 0, len(npz.x)))

    async def task_end(self, task: Optional[int] = None, wait: bool = False, timeout: float = 600.0) -> dict:
        """End ``task`` (default: the open one); with ``wait``, return once it is trained and evaluated
        (or ``timeout`` seconds passed: ``trained`` says which). A task whose training failed is an
        error naming its cause, at once."""
        s = self.d.session
        task = s.open_task if task is None else task
        res = await self._work(s.end_task, task)
        if wait:
            t0 = time.monotonic()
            while s.done <= task and time.monotonic() - t0 < timeout and not self.d.stopping.is_set():
                await asyncio.sleep(0.05)
            if task in s.ledger.failed:
                err = s.trainer.last_error or {}
                raise P.ProtocolError(P.CONFLICT, f"task {task} ended, but its training failed "
                                                  f"({err.get('error', 'see miro logs')}); its samples stay "
                                                  f"stored: see miro logs --component trainer")
            res["trained"] = s.done > task
            rec = next((as_dict(r) for r in s.learner.per_task if r.task == task), None) if res["trained"] else None
            if rec:
                res.update({k: rec.get(k) for k in TASK_RESULT})
        return res

    async def checkpoint(self) -> dict:
        return await self._work(self.d.session.checkpoint)

    async def profile(self, timeout: float = 600.0) -> dict:
        """A Miro round now, on the open task's samples so far; the decision."""
        s = self.d.session
        if not self.d.cfg.learning.miro:
            raise P.ProtocolError(P.NOT_READY, "Miro is off (learning.miro = false): nothing to profile")
        if s.learner is None or not s.learner.per_task:
            raise P.ProtocolError(P.NOT_READY, "Miro profiles after the first task has trained")
        return as_dict(await asyncio.wait_for(asyncio.wrap_future(s.request_profile()), timeout=timeout))

    async def fleet_train(self, server_round: Round = 0, arrays: Optional[Arrays] = None,
                          labels: Optional[Labels] = None, steps: Optional[Steps] = None,
                          timeout: Positive = 600.0, rounds: Round = 0) -> dict:
        """A fleet round (the ClientApp shim's train message): adopt the fleet's model when sent, train
        ``steps`` (default fleet.local_steps) on this board's stored samples, answer the model, its label map
        and class counts. Refused, saying why, when the board is busy, paused, out of budget or skips the round.
        ``rounds``: how many the server plans (``miro status`` shows the next one this board expects)."""
        return await self._fleet("train", server_round, rounds, arrays, labels, steps, timeout)

    async def fleet_evaluate(self, server_round: Round = 0, arrays: Optional[Arrays] = None,
                             labels: Optional[Labels] = None, timeout: Positive = 600.0, rounds: Round = 0) -> dict:
        """Adopt the fleet's aggregate (rows aligned by label, new classes added) and answer the accuracy on this
        board's own test samples."""
        return await self._fleet("evaluate", server_round, rounds, arrays, labels, 0, timeout)

    async def _fleet(self, kind: str, server_round: int, rounds: int, arrays, labels, steps, timeout: float) -> dict:
        d = self.d
        f = d.fleet
        if (arrays is None) != (labels is None):
            raise P.ProtocolError(P.INVALID_PARAMS, "arrays and labels go together (the head's rows are labelled)")
        if d.stopping.is_set():
            raise P.ProtocolError(P.STOPPING, "the daemon is stopping")
        if server_round:
            f.scheduled(server_round, rounds)
        every = d.cfg.fleet.join_every
        if server_round and server_round % every:
            f.refused(kind, server_round, f"this board joins every {every}th round (fleet.join_every)")
            raise P.ProtocolError(P.BUSY, f"round {server_round} skipped: this board joins every {every}th round "
                                          f"(fleet.join_every = {every})")
        steps = d.cfg.fleet.local_steps if steps is None else steps
        f.received(sum(len(v) for v in (arrays or {}).values()))
        try:
            fut = d.session.fleet_round(kind, arrays, labels, steps, server_round)
            out = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=timeout)
        except Exception as e:
            f.refused(kind, server_round, str(e))
            raise
        f.answered(kind, server_round, out)
        return out

    def _set_keys(self, values: dict, origin: str) -> tuple:
        """Set {``table.key``: value} together: each value checked against its key, the whole configuration
        validated with all of them (a change valid only as a whole, a power budget for an energy budget,
        is one), kept in overrides.toml, applied now where the key is live -> (overrides path, {key: new}).
        Nothing is kept or applied when a check fails."""
        d = self.d
        typed = {}
        for key, value in values.items():
            table, name, _, new = DaemonConfig().set(key, value, origin)  # the value alone, against its key
            typed[key] = (table, name, new)
        path = overrides_path(d.cfg)
        ov = read_overrides(path)
        trial = d.load_config()  # the whole configuration must still validate before the overrides are kept
        for key, (table, name, new) in typed.items():
            ov.setdefault(table, {})[name] = new
            trial.set(key, new, origin)
        trial.validate()
        write_overrides(path, ov)
        d.apply_all([(table, name, new) for table, name, new in typed.values() if name in LIVE[table]])
        return path, {key: new for key, (_, _, new) in typed.items()}

    async def config_set(self, key: TableKey, value: Any = None) -> dict:
        """Set ``table.key``: checked, kept in overrides.toml, applied now where it can be."""
        path, new = self._set_keys({key: value}, "config set")
        live = key.split(".", 1)[1] in LIVE[key.split(".", 1)[0]]
        self.d.log.event("config_set", key=key, value=new[key], live=live)
        return {"key": key, "value": new[key], "persisted": path, "applied_live": live, "restart_needed": not live}

    async def budget_set(self, energy_j: Optional[Positive] = None, power_w: Optional[Positive] = None,
                         bucket_s: Optional[Positive] = None, none: bool = False) -> dict:
        """The energy budget: ``energy_j`` joules per task, or an average of ``power_w`` watts (a bucket of
        ``bucket_s`` seconds of it), or ``none``; ``bucket_s`` alone resizes the power budget's bucket.
        Kept in overrides.toml as learning.energy_budget_j / power_budget_w / power_bucket_s (as
        `config set` keeps them: SIGHUP and restarts keep it); the trainer adopts it before its next step."""
        given = [n for n, v in (("energy_j", energy_j), ("power_w", power_w), ("none", none or None)) if v is not None]
        if len(given) > 1 or (none and bucket_s is not None) or not (given or bucket_s is not None):
            raise P.ProtocolError(P.INVALID_PARAMS, "give one of energy_j (joules per task), power_w (average "
                                                    "watts, optionally with bucket_s) or none (no budget), or "
                                                    f"bucket_s alone; got {', '.join(given) or 'none of them'}")
        values = {ENERGY_KEY: energy_j, POWER_KEY: None} if energy_j is not None else \
            {POWER_KEY: power_w, ENERGY_KEY: None} if power_w is not None else \
            {ENERGY_KEY: None, POWER_KEY: None} if none else {}
        if bucket_s is not None:
            values[BUCKET_KEY] = bucket_s
        path, new = self._set_keys(values, "budget set")
        self.d.log.event("budget_set", component="daemon", **{k.split(".", 1)[1]: v for k, v in new.items()})
        return {"set": new, "persisted": path, "applies": "from the next training step",
                "budget": self.d.session.status()["budget"]}

    async def config_unset(self, key: TableKey) -> dict:
        """Drop ``table.key`` from overrides.toml: the file's (or the default) value applies again, now
        where the key is live, after a restart otherwise."""
        d = self.d
        table, name, _ = DaemonConfig().field_of(key, "config unset")
        path = overrides_path(d.cfg)
        before = read_overrides(path)
        ov = {t: {k: v for k, v in keys.items() if (t, k) != (table, name)} for t, keys in before.items()}
        removed = name in before.get(table, {})
        if removed:
            write_overrides(path, {t: keys for t, keys in ov.items() if keys})
            try:
                trial = d.load_config()  # the configuration without the override must still validate
            except ConfigError:
                write_overrides(path, before)
                raise
        else:
            trial = d.load_config()
        new = getattr(trial.section(table), name)
        changed = new != getattr(d.cfg.section(table), name)
        live = name in LIVE[table]
        if live and changed:
            d.apply(table, name, new)
        d.log.event("config_unset", key=key, value=new, removed=removed, live=live)
        return {"key": key, "value": new, "removed": removed, "persisted": path, "applied_live": live and changed,
                "restart_needed": changed and not live}

    async def config_reload(self) -> dict:
        return self.d.reload()

    async def shutdown(self) -> dict:
        self.d.stopping.set()
        return {"stopping": True}
