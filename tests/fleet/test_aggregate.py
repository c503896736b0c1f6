"""Class-aligned FedAvg (miro_runtime/fleet/aggregate.py): the global class registry, the weighting of shared
layers and of each head row, and replies that do not fit rejected by name, never averaged."""
import numpy as np
import pytest

from miro_runtime.fleet.aggregate import BoardUpdate, ClassRegistry, ReplyError, aggregate

D = 3  # feature width of the toy head


def board(name, labels, counts, rows=None, conv=None, **kw):
    rows = np.asarray(rows if rows is not None else [[float(v)] * D for v in labels], dtype=np.float32)
    arrays = {"conv.weight": np.full((2, 2), conv if conv is not None else 0.0, np.float32),
              "head.weight": rows, "head.bias": rows[:, 0].copy()}
    return BoardUpdate(name, arrays, list(labels), list(counts), ("head.weight", "head.bias"), **kw)


def test_registry_gives_each_client_label_one_slot_in_order_of_first_report():
    r = ClassRegistry()
    assert r.slots([7, 3]) == [0, 1] and r.slots([3, 9, 7]) == [1, 2, 0] and r.labels == [7, 3, 9]


def test_rows_align_by_class_not_by_position_and_weigh_by_that_classs_samples():
    # board a met 7 then 3; board b met 3 then 5: row 0 is another class on each
    a = board("a", [7, 3], [10, 30], rows=[[1.0] * D, [2.0] * D], conv=1.0)
    b = board("b", [3, 5], [10, 40], rows=[[6.0] * D, [9.0] * D], conv=5.0)
    g = aggregate([a, b], ClassRegistry())
    assert g.labels == [7, 3, 5] and g.counts == [10, 40, 40] and g.rejected == {}
    w = g.head["head.weight"]
    assert np.allclose(w[0], 1.0)  # class 7: board a's row alone, exactly
    assert np.allclose(w[1], (2.0 * 30 + 6.0 * 10) / 40)  # class 3: 30 samples on a, 10 on b
    assert np.allclose(w[2], 9.0)  # class 5: b's alone
    assert np.allclose(g.head["head.bias"], w[:, 0])
    # shared layers by each board's samples: 40 on a, 50 on b
    assert np.allclose(g.shared["conv.weight"], (1.0 * 40 + 5.0 * 50) / 90)
    assert g.shared["conv.weight"].dtype == np.float32
    # plain positional FedAvg would have averaged class 7 with class 3: what this avoids
    assert not np.allclose(w[0], (1.0 + 6.0) / 2)


def test_each_board_gets_its_own_rows_in_its_order_then_the_classes_it_may_adopt():
    g = aggregate([board("a", [7, 3], [1, 1]), board("b", [3, 5], [1, 1])], ClassRegistry())
    arrays, labels = g.for_board([3, 5])
    assert labels == [3, 5, 7]
    assert np.allclose(arrays["head.weight"][:, 0], [3.0, 5.0, 7.0]) and "conv.weight" in arrays
    with pytest.raises(ReplyError, match=r"labels \[42\] are not in the global registry"):
        g.for_board([42])


def test_the_registry_persists_across_rounds_and_a_missing_board_is_no_row():
    reg = ClassRegistry()
    aggregate([board("a", [7, 3], [1, 1]), board("b", [5], [1])], reg)
    g = aggregate([board("b", [5, 1], [2, 2])], reg)  # a is missing this round
    assert reg.labels == [7, 3, 5, 1]
    assert g.labels == [5, 1] and g.head["head.weight"].shape == (2, D)  # no weights for 7 and 3 this round


def test_a_class_nobody_has_samples_of_yet_is_the_plain_mean_of_its_rows():
    g = aggregate([board("a", [4], [0], rows=[[2.0] * D]), board("b", [4], [0], rows=[[4.0] * D])], ClassRegistry())
    assert np.allclose(g.head["head.weight"], 3.0) and np.allclose(g.shared["conv.weight"], 0.0)


def test_mismatched_replies_are_rejected_by_name_and_never_averaged():
    good = [board("a", [0, 1], [5, 5], conv=1.0), board("b", [1, 2], [5, 5], conv=3.0)]
    wide = board("c", [0], [5], rows=[[100.0] * (D + 1)], conv=100.0)  # another feature width
    g = aggregate(good + [wide], ClassRegistry())
    assert g.boards == ["a", "b"] and np.allclose(g.shared["conv.weight"], 2.0)
    assert "board 'c': array 'head.weight' has shape [1, 4] float32, the others [rows, 3] float32" == g.rejected["c"]
    assert np.all(g.head["head.weight"] < 100)

    one_row = board("d", [0], [5])  # a 1-row head beside 2-row ones: fine, rows align by class
    one_row.arrays["head.bias"] = np.zeros(2, np.float32)  # ...but its bias says 2 classes
    bad_conv = board("e", [3], [5])
    bad_conv.arrays["conv.weight"] = np.zeros((2, 3), np.float32)
    extra = board("f", [3], [5])
    extra.arrays["adapter"] = np.zeros(1, np.float32)
    dup = board("h", [3, 3], [1, 1])
    g = aggregate(good + [one_row, bad_conv, extra, dup], ClassRegistry())
    assert g.boards == ["a", "b"]
    assert "head array 'head.bias' has shape [2]: axis 0 must have one row per class (1)" in g.rejected["d"]
    assert "array 'conv.weight' has shape [2, 3] float32, the others [2, 2] float32" in g.rejected["e"]
    assert "arrays ['adapter'] are in its reply and in no other board's" in g.rejected["f"]
    assert "labels [3] appear more than once" in g.rejected["h"]

    with pytest.raises(ReplyError, match=r"1 usable replies, fewer than the round's minimum of 2 \(c: board 'c'"):
        aggregate([good[0], wide], ClassRegistry(), min_boards=2)


def test_the_expected_shape_is_the_majoritys_whatever_the_arrival_order():
    a, b = board("a", [0], [1]), board("b", [1], [1])
    odd = board("0-first-by-name", [2], [1], rows=[[1.0] * (D + 1)])  # sorts first, but alone
    for order in ([odd, a, b], [a, b, odd], [b, odd, a]):
        g = aggregate(order, ClassRegistry())
        assert sorted(g.boards) == ["a", "b"] and list(g.rejected) == ["0-first-by-name"]


def test_a_board_replying_twice_in_a_round_is_left_out():
    g = aggregate([board("a", [0], [1]), board("b", [1], [1]), board("a", [0], [9])], ClassRegistry())
    assert g.boards == ["b"] and "replied more than once" in g.rejected["a"]
