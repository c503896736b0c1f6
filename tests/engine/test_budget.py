"""The energy budget and its guard (engine/budget.py). The budget's arithmetic runs on a clock the test
moves; the guard runs in a real learner training real digits, on a fixture meter whose joules the test
controls (one joule per training step: this machine has no meter whose readings a test could steer)."""
import json
import subprocess
import sys

import pytest

from miro_runtime.config import RunConfig
from miro_runtime.engine.budget import EnergyBudget
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import split_digits
from miro_runtime.profilers.measurement import Meter

START = {"task": 0, "epoch": 0, "batch": 0}


def test_a_task_budget_counts_every_kind_booked_for_the_task():
    b = EnergyBudget(task_j=10.0)
    assert b.mode == "task" and b.remaining(0) == 10.0
    b.spend("profile", 2.0, 0)
    b.spend("train", 5.0, 0)
    assert b.remaining(0, in_window=1.0) == pytest.approx(2.0)  # 10 - 2 - 5 - 1
    assert b.remaining(1) == 10.0  # each task has its own
    b.spend("eval", None, 0)  # unresolved by the meter: nothing booked
    assert b.status(0)["spent_j"] == {"train": 5.0, "profile": 2.0, "eval": 0.0, "predict": 0.0, "kv": 0.0,
                                        "fleet": 0.0}
    with pytest.raises(ValueError, match="unknown kind"):
        b.spend("coffee", 1.0, 0)
    with pytest.raises(ValueError, match="not both"):
        EnergyBudget(task_j=1.0, power_w=1.0)


def test_a_power_budget_is_a_bucket_filling_at_p_watts_up_to_its_size():
    now = [1000.0]
    b = EnergyBudget(power_w=2.0, bucket_s=10.0, clock=lambda: now[0])
    assert b.bucket_j == 20.0 and b.remaining(0) == 20.0  # starts full
    b.spend("train", 15.0, 0)
    assert b.remaining(0) == pytest.approx(5.0)
    now[0] += 2.0  # 2 s at 2 W: 4 J back
    assert b.remaining(0) == pytest.approx(9.0)
    now[0] += 100.0  # idle long: the bucket holds at most its size
    assert b.remaining(0) == pytest.approx(20.0)
    b.spend("kv", 25.0, 0)  # an overshoot: repaid as the bucket refills
    assert b.remaining(0) == pytest.approx(-5.0)
    b.configure(None, 1.0, 10.0)  # halved live: the level is kept, the size is now 10 J
    now[0] += 5.0
    assert b.remaining(0) == pytest.approx(0.0)
    st = b.state()
    again = EnergyBudget(power_w=1.0, bucket_s=10.0, clock=lambda: now[0])
    again.load_state(st)
    assert again.remaining(0) == pytest.approx(0.0) and again.spent["kv"] == 25.0


class StepMeter(Meter):
    """Fixture: one joule per training step the learner has taken."""
    name = "steps"

    def __init__(self, learner):
        super().__init__()
        self.learner = learner

    def _cumulative(self):
        return {"steps": float(self.learner.steps)}

    def provenance(self):
        return {"steps": "fixture: 1 J per training step"}


def train_task(lr, st, t):
    x, y = st.train[t]
    ids = lr.store(t, x, y).ids
    lr.begin_task(t, {**START, "task": t})
    steps0 = lr.steps
    assert lr.train_epochs(t, x, y, ids, {**START, "task": t})
    rec = lr.finish_task(t, x, y, ids)
    return lr.steps - steps0, rec


def test_the_guard_stops_a_task_at_its_budget_and_the_next_task_trains(tmp_path):
    st = split_digits(5, 0)
    lr = Learner(RunConfig(run_dir=str(tmp_path / "r"), strategy="er", epochs=5, energy_budget_j=10.5), st)
    lr.open()
    lr.meter = StepMeter(lr)
    try:
        steps, rec = train_task(lr, st, 0)
        # the guard asks before every step: after 11 steps 11 J > 10.5 J; 5 epochs would be ~60 steps
        assert steps == 11
        assert rec.budget["guard_tripped"] and rec.budget["spent_j"]["train"] == pytest.approx(11.0)
        assert rec.energy_j == pytest.approx(11.0)
        lr.cfg.energy_budget_j = 5.5  # a live change: applies from the next step, and is logged
        steps, rec = train_task(lr, st, 1)
        assert steps == 6 and rec.budget["task_j"] == 5.5 and rec.budget["guard_tripped"]
        lr.cfg.energy_budget_j = None  # no budget: the whole 5 epochs
        steps, rec = train_task(lr, st, 2)
        assert steps > 40 and rec.budget is None
    finally:
        lr.close()
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    guard = [e for e in events if e["event"] == "budget_guard"]
    assert [e["task"] for e in guard] == [0, 1] and guard[0]["remaining_j"] == pytest.approx(-0.5)
    changed = [e for e in events if e["event"] == "budget_changed"]
    assert [c["new"]["task_j"] for c in changed] == [5.5, None]


def test_the_deadline_stops_a_task_that_would_overrun_and_keeps_time_to_evaluate(tmp_path):
    st = split_digits(5, 0)
    lr = Learner(RunConfig(run_dir=str(tmp_path / "r"), strategy="er", epochs=400, task_deadline_s=1.5), st)
    lr.open()
    try:
        for t in (0, 1):
            x, y = st.train[t]
            ids = lr.store(t, x, y).ids
            lr.begin_task(t, {**START, "task": t})
            assert lr.train_epochs(t, x, y, ids, {**START, "task": t})
            rec = lr.finish_task(t, x, y, ids)
            # 400 epochs would take minutes: training stopped at the deadline (less the evaluation's time)
            assert rec.budget["deadline_tripped"] and not rec.budget["guard_tripped"]
            assert 0.2 < rec.train_s < 1.5 and rec.train_samples < 400 * len(y)
    finally:
        lr.close()
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    late = [e for e in events if e["event"] == "deadline_guard"]
    assert [e["task"] for e in late] == [0, 1] and late[1]["eval_reserve_s"] > 0


def test_a_planned_length_stops_training_there_and_is_no_guard_trip(tmp_path):
    st = split_digits(5, 0)
    lr = Learner(RunConfig(run_dir=str(tmp_path / "r"), strategy="er", epochs=5, energy_budget_j=1000.0), st)
    lr.open()
    lr.meter = StepMeter(lr)
    bs = lr.cfg.batch_size
    try:
        x, y = st.train[0]
        ids = lr.store(0, x, y).ids
        lr.begin_task(0, {**START, "task": 0})
        lr.guard.plan(0, 3 * bs, why="test: three batches")  # what Miro does in its task_begin
        steps0 = lr.steps
        assert lr.train_epochs(0, x, y, ids, {**START, "task": 0})
        rec = lr.finish_task(0, x, y, ids)
        # stopped by the plan after 3 steps, far inside the budget: a plan kept, not a trip
        assert lr.steps - steps0 == 3 and rec.train_samples == 3 * bs
        assert rec.budget["planned_samples"] == 3 * bs and not rec.budget["guard_tripped"]
        assert lr.guard.budget.trips == []
        steps, rec = train_task(lr, st, 1)  # a task with no plan trains its epochs
        assert steps > 5 * 3 and rec.budget["planned_samples"] is None
    finally:
        lr.close()
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    assert [(e["task"], e["samples"]) for e in events if e["event"] == "training_planned"] == [(0, 3 * bs)]
    reached = [e for e in events if e["event"] == "training_plan_reached"]
    assert len(reached) == 1 and reached[0]["planned"] == 3 * bs


FIRST_TASK = """
import json, sys
from miro_runtime.config import RunConfig
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import split_digits
st = split_digits(5, 0)
lr = Learner(RunConfig(run_dir=sys.argv[1], strategy="er", epochs=1, task_deadline_s=1.0, checkpoint_every=0), st)
lr.open()
try:
    x, y = st.train[0]
    ids = lr.store(0, x, y).ids
    lr.begin_task(0, {"task": 0, "epoch": 0, "batch": 0})
    lr.train_epochs(0, x, y, ids, {"task": 0, "epoch": 0, "batch": 0})
    rec = lr.finish_task(0, x, y, ids)
    print(json.dumps({"samples": rec.train_samples, "n": len(y), "late": rec.budget["deadline_tripped"]}))
finally:
    lr.close()
"""


def test_a_fresh_process_first_task_is_not_stopped_by_torch_warming_up(tmp_path):
    # in a fresh interpreter the first optimizer imports torch's compiler stack (1.3-1.8 s here): paid when
    # the learner opens, a 1 s deadline leaves task 0 its epoch (it stopped before its first step before)
    out = subprocess.run([sys.executable, "-c", FIRST_TASK, str(tmp_path / "r")], capture_output=True, text=True,
                         timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["samples"] == r["n"] and not r["late"], r
