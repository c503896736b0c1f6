"""The CL engine end to end with real torch training on small data and a real LMDB store."""
import json
import os

import numpy as np
import pytest
import torch

from miro_runtime import RunConfig, StreamError, from_arrays, run
from miro_runtime.session.experiment import Experiment
from miro_runtime.engine.memory import EpisodicMemory
from miro_runtime.storage import FlashTier
from miro_runtime.engine.strategies import select_swap_out
from miro_runtime.engine.strategies.carm import MAX_GROUP, choose_group, select_swap_out_many


def cfg(tmp_path, **kw):
    base = dict(stream="split-digits", strategy="carm", memory=20, flash_budget=2000, epochs=2,
                run_dir=str(tmp_path / kw.get("strategy", "carm")), checkpoint_every=0)
    base.update(kw)
    return RunConfig(**base)


def test_summary_metrics_and_files(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = run(cfg(tmp_path, strategy="er", epochs=1))  # threads=1 by default
        assert torch.get_num_threads() == 2  # the process-wide setting is given back after the run
    finally:
        torch.set_num_threads(before)
    assert [r["torch_threads"] for r in s["per_task"]] == [1] * 5
    with pytest.raises(ValueError, match="threads must be >= 0"):
        run(cfg(tmp_path, threads=-1))
    acc = s["acc_matrix"]
    assert len(acc) == 5 and all(len(r) == 5 for r in acc)
    assert acc[0][1] is None and acc[4][4] is not None
    last = acc[4]
    assert s["final_avg_acc"] == pytest.approx(np.mean(last))
    assert s["bwt"] == pytest.approx(np.mean([acc[4][j] - acc[j][j] for j in range(4)]))
    assert s["forgetting"] == pytest.approx(np.mean([max(acc[i][j] for i in range(j, 4)) - acc[4][j]
                                                     for j in range(4)]))
    for k in ("train_samples_per_s", "peak_rss_mb", "wall_s", "config"):
        assert s[k]
    lines = open(os.path.join(s["config"]["run_dir"], "metrics.jsonl")).read().splitlines()
    assert [json.loads(line)["task"] for line in lines] == [0, 1, 2, 3, 4]
    events = [json.loads(line)["event"] for line in open(os.path.join(s["config"]["run_dir"], "events.jsonl"))]
    assert events[0] == "run_begin" and events[-1] == "run_end" and events.count("task_end") == 5
    with FlashTier(os.path.join(s["config"]["run_dir"], "state"), readonly=True) as f:
        assert f.class_counts("samples").sum() == sum(s["stream"]["train_sizes"])  # every sample kept
    assert s["per_task"][4]["memory"] == {"size": 20, "capacity": 20}


def test_carm_swaps_only_after_the_first_task_and_beats_er(tmp_path):
    er = run(cfg(tmp_path, strategy="er", epochs=3))
    sync = run(cfg(tmp_path, strategy="carm-sync", epochs=3))
    carm = run(cfg(tmp_path, strategy="carm", epochs=3))
    swaps = [r["swap"]["requested"] for r in carm["per_task"]]
    assert swaps[0] == 0 and all(s > 0 for s in swaps[1:])
    assert carm["swap"]["completed"] > 0 and carm["swap"]["dropped"] <= carm["swap"]["requested"] * 0.05
    assert carm["swap"]["requested"] == carm["swap"]["completed"] + carm["swap"]["dropped"]
    # the flash tier turns a 2-per-class memory into replay over every stored sample. The margin is
    # asserted on carm-sync: same swaps, but each lands before the next step, so the run is
    # deterministic (0.92 vs ER's 0.80 at this seed). Async CarM's accuracy depends on when its swaps
    # land, so it moves with machine load (0.81-0.94 seen with 3 busy loops on 2 cores; one CI run
    # gave 0.836); it gets a looser bound, which swaps landing with wrong labels would break.
    assert sync["final_avg_acc"] > er["final_avg_acc"] + 0.05, (sync["final_avg_acc"], er["final_avg_acc"])
    assert carm["final_avg_acc"] > er["final_avg_acc"] - 0.05, (carm["final_avg_acc"], er["final_avg_acc"])


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    """The lower bound, once for the module: the same stream, seed and epochs as the replay runs."""
    return run(cfg(tmp_path_factory.mktemp("ft"), strategy="finetune", epochs=1))


def old_task_acc(s):
    """Mean accuracy on tasks 0-3 after the last task: what replay is for."""
    return float(np.mean(s["acc_matrix"][-1][:-1]))


@pytest.mark.parametrize("strategy", ["finetune", "joint", "der", "carm-sync"])
def test_other_strategies_run(tmp_path, strategy, finetune):
    s = finetune if strategy == "finetune" else \
        run(cfg(tmp_path, strategy=strategy, epochs=1, replay="der" if strategy == "carm-sync" else "er"))
    assert 0.0 <= s["final_avg_acc"] <= 1.0
    if strategy == "finetune":
        assert s["forgetting"] > 0.3  # the lower bound forgets
    if strategy == "joint":
        assert s["final_avg_acc"] > 0.6
    if strategy in ("der", "carm-sync"):
        # replay keeps the old tasks: same seed and data as finetune, which keeps nothing of them
        # (deterministic on the CPU; measured: finetune 0.00, der 0.52, carm-sync over DER++ 0.58)
        assert old_task_acc(s) > old_task_acc(finetune) + 0.3, (old_task_acc(s), old_task_acc(finetune))
        assert s["forgetting"] < finetune["forgetting"] - 0.2, (s["forgetting"], finetune["forgetting"])
    if strategy == "carm-sync":  # it swaps from task 1 on, and a synchronous swap is never dropped
        swaps = [r["swap"]["requested"] for r in s["per_task"]]
        assert swaps[0] == 0 and all(n > 0 for n in swaps[1:])
        assert s["swap"]["dropped"] == 0 and s["swap"]["completed"] == s["swap"]["requested"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("strategy", ["carm-sync", "der", "er"])
def test_a_run_resumed_from_a_checkpoint_is_the_run_that_never_stopped(tmp_path, strategy):
    """Crash right after a checkpoint (mid-task, and at a task boundary), resume: every random stream
    the run draws from -- torch, the RAM memory's, the swap draws, the flash tier's evictions --
    continues where it was, so the accuracy matrix equals the uninterrupted run's to the bit.
    Async carm is left out: which steps share a swap job depends on timing, by design."""
    kw = dict(strategy=strategy, flash_budget=200, checkpoint_every=20)  # the small budget evicts
    ref = run(cfg(tmp_path, **kw, run_dir=str(tmp_path / "ref")))
    for k in (3, 5):  # checkpoint 3: in task 1 (swaps and evictions running); 5: at task 1's end
        d = str(tmp_path / f"crash{k}")
        seen = []

        def crash(kind, payload, seen=seen, k=k):
            if kind == "checkpoint":
                seen.append(payload)
                if len(seen) == k:
                    raise Crash

        with pytest.raises(Crash):
            Experiment(cfg(tmp_path, **kw, run_dir=d), on_event=crash).run()
        resumed = Experiment.from_run_dir(d).run()
        assert resumed["acc_matrix"] == ref["acc_matrix"], (seen[-1], resumed["final_avg_acc"], ref["final_avg_acc"])
    assert seen[0]["batch"] > 0 and seen[-1]["batch"] == 0  # one of each kind of checkpoint


def test_online_single_pass(tmp_path):
    # a long swap group: the async swaps of up to MAX_GROUP consecutive steps go as one worker job
    s = run(cfg(tmp_path, strategy="carm", online=True, batch_size=10, swap_group_ms=1e4))
    sizes = s["stream"]["train_sizes"]
    assert s["steps"] == sum(-(-n // 10) for n in sizes)
    assert s["swap"]["completed"] > 0 and s["final_avg_acc"] > 0.2
    steps_with_swaps = s["steps"] - -(-sizes[0] // 10)
    assert steps_with_swaps / MAX_GROUP <= s["swap"]["jobs"] <= steps_with_swaps / MAX_GROUP + len(sizes), \
        (s["swap"]["jobs"], steps_with_swaps)


def test_bad_task_stops_before_storing_it(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (120, 1, 8, 8)).astype(np.float32) / 255
    y = np.arange(120) % 6
    stream = from_arrays("user", x, y, x, y, tasks=3)
    stream.validate_task(0)
    stream.validate_task(1)
    bad = stream.train[2][0].astype(np.float32)
    bad[7, 0, 0, 0] = np.inf
    stream.train[2] = (bad, stream.train[2][1])
    c = cfg(tmp_path, strategy="er", epochs=1)
    with pytest.raises(StreamError, match=r"task 2 \(train\), sample 7: holds NaN or inf"):
        run(c, stream=stream)
    with FlashTier(os.path.join(c.run_dir, "state"), readonly=True) as f:
        assert f.class_counts("samples").sum() == 80  # tasks 0 and 1 only; nothing of task 2
        assert f.get_meta("ingest_pos") == "1:1"  # the stream position did not move into task 2


def test_select_swap_out_hybrid_rule():
    # class 0: three correct (entropy low->high) + one wrong; class 1: two wrong
    logits = torch.tensor([[9.0, 0], [3, 0], [1, 0], [0, 2], [5, 0], [0.1, 0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    pick = select_swap_out(logits, labels, 0.5)  # 3 of 6: 2 for class 0, 1 for class 1
    assert sorted(pick.tolist()) == [0, 1, 5]  # class 0: lowest-entropy correct; class 1: least sure wrong
    pick = select_swap_out(logits, labels, 1.0)
    assert sorted(pick.tolist()) == [0, 1, 2, 3, 4, 5]
    assert select_swap_out(logits, labels, 0.0).size == 0
    only_wrong = select_swap_out(torch.tensor([[0.0, 5], [0, 1]]), torch.tensor([0, 0]), 0.5)
    assert only_wrong.tolist() == [1]  # among wrong ones, the highest entropy goes first


def test_select_swap_out_on_random_batches_keeps_the_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r, k = int(rng.integers(1, 40)), int(rng.integers(2, 12))
        logits, labels = rng.normal(0, 3, (r, k)), rng.integers(0, k, r)
        ratio = float(rng.choice([0.1, 0.25, 0.5, 1.0]))
        pick = select_swap_out(logits, labels, ratio)
        quota = int(round(ratio * r))
        assert pick.size == quota and np.unique(pick).size == pick.size
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ent = -(p * np.log(p)).sum(1)
        key = np.where(p.argmax(1) == labels, ent, 1e6 - ent)
        for c in np.unique(labels):
            members = np.nonzero(labels == c)[0]
            chosen = np.intersect1d(pick, members)
            share = quota * members.size / r
            assert np.floor(share) <= chosen.size <= np.ceil(share)  # proportional, largest remainders
            if chosen.size:  # the chosen ones are the class's first by the hybrid key
                assert key[chosen].max() <= np.sort(key[members])[chosen.size - 1] + 1e-9


def test_group_selection_is_each_steps_own_rule_and_refills_a_slot_once():
    rng = np.random.default_rng(1)
    batches = [(rng.normal(0, 3, (r, 6)), rng.integers(0, 6, r)) for r in (16, 16, 9, 1)]
    grouped = select_swap_out_many(batches, 0.5)
    assert [g.tolist() for g in grouped] == [select_swap_out(lg, lb, 0.5).tolist() for lg, lb in batches]
    # the head grew inside the group: rows of different widths are ranked apart, same answers
    mixed = batches[:2] + [(rng.normal(0, 3, (16, 8)), rng.integers(0, 8, 16))]
    assert [g.tolist() for g in select_swap_out_many(mixed, 0.5)] == \
        [select_swap_out(lg, lb, 0.5).tolist() for lg, lb in mixed]
    # two steps that replayed the same four slots (versions 1, then 2): the latest step picks by
    # the rule under its version; the earlier one passes over those and takes its next by the rule
    lg = torch.tensor([[5.0, 0], [4, 0], [0, 3], [0, 2]])
    lb = torch.tensor([0, 0, 1, 1])
    step1 = (np.array([7, 8, 9, 10]), lg, lb, np.array([1, 1, 1, 1]))
    step2 = (np.array([7, 8, 9, 10]), lg, lb, np.array([2, 2, 2, 2]))
    slots, classes, versions = choose_group([step1, step2], 0.5)
    assert slots.tolist() == [7, 9, 8, 10] and classes.tolist() == [0, 1, 0, 1]  # lowest entropy first
    assert versions.tolist() == [2, 2, 1, 1]
    # random groups: no slot twice, and as many slots as the steps' quotas allow
    for _ in range(50):
        em = int(rng.integers(4, 30))
        group = []
        for v in range(int(rng.integers(1, 6))):
            sl = rng.choice(em, size=min(em, 16), replace=False)
            logits, labels = rng.normal(0, 3, (sl.size, 5)), rng.integers(0, 5, sl.size)
            group.append((sl, torch.from_numpy(logits), torch.from_numpy(labels), np.full(sl.size, v)))
        slots, _, _ = choose_group(group, 0.5)
        assert np.unique(slots).size == slots.size
        assert slots.size >= min(round(0.5 * len(group[-1][0])), em)


def test_class_balanced_memory():
    mem = EpisodicMemory(12, (1, 2, 2), num_classes=6, seed=0)
    x = torch.zeros((1, 1, 2, 2), dtype=torch.uint8)
    for t in range(3):  # three tasks of two classes, 50 samples per class
        for i in range(100):
            mem.update(x, [2 * t + i % 2], [1000 * t + i], t)
        counts = mem.ram.class_counts(6)
        assert counts[: 2 * (t + 1)].tolist() == [12 // (2 * (t + 1))] * (2 * (t + 1)), counts
    assert mem.counts.tolist() == mem.ram.class_counts(6).tolist()
    assert mem.resize(6) == 6 and mem.ram.class_counts(6).tolist() == [1] * 6
