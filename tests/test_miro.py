"""The Miro controller: selection rules, the bandit, and live retuning inside a real run."""
import json
import os

import pytest

from miro_runtime import RunConfig, run
from miro_runtime.miro import Knobs, MiroController, ThompsonBandit, default_grid, select


def cand(mem, acc, joules, seconds=1.0):
    return {"knobs": Knobs(mem, 100, 0.5, 1), "acc": acc, "joules": joules, "seconds": seconds}


def test_selection_rules():
    cs = [cand(1, 0.90, 10.0), cand(2, 0.85, 4.0), cand(3, 0.50, 1.0), cand(4, 0.80, 2.0)]
    # top half by accuracy = {0.90, 0.85}; best accuracy per joule among them: 0.85 / 4
    assert select(cs)["knobs"].memory == 2
    assert select(cs, "lowest-energy")["knobs"].memory == 3
    assert select(cs, "acc-per-joule")["knobs"].memory == 3  # 0.5 / 1.0 beats 0.8 / 2.0
    assert select(cs, "highest-accuracy")["knobs"].memory == 1
    assert select(cs, "zeus", eta=1.0)["knobs"].memory == 3  # pure energy per accuracy: 1.0 / 0.5
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(cs, "cheapest")


def test_ties_the_profile_cannot_resolve_go_to_the_larger_memory():
    def c(mem, acc, joules, epochs=1):
        return {"knobs": Knobs(mem, 100, 0.5, epochs), "acc": acc, "joules": joules, "seconds": 1.0, "n_val": 100}
    cs = [c(10, 0.80, 0.8), c(20, 0.79, 1.0), c(40, 0.78, 1.0), c(80, 0.60, 1.0), c(160, 0.80, 5.0, epochs=5)]
    # acc-per-joule alone picks mem 10 (the cheaper step); 0.78 lies within one standard error
    # (0.04 on 100 samples) of 0.80, so the largest memory of the same epochs and similar cost wins
    assert select(cs, "acc-per-joule")["knobs"].memory == 40
    assert select(cs, "lowest-energy")["knobs"].memory == 10  # asks for the cheapest: no tie-break
    assert select([{**x, "n_val": None} for x in cs], "acc-per-joule")["knobs"].memory == 10


def test_bandit_explores_then_prefers_the_better_arm():
    b = ThompsonBandit(["a", "b", "c"], window=3, min_obs=2, seed=0)
    assert sorted(b.order()) == ["a", "b", "c"]
    for _ in range(2):
        b.observe("a", 1.0)
        b.observe("b", 5.0)
        b.observe("c", 1.2)
    firsts = [b.order()[0] for _ in range(50)]
    assert firsts.count("b") > 40
    for _ in range(3):  # the sliding window forgets: b drifts down
        b.observe("b", 0.1)
    assert b.order()[0] != "b"


def test_default_grid_holds_the_default_config():
    cfg = RunConfig()
    grid = default_grid(cfg)
    assert Knobs(cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs) in grid
    assert len(grid) == len(set(grid)) >= 8
    with pytest.raises(ValueError, match="unknown selection rule"):
        MiroController(cfg, rule="nope")


def test_miro_run_retunes_live_and_counts_its_energy(tmp_path):
    s = run(RunConfig(strategy="carm", miro=True, epochs=3, run_dir=str(tmp_path / "m"), checkpoint_every=0))
    assert s["energy_provenance"].startswith("estimated") or "measured" in s["energy_provenance"]
    decisions = s["miro_decisions"]
    assert [d["task"] for d in decisions] == [0, 1, 2, 3, 4]
    assert any(d["candidates"] for d in decisions)
    for d in decisions:
        assert d["rule"] == "top-half-acc-per-joule" and "winner" in d
        for c in d["candidates"]:
            assert 0 <= c["acc"] <= 1 and c["predicted_task_j"] >= 0
    assert s["profiling_energy_j"] > 0
    task_j = sum(r["energy_j"] for r in s["per_task"])
    assert s["energy_j"] == pytest.approx(task_j + s["profiling_energy_j"])
    for r in s["per_task"]:  # what was adopted is what ran
        k = r["knobs"]
        assert r["memory"]["capacity"] == k["memory"]
        assert k["flash_budget"] is None or r["flash_records"] <= k["flash_budget"]
    events = [json.loads(line) for line in open(os.path.join(tmp_path, "m", "events.jsonl"))]
    assert sum(e["event"] == "miro_decision" for e in events) == 5


def test_without_miro_energy_is_still_reported(tmp_path):
    s = run(RunConfig(strategy="er", epochs=1, run_dir=str(tmp_path / "e"), checkpoint_every=0))
    assert s["energy_j"] > 0 and s["energy_provenance"] and "miro_decisions" not in s


def test_acc_per_joule_skips_arms_that_cannot_win_and_rounds_too_small_to_compare(tmp_path):
    s = run(RunConfig(strategy="carm", miro=True, miro_rule="acc-per-joule", epochs=5, run_dir=str(tmp_path / "a"),
                      checkpoint_every=0))
    d0 = s["miro_decisions"][0]
    assert [c["knobs"] for c in d0["candidates"]] == ["mem=20,flash=2000,swap=0.5,epochs=1"]  # cheapest first
    assert d0["not_profiled"] == [{"knobs": "mem=20,flash=2000,swap=0.5,epochs=5",
                                   "why": "cannot win at 100% accuracy"}]  # 5x the joules of an arm at > 20%
    for d in s["miro_decisions"][1:]:
        profiled = [c for c in d["candidates"] if not c["from_window"]]
        assert len(profiled) <= 2  # a bandit round pulls one challenger (+ an unmeasured incumbent)
        assert not profiled or d["profiling_energy_j"] <= d["budget_j"] * 1.5  # the cap holds on predicted cost
    tiny = run(RunConfig(strategy="carm", miro=True, miro_rule="acc-per-joule", miro_budget=0.001, epochs=5,
                         run_dir=str(tmp_path / "b"), checkpoint_every=0))
    for d in tiny["miro_decisions"][1:]:  # one profile would only re-measure the incumbent: none is run
        assert d["candidates"] == [] and d["profiling_energy_j"] == 0.0
        assert {x["why"] for x in d["not_profiled"]} == {"the cap fits fewer than two profiles"}
        assert d["winner"] == tiny["miro_decisions"][0]["winner"]
