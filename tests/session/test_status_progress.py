"""Session.status's ``progress`` (issue 20: `miro status` and `miro task end --wait` show how far the
task in training is): epoch mode counts steps, exact at every step even when the strategy trains on
more than the task's own samples; online mode counts the stored samples trained, across a restart;
and the ``stored`` counts outlive the since-start counters."""
import threading
import time

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.session import Session

PROGRESS_KEYS = {"task", "state", "done", "total", "unit", "fraction", "epoch", "epochs"}


def wait(pred, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def data(n, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), rng.choice(classes, n).tolist()


def record_each_step(s: Session) -> list:
    """The progress the status reports right after each training step (read in the trainer's thread,
    so no step is missed): the learner's event callback, wrapped."""
    seen, inner = [], s.learner.on_event

    def probe(kind, payload):
        inner(kind, payload)
        if kind == "step":
            seen.append(s.status()["progress"])
    s.learner.on_event = probe
    return seen


def test_epoch_mode_progress_counts_every_step_and_corrects_its_estimate(tmp_path):
    # joint trains task 1 on task 0's samples too: 40 + 8 = 48 samples, 6 batches an epoch, where the
    # task's own 8 samples suggest 1 -- the estimate rises with the steps and is exact after epoch 1
    s = Session(RunConfig(run_dir=str(tmp_path / "s"), online=False, strategy="joint", epochs=3, batch_size=8,
                          flash_budget=None))
    s.open()
    th = threading.Thread(target=s.run_trainer)
    th.start()
    try:
        s.ingest(0, "train", *data(40, [0, 1]))
        assert s.status()["progress"] is None  # epoch mode: nothing trains before the task ends
        seen = record_each_step(s)
        s.end_task(0)
        assert wait(lambda: s.done == 1)
        assert [p["done"] for p in seen] == list(range(1, 16)) and {p["total"] for p in seen} == {15}
        assert [p["epoch"] for p in seen] == [1] * 4 + [2] * 5 + [3] * 5 + [3]
        assert all(set(p) == PROGRESS_KEYS and p["unit"] == "steps" and p["epochs"] == 3 and p["task"] == 0
                   and p["state"] == "training" and p["fraction"] == round(p["done"] / 15, 4) for p in seen)
        assert s.status()["progress"] is None  # trained: nothing left to train

        s.ingest(1, "train", *data(8, [2, 3], seed=1))
        seen.clear()
        s.end_task(1)
        assert wait(lambda: s.done == 2)
        assert [p["done"] for p in seen] == list(range(1, 19)) and all(p["done"] <= p["total"] for p in seen)
        assert [p["total"] for p in seen[6:]] == [18] * 12  # exact from the second epoch on
        assert seen[-1]["fraction"] == 1.0
        st = s.status()
        assert st["stored"] == {"train": 48, "test": 0} and st["counters"]["ingested_train"] == 48
    finally:
        s.close()
        th.join(60)


def test_online_progress_is_stored_samples_trained_and_survives_a_restart(tmp_path):
    def cfg():
        return RunConfig(run_dir=str(tmp_path / "s"), online=True, strategy="er", flash_budget=None, batch_size=8,
                         memory=16)
    x, y = data(64, [0, 1])
    s = Session(cfg())
    s.open()
    th = threading.Thread(target=s.run_trainer)
    th.start()
    s.ingest(0, "train", x[:32], y[:32])
    assert wait(lambda: (s.status()["progress"] or {}).get("done") == 32)
    p = s.status()["progress"]
    assert set(p) == PROGRESS_KEYS
    assert (p["task"], p["state"], p["total"], p["unit"], p["fraction"], p["epoch"]) == (0, "training", 32,
                                                                                         "samples", 1.0, None)
    s.stop()
    th.join(60)
    s.ingest(0, "train", x[32:], y[32:])  # stored, never trained: the process then ends
    s.close()

    r = Session(cfg())
    r.open()
    try:
        st = r.status()
        assert st["counters"]["ingested_train"] == 0 and st["stored"]["train"] == 64  # since start vs stored
        p = st["progress"]
        assert (p["task"], p["done"], p["total"], p["unit"], p["fraction"]) == (0, 32, 64, "samples", 0.5)
        th = threading.Thread(target=r.run_trainer)
        th.start()
        assert wait(lambda: r.status()["progress"]["done"] == 64)
        r.stop()
        th.join(60)
    finally:
        r.close()
