"""Bench options that would corrupt a figure are refused before any work starts (real subprocesses)."""

import json
import os
import subprocess
import sys

from conftest import PY, REPO

BENCH = os.path.join(REPO, "bench")


def test_rep_refuses_more_seeds_that_repeat_judged_seeds():
    # a seed run twice enters the paired REP - base figures twice: double weight and a standard error too small
    r = subprocess.run([PY, os.path.join(BENCH, "rep.py"), "--first-seed", "20", "--seeds", "5",
                        "--more-seeds", "l2p=23-30"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "seeds [23, 24] are already among --first-seed 20 --seeds 5" in r.stderr, r.stderr


def test_latent_judges_the_default_block_and_reads_older_results():
    sys.path.insert(0, BENCH)
    try:
        import latent
    finally:
        sys.path.remove(BENCH)
    from miro_runtime.engine.efficientnet import FREEZE

    def row(x):
        return {"acc": {"mean": x}}
    acc = {"er_full": row(0.60), "carm_latent_11": row(0.70), "joint_latent_11": row(0.80),
           "carm_latent_15": row(0.79), "joint_latent_15": row(0.82)}
    spd = {"ratio_vs_er_full": {"carm_latent_11": {"median": 4.0}, "carm_latent_15": {"median": 20.0}}}
    v = latent.verdicts(acc, spd)
    assert v["default_block"] == FREEZE == 15
    assert v["default_carm_latent_within_5_points_of_joint_latent"] is True  # block 15: -3 points
    assert v["carm_latent_11_within_5_points_of_joint_latent_11"] is False  # block 11: -10 points
    assert v["default_carm_latent_5x_er_full_at_equal_or_better_accuracy"] is True
    assert v["carm_latent_11_5x_er_full_at_equal_or_better_accuracy"] is False
    # the JSON of a run before the default moved names block 11's figures without a block
    old = {"carm_latent_within_5_points_of_joint_latent": False, "carm_minus_joint_points": -6.4}
    up = latent.upgrade(json.loads(json.dumps(old)))
    assert up["default_block"] == 11 and up["carm_minus_joint_points_11"] == -6.4
    assert up["carm_latent_11_within_5_points_of_joint_latent_11"] is False
