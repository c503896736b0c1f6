"""The trainer never wedges: a mode change across a restart applies at a safe point, and a job that
keeps failing is retried a bounded number of times, then its task is marked failed and the next trains."""
import json
import threading
import time

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.session import Session


def _data(classes, n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), rng.choice(classes, n).tolist()


def _start(cfg, scfg=None):
    s = Session(RunConfig(**cfg), scfg)
    s.open()
    th = threading.Thread(target=s.run_trainer, daemon=True)
    th.start()
    return s, th


def _wait(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_online_to_epochs_mid_task_restart_trains_to_the_end(tmp_path):
    base = dict(run_dir=str(tmp_path / "s"), epochs=1, strategy="er", flash_budget=None, batch_size=10)
    s, th = _start(dict(base, online=True))
    x, y = _data([0, 1])
    s.ingest(0, "train", x, y)  # part of task 0, trained online
    assert _wait(lambda: s.trainer.backlog.n == 0 and s.learner.steps > 0)
    s.stop()
    th.join(60)
    s.close()

    r, th = _start(dict(base, online=False))  # the same state dir, now in epoch mode
    try:
        x2, y2 = _data([2, 3], seed=1)
        r.ingest(0, "train", x2, y2)  # new classes 2 and 3 into the open task
        r.ingest(0, "test", x2[:20], y2[:20])
        r.end_task(0)
        assert _wait(lambda: r.done >= 1 or r.ledger.failed, 20), r.state
        assert r.done == 1 and not r.ledger.failed, r.status()
        assert r.learner.strategy.model.head.num_classes == 4
        assert r.status()["health"] == "ok" and r.trainer.errors == 0
        events = [json.loads(line) for line in open(tmp_path / "s" / "events.jsonl")]
        applied = [e for e in events if e["event"] == "config_applied"]
        assert len(applied) == 1 and applied[0]["changed"] == {"online": [True, False]} and applied[0]["task"] == 0
    finally:
        r.stop()
        th.join(60)
        r.close()


def fail_task_1(monkeypatch, retries: int):
    """`er` becomes a test-only strategy whose every step of task 1 raises; retries come quickly."""
    from miro_runtime.engine import strategies
    from miro_runtime.session import trainer as trainer_mod

    class FailsOnTask1(strategies.ER):
        def observe(self, x, y):
            if self.task == 1:
                raise RuntimeError("injected failure in task 1")
            return super().observe(x, y)
    monkeypatch.setitem(strategies.STRATEGIES, "er", FailsOnTask1)
    monkeypatch.setattr(trainer_mod, "TRAIN_RETRIES", retries)
    monkeypatch.setattr(trainer_mod, "RETRY_BACKOFF_S", 0.05)


def test_a_job_that_keeps_failing_is_retried_then_its_task_fails_and_the_next_trains(tmp_path, monkeypatch):
    fail_task_1(monkeypatch, retries=2)
    cfg = dict(run_dir=str(tmp_path / "s"), online=False, epochs=1, strategy="er", flash_budget=None, batch_size=10)
    s, th = _start(cfg)
    try:
        for t, classes in enumerate(([0, 1], [2, 3], [4, 5])):
            x, y = _data(classes, seed=t)
            s.ingest(t, "train", x, y)
            s.ingest(t, "test", x[:20], y[:20])
            s.end_task(t)
            assert _wait(lambda t=t: s.done > t), s.state
        events = [json.loads(line) for line in open(tmp_path / "s" / "events.jsonl")]
        errors = [e for e in events if e["event"] == "error" and e.get("component") == "trainer"]
        assert [e["attempt"] for e in errors] == [1, 2, 3]  # once per attempt: the first and 2 retries
        assert all(e["task"] == 1 and "injected failure" in e["error"] and "in observe" in e["where"] for e in errors)
        assert [e["retry_in_s"] for e in errors] == [0.05, 0.1, None]  # the back-off doubles
        assert [e["task"] for e in events if e["event"] == "task_failed"] == [1]
        assert [r.task for r in s.learner.per_task] == [0, 2]  # the next task trained
        st = s.status()
        assert st["health"] == "error" and st["failed_tasks"] == [1] and st["trainer_errors"] == 3
        assert "injected failure" in st["last_error"]["error"]
        assert s.ledger.state(1) == "failed" and s.learner.flash.class_counts("samples").sum() == 360  # still stored
    finally:
        s.stop()
        th.join(60)
        s.close()
    r = Session(RunConfig(**cfg))  # a restart knows task 1 failed and goes on after task 2
    r.open()
    try:
        assert r.ledger.failed == [1] and r.done == 3 and r.ledger.state(1) == "failed"
    finally:
        r.close()


def test_a_hung_step_reads_as_wedged_until_it_moves_again(tmp_path, monkeypatch):
    from miro_runtime.engine import strategies
    release = threading.Event()

    class HangsOnce(strategies.ER):  # a test-only strategy: the first step blocks until released
        def observe(self, x, y):
            release.wait(30)
            return super().observe(x, y)
    monkeypatch.setitem(strategies.STRATEGIES, "er", HangsOnce)
    cfg = dict(run_dir=str(tmp_path / "s"), online=False, epochs=1, strategy="er", flash_budget=None, batch_size=10)
    s, th = _start(cfg)
    s.trainer.wedged_after_s = 0.3
    try:
        assert s.status()["health"] == "ok"
        x, y = _data([0, 1])
        s.ingest(0, "train", x, y)
        s.end_task(0)
        assert _wait(lambda: s.status()["health"] == "wedged", 10), s.status()
        release.set()
        assert _wait(lambda: s.done == 1), s.state
        assert s.status()["health"] == "ok"
    finally:
        release.set()
        s.stop()
        th.join(60)
        s.close()


def test_a_transient_failure_is_retried_and_the_task_trains(tmp_path, monkeypatch):
    from miro_runtime.engine import strategies
    from miro_runtime.session import trainer as trainer_mod
    raised = []

    class FailsTwice(strategies.ER):  # a test-only strategy: the first two steps raise, then it recovers
        def observe(self, x, y):
            if len(raised) < 2:
                raised.append(1)
                raise RuntimeError("injected transient failure")
            return super().observe(x, y)
    monkeypatch.setitem(strategies.STRATEGIES, "er", FailsTwice)
    monkeypatch.setattr(trainer_mod, "RETRY_BACKOFF_S", 0.05)
    cfg = dict(run_dir=str(tmp_path / "s"), online=False, epochs=1, strategy="er", flash_budget=None, batch_size=10)
    s, th = _start(cfg)
    try:
        x, y = _data([0, 1])
        s.ingest(0, "train", x, y)
        s.ingest(0, "test", x[:20], y[:20])
        s.end_task(0)
        assert _wait(lambda: s.done == 1), s.state
        assert not s.ledger.failed and s.trainer.errors == 2 and s.status()["health"] == "ok"
        assert s.learner.per_task[0].train_samples == 120  # the energy and work of the attempt that trained
    finally:
        s.stop()
        th.join(60)
        s.close()


def test_online_a_failing_task_is_skipped_and_the_next_trains_online(tmp_path, monkeypatch):
    fail_task_1(monkeypatch, retries=1)
    cfg = dict(run_dir=str(tmp_path / "s"), online=True, strategy="er", flash_budget=None, batch_size=10)
    s, th = _start(cfg)
    try:
        for t, classes in enumerate(([0, 1], [2, 3], [4, 5])):
            x, y = _data(classes, seed=t)
            s.ingest(t, "train", x, y)
            s.ingest(t, "test", x[:20], y[:20])
            if t == 1:
                assert _wait(lambda: s.ledger.failed == [1]), s.state  # failed while still open
                s.ingest(1, "train", x, y)  # more samples for it are stored, never trained
            s.end_task(t)
            assert _wait(lambda t=t: s.done > t), s.state
        assert [r.task for r in s.learner.per_task] == [0, 2] and s.trainer.errors == 2
        assert s.trainer.backlog.n == 0 and s.trainer.backlog.untrained == 240
        assert s.learner.flash.class_counts("samples").sum() == 480  # every train sample stays stored
    finally:
        s.stop()
        th.join(60)
        s.close()
