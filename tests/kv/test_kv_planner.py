"""The placement planner (OrbitFlow's ILP) against brute force, and its re-planning rule."""

import numpy as np
import pytest

from miro_runtime.kv.planner import LayerCost, Replanner, brute_force, plan, predicted_stall, stalls


def random_costs(rng, L, block=4096):
    return [LayerCost(int(rng.integers(1, 9)) * block, float(rng.uniform(0, 5e-3)), float(rng.uniform(0, 3e-3)))
            for _ in range(L)]


@pytest.mark.parametrize("seed", range(40))
def test_plan_equals_brute_force_on_small_instances(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 11))
    costs = random_costs(rng, L)
    total = sum(c.bytes for c in costs)
    budget = int(rng.integers(0, total + 1))
    p = plan(costs, budget)
    assert p.hot_bytes <= budget
    assert set(p.hot) | set(p.cold) == set(range(L)) and not set(p.hot) & set(p.cold)
    assert p.stall_s == pytest.approx(brute_force(costs, budget), abs=1e-12)
    assert p.stall_s == pytest.approx(predicted_stall(costs, p.hot))
    big = plan(costs, budget, max_cells=1)  # the MILP path: the same optimum
    assert big.method in ("milp", "all-hot") and big.stall_s == pytest.approx(p.stall_s, abs=1e-9)


def test_cost_model_and_edges():
    c = [LayerCost(10, 4e-3, 1e-3), LayerCost(10, 4e-3, 5e-3), LayerCost(10, 4e-3, 0.0)]
    assert stalls(c) == pytest.approx([4e-3, 3e-3, 0.0])  # layer 2's fetch hides under layer 1's compute
    assert plan(c, 10).hot == (0,)  # one layer fits: the one whose fetch shows most
    assert plan(c, 30).method == "all-hot" and plan(c, 0).hot == ()
    with pytest.raises(ValueError):
        plan(c, -1)
    with pytest.raises(ValueError):
        LayerCost(10, float("nan"))


def test_replanner_solves_again_only_when_needed():
    rp = Replanner(grow_tokens=64)
    f = lambda n: [LayerCost(n * 100, 1e-3 * (i + 1), 0.0) for i in range(4)]  # noqa: E731
    p1 = rp.get(f, 250, 1)
    assert rp.get(f, 250, 40) is p1 and rp.solves == 1
    rp.get(f, 250, 65)
    rp.get(f, 500, 65)
    assert rp.solves == 3
