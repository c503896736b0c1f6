"""RAM tier slots and the asynchronous swap engine, with real threads over a real LMDB store."""
import threading
import time

import numpy as np
import pytest
import torch

from conftest import fill_for
from miro_runtime.storage import BadRecordError, FlashTier, RamTier, SampleSpec, SwapEngine

SHAPE = (3, 32, 32)


@pytest.fixture
def flash(tmp_path):
    f = FlashTier(str(tmp_path))
    f.declare_samples("samples", SampleSpec(shape=SHAPE, num_classes=10))
    n = 2000
    f.put_batch("samples", [fill_for(i, SHAPE) for i in range(n)], [i % 10 for i in range(n)], [0] * n)
    yield f
    f.close()


def filled_ram(capacity, shape=SHAPE, labels=None):
    ram = RamTier(capacity, shape)
    for i in range(capacity):
        sid = 100000 + i
        ram.append(torch.from_numpy(fill_for(sid, shape)), (labels[i] if labels else i % 10), sid)
    return ram


def test_ram_tier_replace_gather_and_bad_shape():
    ram = RamTier(4, (1, 2, 2))
    assert ram.append(torch.ones(1, 2, 2, dtype=torch.uint8), 3, 11) == 0
    assert ram.append(torch.ones(1, 2, 2, dtype=torch.uint8) * 2, 4, 12) == 1
    assert ram.replace(0, torch.full((1, 2, 2), 9, dtype=torch.uint8), 5, 13)
    assert not ram.replace(3, torch.zeros(1, 2, 2, dtype=torch.uint8), 1, 1)  # slot not filled
    g = ram.gather([1, 0])
    assert g["y"].tolist() == [4, 5] and g["ids"].tolist() == [12, 13] and int(g["x"][1].max()) == 9
    with pytest.raises(BadRecordError, match="holds torch.uint8"):
        ram.append(torch.ones(1, 2, 3, dtype=torch.uint8), 0)
    with pytest.raises(IndexError):
        ram.gather([2])
    assert ram.contains(13) and not ram.contains(11)


def test_resize_keeps_samples_that_fit_and_class_balance():
    labels = [0] * 12 + [1] * 4 + [2] * 4
    ram = filled_ram(20, (1, 4, 4), labels)
    before = {int(i) for i in ram.ids_snapshot()}
    dropped = ram.resize(9)
    assert dropped == 11 and ram.size == 9 and ram.capacity == 9
    assert ram.class_counts(3).tolist() == [3, 3, 3]  # dropped from the largest class first
    ids = ram.ids_snapshot()
    assert set(ids.tolist()) <= before
    for slot, sid in enumerate(ids):  # each kept slot still holds its own bytes and label
        g = ram.gather([slot])
        assert (g["x"] == sid % 251).all() and int(g["y"][0]) == labels[sid - 100000]
    ram.resize(30)
    assert ram.capacity == 30 and ram.size == 9 and set(ram.ids_snapshot()) == set(ids)
    assert ram.append(torch.zeros(1, 4, 4, dtype=torch.uint8), 2, 5) == 9


def test_swap_fills_slots_with_samples_of_the_requested_class(flash):
    ram = filled_ram(20)
    eng = SwapEngine(flash, ram, workers=2)
    assert eng.request_swap([0, 1, 2, 3], [7, 7, 3, 9])
    assert eng.drain(10)
    g = ram.gather([0, 1, 2, 3])
    assert g["y"].tolist() == [7, 7, 3, 9]
    assert all(sid < 2000 and sid % 10 == c for sid, c in zip(g["ids"], [7, 7, 3, 9]))
    assert len(set(g["ids"][:2].tolist())) == 2  # distinct samples for one class
    st = eng.stats()
    assert st["requested"] == 4 and st["completed"] == 4 and st["bytes_read"] == 4 * 3 * 32 * 32
    eng.close()


def test_swap_never_yields_a_torn_sample_under_concurrent_reads(flash):
    ram = filled_ram(32)
    eng = SwapEngine(flash, ram, workers=2, max_queue=8)
    stop = threading.Event()

    def feeder():
        rng = np.random.default_rng(1)
        while not stop.is_set():
            slots = rng.choice(32, 8, replace=False)
            if not eng.request_swap(slots, rng.integers(0, 10, 8)):
                time.sleep(0.0005)

    t = threading.Thread(target=feeder)
    t.start()
    rng = np.random.default_rng(2)
    checked, deadline = 0, time.monotonic() + 2.0
    while time.monotonic() < deadline:  # a training loop gathering replay batches
        g = ram.gather(rng.choice(32, 16, replace=False))
        for x, y, sid in zip(g["x"], g["y"], g["ids"]):
            assert int(x.min()) == int(x.max()) == sid % 251, "torn sample"
            # a swapped-in sample has its flash label (sid % 10 in the fixture); an original RAM sample
            # the label filled_ram gave slot i = sid - 100000 (i % 10)
            assert int(y) == (sid % 10 if sid < 100000 else (sid - 100000) % 10), (int(y), int(sid))
            checked += 1
    stop.set()
    t.join()
    eng.drain(10)
    st = eng.stats()
    eng.close()
    assert checked > 1000 and st["completed"] > 500
    assert st["requested"] == st["completed"] + st["dropped"]


def test_swap_is_dropped_not_blocking_when_the_queue_is_full(flash):
    ram = filled_ram(8)
    eng = SwapEngine(flash, ram, workers=1, max_queue=1)
    eng.pause()  # the worker holds one job; the queue holds one more
    t0 = time.perf_counter()
    results = [eng.request_swap([i % 8], [1]) for i in range(10)]
    assert time.perf_counter() - t0 < 1.0
    assert results.count(False) >= 8 and eng.stats()["dropped"] >= 8
    eng.resume()
    assert eng.drain(10)
    eng.close()


def test_resize_during_swaps_drops_stale_requests(flash):
    ram = filled_ram(16)
    eng = SwapEngine(flash, ram, workers=1)
    eng.pause()
    eng.request_swap([12, 13, 14, 15], [1, 1, 1, 1])
    ram.resize(8)
    eng.resume()
    eng.drain(10)
    assert eng.stats()["completed"] == 0 and ram.size == 8
    assert eng.swap_now([0, 1], [4, 4]) == 2 and ram.gather([0, 1])["y"].tolist() == [4, 4]
    eng.close()


def test_swap_skips_a_slot_rewritten_after_the_request(flash):
    ram = filled_ram(8)
    eng = SwapEngine(flash, ram, workers=1)
    versions = ram.gather([2, 3])["versions"]
    eng.pause()
    eng.request_swap([2, 3], [5, 5], versions=versions)
    # the memory's own insertion rewrites slot 2 before the worker gets there
    ram.replace(2, torch.from_numpy(fill_for(7, SHAPE)), 1, 7)
    eng.resume()
    eng.drain(10)
    g = ram.gather([2, 3])
    assert g["ids"][0] == 7 and int(g["y"][0]) == 1  # untouched by the stale swap
    assert int(g["y"][1]) == 5 and eng.stats()["completed"] == 1 and eng.stats()["dropped"] == 1
    eng.close()


def test_class_index_draw_is_per_class_distinct_and_avoids_ram():
    from miro_runtime.storage.flash import ClassIndex
    idx = ClassIndex.from_pools({0: np.arange(0, 50), 1: np.arange(100, 103), 3: np.arange(300, 400)})
    rng = np.random.default_rng(0)
    classes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 9])  # class 2 has nothing stored, class 9 is unknown
    in_ram_picks = filled = 0
    for _ in range(300):
        in_ram = rng.choice(np.arange(0, 50), 10, replace=False)
        ids = idx.draw(classes, rng, np.concatenate([in_ram, [100, 101]]))
        assert ids[5] == -1 and ids[8] == -1
        got = ids[ids >= 0]
        assert np.unique(got).size == got.size  # never the same sample into two slots
        for c, i in zip(classes, ids):
            assert i == -1 or i in idx.ids[c]
        in_ram_picks += int(np.isin(ids[:3], in_ram).sum())
        filled += int((ids[[0, 1, 2, 6, 7]] >= 0).sum())
    assert in_ram_picks / 900 < 0.03  # class 0 has 40 samples not in RAM: those are drawn
    assert filled == 300 * 5  # classes with plenty stored fill every slot
