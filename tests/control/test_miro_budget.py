"""Miro v2 under a user's energy budget: the within-budget rule, the cost check that rescales profiled
costs when the realised cost leaves its noise, and a real run whose fixture meter's price of a CPU
second the test triples mid-stream (a load change; this machine has no meter a test could steer)."""
import json
import time

import pytest

from miro_runtime.config import RunConfig
from miro_runtime.control.cost import CostCheck
from miro_runtime.control.miro import Knobs, MiroController
from miro_runtime.control.rules import select_within_budget
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import split_digits
from miro_runtime.profilers.measurement import Meter
from miro_runtime.records import Candidate


def cand(epochs, acc, joules, n_val=400):
    return Candidate(knobs=Knobs(20, 2000, 0.5, epochs), acc=acc, joules=joules, seconds=1.0, n_val=n_val)


def test_within_budget_takes_the_most_accurate_arm_that_fits():
    arms = [cand(1, 0.80, 10.0), cand(3, 0.90, 30.0), cand(5, 0.93, 50.0)]
    w, how = select_within_budget(arms, 40.0)
    assert w.knobs.epochs == 3 and "fit" in how  # 5 epochs would be more accurate but does not fit
    assert select_within_budget(arms, 60.0)[0].knobs.epochs == 5  # a larger budget buys accuracy
    w, how = select_within_budget(arms, 5.0)
    assert w.knobs.epochs == 1 and "cheapest" in how  # nothing fits: the cheapest, the guard trims it
    # a tie within one standard error goes to the arm that trains most and still fits: the budget is for that
    assert select_within_budget([cand(3, 0.900, 30.0), cand(5, 0.898, 50.0)], 60.0)[0].knobs.epochs == 5
    assert select_within_budget([cand(3, 0.900, 30.0), cand(5, 0.898, 50.0)], 40.0)[0].knobs.epochs == 3


def test_the_cost_check_refits_only_when_the_ratio_leaves_its_noise():
    c = CostCheck()
    assert [c.observe(10.0, r) for r in (10.5, 9.6, 10.9, 9.8)] == [None] * 4  # within 15%: noise
    f = c.observe(10.0, 21.0)
    assert f == pytest.approx(2.1)  # the load doubled: rescale by the ratio
    assert c.observe(21.0, 20.0) is None  # measured against the refitted cost: on target again
    assert c.observe(None, 5.0) is None and c.observe(5.0, None) is None


class CpuMeter(Meter):
    """Fixture: joules = price x this process's CPU seconds; the test changes the price."""
    name = "cpu-priced"

    def __init__(self):
        super().__init__()
        self.price, self._j, self._last = 4.0, 0.0, time.process_time()

    def _cumulative(self):
        with self._lock:
            now = time.process_time()
            self._j += self.price * (now - self._last)
            self._last = now
            return {"cpu": self._j}

    def provenance(self):
        return {"cpu": "fixture: price x process CPU seconds"}


def test_miro_under_a_budget_keeps_each_task_in_it_and_sees_a_load_change_within_a_task(tmp_path):
    st = split_digits(5, 0)
    cfg = RunConfig(run_dir=str(tmp_path / "r"), strategy="er", miro=True, epochs=3, energy_budget_j=1e9,
                    checkpoint_every=0)
    lr = Learner(cfg, st, hooks=MiroController(cfg, rule=cfg.miro_rule, budget_frac=0.3))
    lr.open()
    meter = lr.meter = CpuMeter()
    try:
        recs = []
        for t in range(5):
            if t == 1:  # task 0 showed what a task costs: a budget of about its energy per task from here
                lr.cfg.energy_budget_j = 1.5 * (recs[0].energy_j + recs[0].profiling_energy_j)
            if t == 3:
                meter.price *= 3.0  # the load change: every CPU second now costs three times as much
            x, y = st.train[t]
            ids = lr.store(t, x, y).ids
            lr.begin_task(t, {"task": t, "epoch": 0, "batch": 0})
            assert lr.train_epochs(t, x, y, ids, {"task": t, "epoch": 0, "batch": 0})
            recs.append(lr.finish_task(t, x, y, ids))
    finally:
        lr.close()
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    decisions = [e for e in events if e["event"] == "miro_decision"]
    for d in decisions[1:]:  # every decision under the budget names what it had left and what it predicted
        assert d["rule"] == "within-budget" and d["energy_budget"]["remaining_j"] > 0
        assert d["predicted"]["joules"] is not None
    # the budget set between tasks 0 and 1 is the one task 1's decision planned for (not task 0's 1e9 J)
    assert decisions[1]["energy_budget"]["remaining_j"] < 1.5 * (recs[0].energy_j + recs[0].profiling_energy_j)
    assert [e["task"] for e in events if e["event"] == "budget_changed"] == [1]
    for r in recs[1:]:  # the guard and the rule keep each task inside its budget (one step of overshoot) ...
        spent, cap = r.budget["spent_j"], lr.cfg.energy_budget_j
        if r.task != 3:
            assert r.budget["total_j"] <= cap * 1.05, r.budget
        else:  # ... but at the load change its evaluation costs three times the reserve the guard kept for it
            assert spent["train"] + spent.get("profile", 0.0) <= cap * 1.05, r.budget
    realised = {e["task"]: e for e in events if e["event"] == "miro_realised"}
    assert set(realised) == {0, 1, 2, 3, 4}
    refits = [e for e in events if e["event"] == "miro_cost_refit"]
    # detected within one task of the change (a loaded machine's noisy ratios may need the second)
    assert any(e["task"] in (3, 4) and e["factor"] > 1.8 for e in refits), \
        ([(e["task"], e["factor"]) for e in refits], {t: (e["predicted_j"], e["realised_j"])
                                                      for t, e in realised.items()})
    assert any(e["event"] == "budget_guard" for e in events) == any(e["guard_tripped"] for e in realised.values())


def test_within_budget_also_fits_the_deadline_and_takes_the_fastest_when_none_does():
    arms = [Candidate(knobs=Knobs(20, 2000, 0.5, e), acc=a, joules=j, seconds=s, n_val=400)
            for e, a, j, s in ((1, 0.80, 10.0, 1.0), (3, 0.90, 30.0, 3.0), (5, 0.93, 50.0, 5.0))]
    w, how = select_within_budget(arms, 100.0, 3.5)
    assert w.knobs.epochs == 3 and "3.5 s" in how  # energy would allow 5 epochs; time does not
    w, how = select_within_budget(arms, 100.0, 0.5)
    assert w.knobs.epochs == 1 and "fastest" in how
