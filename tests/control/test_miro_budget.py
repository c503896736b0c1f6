"""Miro v2 under a user's energy budget: the within-budget rule, the cost check that rescales profiled
costs when the realised cost leaves its noise, and a real run whose fixture meter's price of a CPU
second the test triples mid-stream (a load change; this machine has no meter a test could steer)."""
import json
import math
import statistics
import time

import pytest

from miro_runtime.config import RunConfig
from miro_runtime.control.cost import NOISE_SDS, CostCheck
from miro_runtime.control.miro import Knobs, MiroController
from miro_runtime.control.rules import ArmCost, plan_within_budget
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import split_digits
from miro_runtime.profilers.measurement import Meter
from miro_runtime.records import Candidate


def cand(epochs, acc, joules, n_val=400):
    return Candidate(knobs=Knobs(20, 2000, 0.5, epochs), acc=acc, joules=joules, seconds=1.0, n_val=n_val)


def arm(mem, epochs, j, acc=None, s=0.01, n_val=400):
    return ArmCost(Knobs(mem, 2000, 0.5, epochs), j, s, acc, n_val if acc is not None else None)


GRID = [arm(m, e, 1.0 if m == 10 else 1.5) for m in (10, 40) for e in (1, 3, 5)]  # J per trained sample


def test_a_plan_trains_the_largest_memory_as_long_as_the_budget_pays():
    kn, samples, how = plan_within_budget(GRID, 100, 300.0, margin=0.0)
    # 300 J at 1.5 J a sample: 200 samples, two epochs of the task; of the arms that reach that, the one
    # with the most epochs (the plan stops it; its epochs leave steering room to lengthen the task)
    assert (kn.memory, kn.epochs, samples) == (40, 5, 200) and "as long as the budget pays" in how
    kn, samples, _ = plan_within_budget(GRID, 100, 300.0, margin=0.1)
    assert samples == 180  # the margin for the spread of the realised cost stays unspent
    kn, samples, how = plan_within_budget(GRID, 100, 1000.0, margin=0.0)
    assert (kn.memory, kn.epochs, samples) == (40, 5, None) and "whole epochs fit" in how  # 500 samples fit
    # 120 J: the larger memory pays for less than one pass over the new samples (80); it still wins over
    # the smaller one trained for 120 (what it keeps of the past is worth more than the steps)
    kn, samples, how = plan_within_budget(GRID, 100, 120.0, margin=0.0)
    assert (kn.memory, samples) == (40, 80) and "as long as the budget pays" in how
    kn, samples, _ = plan_within_budget(GRID, 100, -5.0, margin=0.0)
    assert samples == 0  # nothing left: no training rather than a guard trip


def test_a_plan_is_whole_batches_as_the_learner_stops_at_a_step_boundary():
    # the learner stops at the first step boundary at or past a plan: 49 samples at batch 16 trained 64,
    # a third more than the budget paid for (12% of a halved budget past it in bench/miro_v2.py)
    kn, samples, _ = plan_within_budget(GRID, 100, 310.0, margin=0.0, batch=16)
    assert samples == 208  # 206.7 paid for: to the nearest batch where the budget binds
    kn, samples, _ = plan_within_budget(GRID, 100, 290.0, margin=0.0, batch=16)
    assert samples == 192  # 193.3
    kn, samples, _ = plan_within_budget(GRID, 100, 10.0, margin=0.0, batch=16)
    assert samples == 0  # 10 samples at the smaller memory: under one batch trains none, not 16 it cannot pay
    grid = [arm(40, e, 1.0, s=0.02) for e in (1, 3, 5)]
    kn, samples, how = plan_within_budget(grid, 100, 1000.0, remaining_s=3.1, margin=0.0, batch=16)
    assert samples == 144 and "the deadline pays" in how  # 155 fit the deadline: down, a step is never late
    kn, samples, _ = plan_within_budget(GRID, 100, 1000.0, margin=0.0, batch=16)
    assert samples is None  # whole epochs (500) are no plan, whatever the batch


def test_a_plan_never_shrinks_the_memory_running_to_train_longer():
    running = Knobs(40, 2000, 0.5, 3)
    # 1.2 J: the memory running pays for no sample (1.5 J each), the smaller one for one; a shrink would
    # drop 30 kept samples for good, so the task trains nothing and keeps them
    kn, samples, how = plan_within_budget(GRID, 100, 1.2, margin=0.0, current=running)
    assert (kn.memory, samples) == (40, 0) and "3 would shrink" in how
    kn, samples, _ = plan_within_budget(GRID, 100, 1.2, margin=0.0)  # nothing kept yet (task 0): it may
    assert (kn.memory, samples) == (10, 1)
    # a smaller flash budget is a shrink too; a larger memory is not
    grid = [arm(40, 3, 1.5), ArmCost(Knobs(40, 500, 0.5, 3), 1.0, 0.01), arm(10, 3, 1.0)]
    kn, samples, _ = plan_within_budget(grid, 100, 90.0, margin=0.0, current=Knobs(10, 2000, 0.5, 3))
    assert (kn.memory, kn.flash_budget, samples) == (40, 2000, 60)
    # every arm of the grid below what runs: the grid is what there is
    kn, samples, _ = plan_within_budget([arm(10, 3, 1.0)], 100, 90.0, margin=0.0, current=running)
    assert (kn.memory, samples) == (10, 90)


def test_a_plan_takes_profiles_that_can_tell_arms_apart_and_not_those_that_cannot():
    # an arm measured clearly worse (by more than two standard errors) than one keeping as much: out
    arms = [arm(40, 1, 1.5, acc=0.50), arm(40, 3, 1.5, acc=0.80), arm(10, 5, 1.0, acc=0.50)]
    kn, samples, how = plan_within_budget(arms, 100, 120.0, margin=0.0)
    assert (kn.memory, kn.epochs, samples) == (40, 3, 80) and "(2 were)" in how
    # ... but a smaller memory's better profile is no evidence against the larger one (a profile of a few
    # steps shows the new task learnt faster with less replay, not the forgetting it costs later)
    arms = [arm(10, e, 1.0, acc=0.80) for e in (1, 3)] + [arm(40, e, 1.5, acc=0.50) for e in (1, 3)]
    kn, samples, how = plan_within_budget(arms, 100, 250.0, margin=0.0)
    assert (kn.memory, kn.epochs, samples) == (40, 3, 167) and "(0 were)" in how  # 166.7: to the nearest
    # within noise of each other (n_val 20: one standard error ~0.1): the prior stands, the larger memory
    arms = [arm(10, 3, 1.0, acc=0.80, n_val=20), arm(40, 3, 1.5, acc=0.70, n_val=20)]
    assert plan_within_budget(arms, 100, 300.0, margin=0.0)[0].memory == 40
    assert plan_within_budget([arm(10, 3, None), arm(40, 3, None)], 100, 300.0) == (None, None, "no cost measured yet")


def test_a_plan_also_fits_the_deadline():
    grid = [arm(40, e, 1.0, s=0.02) for e in (1, 3, 5)]
    kn, samples, how = plan_within_budget(grid, 100, 1000.0, remaining_s=3.0, margin=0.0)
    assert (kn.epochs, samples) == (5, 150) and "the deadline pays" in how  # energy would allow 500 samples
    kn, samples, how = plan_within_budget(grid, 100, 1000.0, remaining_s=100.0, margin=0.0)
    assert (kn.epochs, samples) == (5, None)


def test_under_a_budget_a_round_profiles_only_when_the_plan_lacks_a_cost_or_it_moved():
    ctrl = MiroController(RunConfig(strategy="er", miro=True, energy_budget_j=10.0))
    plan, running = ctrl.plan, ctrl.current.key()
    assert "task 0" in plan.why_profile(0, 100)
    assert "no realised cost" in plan.why_profile(1, 100)
    plan.realised, plan.last_n = {"knobs": running, "task": 0, "j": 0.01, "s": 0.001}, 100
    assert "with replay" in plan.why_profile(1, 100)  # task 0's cost had no replay to pay for
    plan.realised["task"] = 1
    assert plan.why_profile(2, 100) is None  # same arm, same size, no refit: the realised cost holds
    assert "100 -> 200" in plan.why_profile(2, 200) and plan.why_profile(2, 104) is None  # 4% more: noise
    plan.refit_at = 2
    assert "refitted" in plan.why_profile(3, 100) and plan.why_profile(4, 100) is None
    plan.realised = {**plan.realised, "knobs": "another arm"}
    assert "no realised cost" in plan.why_profile(4, 100)
    # and it survives a restart: the controller's checkpointed state carries it
    again = MiroController(RunConfig(strategy="er", miro=True, energy_budget_j=10.0))
    again.plan.load_state(plan.state())
    assert (again.plan.last_n, again.plan.refit_at, again.plan.realised) == (100, 2, plan.realised)


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


def over_the_reserve(r, reserve_j) -> float:
    """Joules task record ``r``'s evaluation cost beyond ``reserve_j`` (the decision's reserve for it and
    the work after the last step): this 2-core machine's noise in a test set's cost (one evaluation here
    cost 3x the last), which no plan made before it can see -- what a budget assertion forgives."""
    return max(0.0, r.budget["spent_j"].get("eval", 0.0) - reserve_j)


def slack(r, cap) -> float:
    """What a task record ``r`` may spend past its budget ``cap``: 5% of it, or one batch at the task's own
    average joules per trained sample where that is more. A task here is a few dozen 16-sample steps of
    ~10 ms each, one of them 5-14% of a halved budget, and the fixture meter prices process CPU-seconds,
    whose per-step noise (the interpreter's garbage collection, the other core's load) the steering reads
    from two or three steps: a plan that lands one step long is the noise (1 in ~7 runs of this file went
    0.4-1% past 5%); one that ignored the budget overspends by many."""
    batch = RunConfig().batch_size
    return max(0.05 * cap, batch * r.energy_j / r.train_samples if r.energy_j and r.train_samples else 0.0)


def _run_tasks(lr, st, n, before_task=None) -> list:
    """Tasks 0..n-1 in epoch mode, then the learner closed -> their records. Task 0 shows what a task
    costs: from task 1 on, a budget of 1.5x its energy (profiles included). ``before_task(t)``: a change
    made before task t."""
    recs = []
    try:
        for t in range(n):
            if t == 1:
                lr.cfg.energy_budget_j = 1.5 * (recs[0].energy_j + recs[0].profiling_energy_j)
            if before_task is not None:
                before_task(t)
            x, y = st.train[t]
            ids = lr.store(t, x, y).ids
            lr.begin_task(t, {"task": t, "epoch": 0, "batch": 0})
            assert lr.train_epochs(t, x, y, ids, {"task": t, "epoch": 0, "batch": 0})
            recs.append(lr.finish_task(t, x, y, ids))
    finally:
        lr.close()
    return recs


def test_miro_under_a_budget_keeps_each_task_in_it_and_sees_a_load_change_within_a_task(tmp_path):
    st = split_digits(5, 0)
    cfg = RunConfig(run_dir=str(tmp_path / "r"), strategy="er", miro=True, epochs=3, energy_budget_j=1e9,
                    checkpoint_every=0)
    lr = Learner(cfg, st, hooks=MiroController(cfg, rule=cfg.miro_rule, budget_frac=0.3))
    lr.open()
    meter = lr.meter = CpuMeter()

    def load(t):
        if t == 3:
            meter.price *= 3.0  # the load change: every CPU second now costs three times as much

    recs = _run_tasks(lr, st, 5, load)
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
            reserve = next(d for d in decisions if d["task"] == r.task)["energy_budget"]["reserve_j"]
            assert r.budget["total_j"] - over_the_reserve(r, reserve) <= cap + slack(r, cap), (r.budget, reserve)
        else:  # ... but at the load change its evaluation costs three times the reserve the guard kept for it
            assert spent["train"] + spent.get("profile", 0.0) <= cap + slack(r, cap), r.budget
    replans = [e for e in events if e["event"] == "miro_replan"]
    for r, d in zip(recs[1:], decisions[1:]):  # a planned length is what the task trained (to a whole batch)
        # the decision's plan, or the last re-plan the task's own cost so far called for (plan.steer)
        mine = [e for e in replans if e["task"] == r.task]
        planned = mine[-1]["planned"] if mine else d["energy_budget"]["planned_samples"]
        if mine and planned == mine[-1]["whole_epochs"]:
            planned = None  # steered back to the arm's whole epochs: no plan
        assert r.budget["planned_samples"] == planned, (r.task, r.budget, mine)
        if planned is not None and not r.budget["guard_tripped"]:
            assert planned <= r.train_samples < planned + lr.cfg.batch_size, (planned, r.train_samples)
    assert any(d["energy_budget"]["planned_samples"] for d in decisions[1:])  # the budget bound somewhere
    realised = {e["task"]: e for e in events if e["event"] == "miro_realised"}
    assert set(realised) == {0, 1, 2, 3, 4}
    refits = [e for e in events if e["event"] == "miro_cost_refit"]
    # detected within one task of the change (a loaded machine's noisy ratios may need the second)
    assert any(e["task"] in (3, 4) and e["factor"] > 1.8 for e in refits), \
        ([(e["task"], e["factor"]) for e in refits], {t: (e["predicted_j"], e["realised_j"])
                                                      for t, e in realised.items()})
    assert any(e["event"] == "budget_guard" for e in events) == any(e["guard_tripped"] for e in realised.values())
    for d in decisions[1:]:  # a round profiles, or says why it need not, and then costs nothing
        # its cap is at most a quarter of what the task's training had left before it (not the stream's
        # cap alone, which after a halved budget could eat the whole task)
        eb = d["energy_budget"]
        assert d["budget_j"] <= max(0.0, 0.25 * (eb["remaining_j"] + d["profiling_energy_j"])) + 1e-9, d
        why = d["energy_budget"]["profiled_because"]
        if why is None:
            assert d["profiling_energy_j"] == 0 and not [c for c in d["candidates"] if not c.get("from_window")]
            assert {x["why"] for x in d["not_profiled"]} == {
                "under a budget: the running arm's realised cost holds (same task size, no refit)"}
    for e in refits:  # a refitted cost is measured again at the next task
        if e["task"] + 1 < len(decisions):
            assert decisions[e["task"] + 1]["energy_budget"]["profiled_because"] is not None


class _PricedMidTask(MiroController):
    """Miro whose fixture meter's price is multiplied by ``factor`` after the fourth step of task 2 (a load
    arriving, or leaving, mid-task)."""

    def __init__(self, cfg, meter_box, factor=3.0, grid=None):
        super().__init__(cfg, grid=grid, rule=cfg.miro_rule, budget_frac=0.3)
        self.meter_box, self.factor, self.raised = meter_box, factor, False

    def between_steps(self, view, t, progress):
        if t == 2 and not self.raised and progress.samples >= 4 * view.cfg.batch_size:
            self.meter_box[0].price *= self.factor
            self.raised = True
        super().between_steps(view, t, progress)


def _run_with_a_load_mid_task(tmp_path, steer):
    st = split_digits(4, 0)
    cfg = RunConfig(run_dir=str(tmp_path / f"r{steer}"), strategy="er", miro=True, epochs=3, energy_budget_j=1e9,
                    checkpoint_every=0)
    box = [None]
    ctrl = _PricedMidTask(cfg, box)
    if not steer:  # the control: the hook still raises the price, the length stays as decided
        ctrl.plan.steer = lambda view, t, p: None
    lr = Learner(cfg, st, hooks=ctrl)
    lr.open()
    box[0] = lr.meter = CpuMeter()
    recs = _run_tasks(lr, st, 4)
    events = [json.loads(line) for line in open(tmp_path / f"r{steer}" / "events.jsonl")]
    return recs, events, lr.cfg.energy_budget_j


def test_a_load_arriving_mid_task_is_met_within_that_task_by_re_planning_its_length(tmp_path):
    recs, events, cap = _run_with_a_load_mid_task(tmp_path, steer=True)
    r = recs[2]
    replans = [e for e in events if e["event"] == "miro_replan" and e["task"] == 2]
    assert replans, "the task's own cost tripled and nothing was re-planned"
    bs = RunConfig().batch_size
    late = [e for e in replans if e["samples"] > 4 * bs]
    # after the change the plan shrinks to what the rest of the budget pays at the new price, and says why
    assert late and late[0]["planned"] < late[0]["planned_before"], replans
    assert "in-task refit" in late[0]["why"] and late[0]["binds"] == "the budget"
    assert not r.budget["guard_tripped"] and 2 not in [e["task"] for e in events if e["event"] == "budget_guard"]
    spent = r.budget["spent_j"]
    assert spent["train"] + spent.get("profile", 0.0) <= cap + slack(r, cap), r.budget
    assert r.budget["planned_samples"] <= r.train_samples < r.budget["planned_samples"] + bs
    # the control: the same load with the length left as decided at the task's start overspends and the
    # guard has to stop it
    recs0, events0, _ = _run_with_a_load_mid_task(tmp_path, steer=False)
    assert not [e for e in events0 if e["event"] == "miro_replan"]
    assert recs0[2].budget["guard_tripped"], recs0[2].budget


def test_the_first_task_keeps_a_share_of_its_budget_for_the_work_after_its_last_step(tmp_path):
    st = split_digits(2, 0)
    x, y = st.train[0]

    def task0(name, budget, hooks=None):
        cfg = RunConfig(run_dir=str(tmp_path / name), strategy="er", miro=hooks is not None, epochs=3,
                        energy_budget_j=budget, checkpoint_every=0)
        lr = Learner(cfg, st, hooks=hooks(cfg) if hooks else None)
        lr.open()
        lr.meter = CpuMeter()
        try:
            ids = lr.store(0, x, y).ids
            lr.begin_task(0, {"task": 0, "epoch": 0, "batch": 0})
            lr.train_epochs(0, x, y, ids, {"task": 0, "epoch": 0, "batch": 0})
            return lr.finish_task(0, x, y, ids), [json.loads(line) for line in open(tmp_path / name / "events.jsonl")]
        finally:
            lr.close()

    free, _ = task0("free", None)
    budget = 0.5 * free.energy_j  # half of what three epochs of the task cost (its evaluation aside)
    rec, events = task0("miro", budget, lambda cfg: MiroController(cfg, rule=cfg.miro_rule, budget_frac=0.3))
    d = next(e for e in events if e["event"] == "miro_decision")
    eb = d["energy_budget"]
    # no evaluation measured yet: a tenth of what the task had after its profiles is kept back, not nothing
    assert eb["reserve_j"] == pytest.approx(0.1 * (budget - d["profiling_energy_j"]), rel=1e-6), eb
    assert eb["planned_samples"] is not None and eb["planned_samples"] < 3 * len(y)  # the budget binds
    assert not rec.budget["guard_tripped"], rec.budget
    # evaluation and memory update included, the task stays within one step's spread of its budget
    assert rec.budget["total_j"] - over_the_reserve(rec, eb["reserve_j"]) <= budget + slack(rec, budget), \
        (rec.budget, budget)


def test_a_task_turning_cheaper_mid_task_trains_longer_than_its_decision_planned(tmp_path):
    """The other direction: a load leaving mid-task (the price of a CPU second falls to a fifth). The
    decision picked, among the arms reaching its planned length, one with more epochs than the fewest
    that reach it, so the task's steering may lengthen it past that arm's whole epochs."""
    st = split_digits(4, 0)
    cfg = RunConfig(run_dir=str(tmp_path / "r"), strategy="er", miro=True, epochs=5, energy_budget_j=1e9,
                    checkpoint_every=0)
    grid = [Knobs(cfg.memory, cfg.flash_budget, cfg.swap_ratio, e) for e in (1, 2, 3, 5)]
    box = [None]
    lr = Learner(cfg, st, hooks=_PricedMidTask(cfg, box, factor=1 / 5, grid=grid))
    lr.open()
    box[0] = lr.meter = CpuMeter()

    def tighten(t):  # from task 1 on, 0.3x what task 0 cost: a plan of under two epochs with replay
        if t == 1:
            lr.cfg.energy_budget_j = 0.3 * sum(lr.guard.budget.by_task[0].values())
    recs = _run_tasks(lr, st, 4, before_task=tighten)
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    d = next(e for e in events if e["event"] == "miro_decision" and e["task"] == 2 and not e.get("mid_task"))
    n, decided = d["energy_budget"]["task_samples"], d["energy_budget"]["planned_samples"]
    assert decided is not None and decided < 2 * n, d["energy_budget"]  # the budget binds at the decision
    # the most epochs among the arms reaching it and not measured worse (a profile may rule e5 out): more
    # than the fewest that reach it, which the old tie rule took
    assert int(d["winner"].rsplit("epochs=", 1)[1]) > math.ceil(decided / n), d["winner"]
    longer = [e for e in events if e["event"] == "miro_replan" and e["task"] == 2 and e["planned"] > decided]
    assert longer, "the task turned cheaper and its plan never grew"
    r = recs[2]
    # past every whole epoch the fewest-epoch arm reaching the decision would have allowed
    assert r.train_samples > n * math.ceil(decided / n), (r.train_samples, decided, n)
    assert not r.budget["guard_tripped"], r.budget
    assert r.budget["total_j"] <= lr.cfg.energy_budget_j + slack(r, lr.cfg.energy_budget_j), r.budget


def test_a_big_move_refits_however_noisy_the_past_tasks_were():
    # under another process's load the time per sample spreads widely from task to task; when the load ends
    # the time halves, and that is a change even where two standard deviations of the past spread cover it
    c = CostCheck()
    c.load_state({"log_ratios": [0.4, -0.4, 0.35, -0.38, 0.42]})
    sd = statistics.stdev(c.log_ratios)
    assert NOISE_SDS * sd > math.log(2.0)  # the spread alone would call a halving noise
    assert c.observe(10.0, 5.0) == pytest.approx(0.5)
    c.load_state({"log_ratios": [0.4, -0.4, 0.35, -0.38, 0.42]})
    assert c.observe(10.0, 13.0) is None  # within that spread and under 1.5x: still noise


class SetUpMeter(CpuMeter):
    """Fixture: CpuMeter plus a lump of joules as a task's window opens -- a set-up each task pays once
    whatever its length (loading a model, warming a cache), which a task's average cost per sample carries."""

    def __init__(self):
        super().__init__()
        self.lump = 0.0

    def begin_window(self, name):
        super().begin_window(name)
        if name.startswith("task"):
            with self._lock:
                self._j += self.lump


def test_a_tasks_set_up_is_the_cost_models_intercept_not_a_dearer_sample(tmp_path):
    """J = c x samples + b: c fitted on a task's own steps past its first, b the rest. A task's average
    cost per sample carries its set-up, so after the budget changes a task's length the next plan prices
    its samples by the old length's share of the set-up (bench/miro_v2.py, S4 after the budget halves)."""
    st = split_digits(5, 0)
    cfg = RunConfig(run_dir=str(tmp_path / "r"), strategy="er", miro=True, epochs=3, energy_budget_j=1e9,
                    checkpoint_every=0)
    ctrl = MiroController(cfg, rule=cfg.miro_rule, budget_frac=0.3)
    lr = Learner(cfg, st, hooks=ctrl)
    lr.open()
    meter = lr.meter = SetUpMeter()

    def tighten(t):  # from task 1 on: half of what task 0 cost, a fifth of it spent on each task's set-up
        if t == 1:
            lr.cfg.energy_budget_j = 0.5 * sum(lr.guard.budget.by_task[0].values())
            meter.lump = 0.2 * lr.cfg.energy_budget_j
    recs = _run_tasks(lr, st, 5, before_task=tighten)
    plan, lump, cap = ctrl.plan, meter.lump, lr.cfg.energy_budget_j
    # the intercept holds the set-up (and the memory update after the last step, which it owes mid-task)
    assert plan.realised["fit"] and plan.fixed_j >= lump, (plan.realised, plan.fixed_j, lump)
    assert 0 < plan.after_j < plan.fixed_j - 0.5 * lump, (plan.after_j, plan.fixed_j)  # the set-up came before
    last = recs[-1]  # the slope leaves the set-up out of what a sample costs: near the average without it
    avg_without = (last.energy_j - lump) / last.train_samples
    assert 0.5 * avg_without < plan.realised["j"] < 1.5 * avg_without, (plan.realised, avg_without)
    assert plan.realised["j"] < last.energy_j / last.train_samples
    for r in recs[1:]:  # and the plans it makes keep every task in its budget, without the guard
        assert not r.budget["guard_tripped"] and r.budget["total_j"] <= cap + slack(r, cap), r.budget
        assert r.budget["planned_samples"] is not None  # the budget binds: the plan is what is tested


class _Log:
    def event(self, *args, **kw):
        pass


def test_a_plan_may_end_on_the_step_past_the_guards_line_when_its_reserve_overpays_the_evaluation():
    """The guard keeps the most a test set cost lately plus 25% for the evaluation, and lets a step start
    while more than that is left: a guarded static configuration's last step crosses the line. A plan
    may take that step too (no trip: it stops the task first) when the reserve's surplus over the
    evaluation's expected cost pays for it, and not when the evaluations' spread eats the surplus."""
    from types import SimpleNamespace

    from miro_runtime.control.plan import BudgetPlan
    from miro_runtime.engine.budget import BudgetGuard

    def plan_with(evals):
        cfg = RunConfig(energy_budget_j=1.0)
        guard = BudgetGuard(cfg, _Log())
        for u, per_set in enumerate(evals):  # task u evaluates u + 1 test sets
            guard.book("eval", per_set * (u + 1), u)
        return BudgetPlan(None), SimpleNamespace(cfg=cfg, guard=guard)

    t, bs = 3, RunConfig().batch_size
    plan, view = plan_with([0.030, 0.028, 0.029])  # steady evaluations: the reserve overpays by ~15%
    expected, reserve = plan.eval_estimate(view, t), view.guard.budget.eval_reserve(t)
    assert expected == pytest.approx(0.029 * 4 * 1.1) and reserve == pytest.approx(0.030 * 4 * 1.25)
    j_ps, left = 0.001, 5.3 * bs * 0.001  # what is left pays for 5.3 batches: the sixth crosses the line
    assert plan.past_the_line(view, t, left, j_ps, 0.0) == 6 * bs
    # never past what the surplus pays: a batch dearer than it (0.048 J against ~0.022 J) does not cross
    assert plan.past_the_line(view, t, 1.3 * bs * 0.003, 0.003, 0.0) == bs
    assert plan.past_the_line(view, t, left, 10 * j_ps, 0.0) == 0
    plan, view = plan_with([0.010, 0.050, 0.020])  # spread evaluations: no surplus over what one may cost
    assert plan.eval_estimate(view, t) > view.guard.budget.eval_reserve(t)
    assert plan.past_the_line(view, t, left, j_ps, 0.0) == 0
    plan, view = plan_with([])  # nothing evaluated yet: nothing to go on
    assert plan.eval_estimate(view, 0) is None and plan.past_the_line(view, 0, left, j_ps, 0.0) == 0


def test_the_cost_models_slope_is_the_joules_between_two_points_never_below_half_the_average():
    """plan.slope is what the in-task steering (marginal) and the task's fit (fit) both price a sample at:
    the joules per sample between the task's first metered step and a later one, floored at half the
    average up to that point (one step can meter low by chance)."""
    from miro_runtime.control.plan import slope

    assert slope((16, 0.20), (80, 0.52)) == pytest.approx(0.32 / 64)  # above the floor: the slope itself
    # a run of steps metered almost nothing: half the average (0.52 / 80 / 2), not 0.02 / 64
    assert slope((16, 0.50), (80, 0.52)) == pytest.approx(0.5 * 0.52 / 80)
    assert slope((16, 0.20), (16, 0.30)) is None  # no samples between the points
    assert slope((16, 0.20), (32, 0.20)) is None  # no joules between them (a meter that cannot tell)
