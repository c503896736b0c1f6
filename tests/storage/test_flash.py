"""Flash tier on real LMDB files: durability, crash safety, concurrency, budgets, bad input."""
import os
import signal
import subprocess
import textwrap
import time

import lmdb
import numpy as np
import pytest

from conftest import PY, REPO, fill_for
from miro_runtime.storage import (BadRecordError, BudgetError, CorruptRecordError, FlashTier, ForkError,
                                  SampleSpec, SchemaTooNewError, StoreError)

SHAPE = (1, 8, 8)


def open_store(path, **kw):
    budget = kw.pop("budget_records", None)
    policy = kw.pop("policy", "class-balanced")
    f = FlashTier(str(path), **kw)
    f.declare_samples("samples", SampleSpec(shape=SHAPE, num_classes=10, budget_records=budget, policy=policy))
    return f


def put(f, labels, task=0):
    n = len(labels)
    with f._id_lock:
        first = f._next_id["samples"]
    xs = [fill_for(first + i) for i in range(n)]
    return f.put_batch("samples", xs, labels, [task] * n)


def test_round_trip_and_restart(tmp_path):
    f = open_store(tmp_path)
    res = put(f, [i % 10 for i in range(100)], task=3)
    assert res.stored.all() and list(res.ids) == list(range(100))
    f.close()
    f = open_store(tmp_path)  # reopen: index rebuilt from the class database
    assert f.class_counts("samples").tolist() == [10] * 10
    recs = f.get_samples("samples", [0, 57, 99, 1000])
    assert recs[3] is None
    for sid, rec in zip([0, 57, 99], recs):
        assert rec.sample_id == sid and rec.label == sid % 10 and rec.task == 3
        assert rec.array.dtype == np.uint8 and rec.array.shape == SHAPE
        np.testing.assert_array_equal(rec.array, fill_for(sid))
    res = put(f, [1, 2])  # ids keep increasing after a restart
    assert list(res.ids) == [100, 101]
    assert sorted(np.concatenate([f.class_ids("samples", c) for c in range(10)]).tolist()) == list(range(102))
    f.close()


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import fill_for
    from miro_runtime.storage import FlashTier, SampleSpec
    f = FlashTier({path!r}, initial_map_bytes=1 << 16)
    f.declare_samples("samples", SampleSpec(shape=(1, 8, 8), num_classes=10))
    first = 0
    while True:
        n = 64
        f.put_batch("samples", [fill_for(first + i) for i in range(n)], [(first + i) % 10 for i in range(n)], [0] * n)
        print(first, n, flush=True)  # acknowledged: durable under sync mode
        first += n
""")


def test_sigkill_mid_ingest_loses_nothing_acknowledged(tmp_path):
    path = str(tmp_path / "store")
    child = subprocess.Popen([PY, "-c", WRITER.format(tests=os.path.join(REPO, "tests"), path=path)],
                             stdout=subprocess.PIPE, text=True)
    acked = []
    for line in child.stdout:
        first, n = map(int, line.split())
        acked.extend(range(first, first + n))
        if len(acked) >= 64 * 40:
            break
    child.send_signal(signal.SIGKILL)  # mid-ingest: the writer is already in its next batch
    child.wait()
    assert child.returncode == -signal.SIGKILL
    f = FlashTier(path)  # reopens cleanly (reader_check clears the dead process's slots)
    recs = f.get_samples("samples", acked)
    assert all(r is not None for r in recs), "an acknowledged sample was lost"
    for sid, r in zip(acked, recs):
        assert r.sample_id == sid and r.label == sid % 10
        np.testing.assert_array_equal(r.array, fill_for(sid))
    total = int(f.class_counts("samples").sum())
    assert total >= len(acked) and total % 64 == 0  # whole batches only: nothing half-written
    f.close()


READER = textwrap.dedent("""
    import sys, time, json, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import fill_for
    from miro_runtime.storage import FlashTier
    rng = np.random.default_rng(1)
    while True:
        try:
            f = FlashTier({path!r}, readonly=True); break
        except Exception:
            time.sleep(0.01)
    checked = 0; sizes = set(); deadline = time.time() + 60
    while time.time() < deadline:
        f.refresh()
        if "samples" not in f._specs:
            continue
        ids = np.concatenate([f.class_ids("samples", c) for c in range(10)])
        if ids.size == 0:
            continue
        sizes.add(int(ids.size))
        pick = rng.choice(ids, 32)
        for sid, r in zip(pick, f.get_samples("samples", pick)):
            assert r is not None and r.sample_id == sid and (r.array == sid % 251).all(), sid
            checked += 1
        if checked >= 1000 and len(sizes) >= 10:
            break
    print(json.dumps({{"checked": checked, "sizes": len(sizes), "map": f.env.info()["map_size"]}}))
""")


def test_concurrent_reader_process_during_writes_and_map_growth(tmp_path):
    import json
    path = str(tmp_path / "store")
    f = open_store(path, initial_map_bytes=1 << 16)  # tiny map: it must grow while the reader reads
    reader = subprocess.Popen([PY, "-c", READER.format(tests=os.path.join(REPO, "tests"), path=path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    map0 = f.env.info()["map_size"]
    for _ in range(3000):  # keep writing while the reader reads, then a little longer
        put(f, [i % 10 for i in range(64)])
        time.sleep(0.002)
        if reader.poll() is not None:
            break
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["checked"] >= 1000 and got["sizes"] >= 10  # it read while the store grew under it
    assert f.env.info()["map_size"] > map0
    assert got["map"] > map0  # the reader followed the writer's map growth
    f.close()


def test_map_growth_then_full_map_is_a_clear_error_and_no_partial_write(tmp_path):
    f = open_store(tmp_path, initial_map_bytes=1 << 16, max_map_bytes=1 << 20)
    put(f, [0] * 500)
    assert f.env.info()["map_size"] > 1 << 16
    before = f.class_counts("samples").copy()
    with pytest.raises(BudgetError, match="max_map_bytes"):
        for _ in range(100):
            put(f, [1] * 2000)
    after_fail = f.class_counts("samples").sum()
    f.close()
    f = open_store(tmp_path, initial_map_bytes=1 << 16, max_map_bytes=1 << 20)
    assert f.class_counts("samples").sum() == after_fail >= before.sum()
    assert (after_fail - before.sum()) % 2000 == 0  # only whole batches
    f.close()


def test_class_balanced_eviction_with_skewed_stream(tmp_path):
    f = open_store(tmp_path, budget_records=200)
    rng = np.random.default_rng(0)
    for t in range(5):  # class-incremental and skewed: class 2t gets 5x more samples
        labels = [2 * t] * 250 + [2 * t + 1] * 50
        put(f, list(rng.permutation(labels)), task=t)
    counts = f.class_counts("samples")
    assert counts.sum() == 200
    assert counts.max() - counts.min() <= 1, counts
    assert f.stats()["namespaces"]["samples"]["records"] == 200
    # the budget can shrink at run time; classes stay balanced and nothing else is touched
    evicted = f.set_budget("samples", budget_records=50)
    assert evicted == 150 and f.class_counts("samples").tolist() == [5] * 10
    ids = np.concatenate([f.class_ids("samples", c) for c in range(10)])
    assert all(r is not None for r in f.get_samples("samples", ids))
    f.close()
    f = open_store(tmp_path, budget_records=50)
    assert f.class_counts("samples").tolist() == [5] * 10
    f.close()


def test_reservoir_keeps_a_uniform_sample_of_the_stream(tmp_path):
    f = open_store(tmp_path, budget_records=300, policy="reservoir")
    for b in range(30):
        put(f, [b % 10] * 100)
    ids = np.concatenate([f.class_ids("samples", c) for c in range(10)])
    assert ids.size == 300
    # uniform over the 3000 seen: each third of the stream keeps about 100 (binomial sd ~8)
    thirds = np.bincount(ids // 1000, minlength=3)
    assert all(60 < t < 140 for t in thirds), thirds
    f.close()


@pytest.mark.parametrize("policy", ["class-balanced", "reservoir"])
def test_eviction_draws_survive_reopen_and_map_growth(tmp_path, policy):
    """What a store keeps does not depend on whether it was closed and reopened between batches
    (the eviction RNG's state is committed with the evictions it drew; the reopen's seed is not
    used) or had to grow its map in the middle of a batch (the retried transaction draws again
    from the same state). A resumed run relies on both."""
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 10, 200).tolist() for _ in range(6)]

    def kept(f):
        return sorted(np.concatenate([f.class_ids("samples", c) for c in range(10)]).tolist())

    def fill(name, reopen_each=False, **kw):
        f = None
        for i, b in enumerate(batches):
            if f is None or reopen_each:
                if f is not None:
                    f.close()
                f = open_store(tmp_path / name, budget_records=400, policy=policy, seed=5 if i == 0 else 99, **kw)
            put(f, b)
        f.set_budget("samples", budget_records=150)  # draws too
        out, grown = kept(f), f.env.info()["map_size"] > kw.get("initial_map_bytes", 1 << 62)
        f.close()
        return out, grown

    want, _ = fill("ref")
    assert len(want) == 150
    assert fill("reopened", reopen_each=True)[0] == want
    got, grown = fill("small-map", initial_map_bytes=1 << 16)
    assert grown and got == want

    env = lmdb.open(str(tmp_path / "ref"), max_dbs=64)  # a damaged state is named, not a traceback
    with env.begin(write=True) as txn:
        txn.put(b"eviction_rng", b"{not json", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="eviction_rng"):
        open_store(tmp_path / "ref")


def test_bad_input_is_rejected_and_nothing_is_written(tmp_path):
    f = open_store(tmp_path, budget_records=100)
    put(f, [0, 1, 2])
    with pytest.raises(BadRecordError, match="sample 1 of the batch.*float32"):
        f.put_batch("samples", [fill_for(0), fill_for(1).astype(np.float32)], [0, 1], [0, 0])
    with pytest.raises(BadRecordError, match=r"sample 0.*\[1, 8, 9\]"):
        f.put_batch("samples", [np.zeros((1, 8, 9), np.uint8)], [0], [0])
    with pytest.raises(BadRecordError, match="label 10 is outside the declared classes 0..9"):
        f.put_batch("samples", [fill_for(0), fill_for(1)], [3, 10], [0, 0])
    with pytest.raises(StoreError, match="no sample namespace 'nope'"):
        f.put_batch("nope", [fill_for(0)], [0], [0])
    assert f.class_counts("samples").sum() == 3
    tiny = FlashTier(str(tmp_path / "tiny"))
    tiny.declare_samples("samples", SampleSpec(shape=(3, 32, 32), num_classes=2, budget_bytes=1000))
    with pytest.raises(BudgetError, match="larger than the budget"):
        tiny.put_batch("samples", [np.zeros((3, 32, 32), np.uint8)], [0], [0])
    tiny.close()
    with pytest.raises(BadRecordError, match="holds uint8"):
        f.declare_samples("samples", SampleSpec(shape=(3, 8, 8), num_classes=10))
    f.close()


def test_corrupt_record_names_the_key(tmp_path):
    f = open_store(tmp_path)
    put(f, [0, 1, 2])
    raw = bytearray(f.get_samples("samples", [1])[0].array.tobytes())  # sanity: readable
    assert raw
    with f.env.begin(write=True) as txn:  # flip a payload byte under the store's feet
        db = f._db("samples.data")
        buf = bytearray(txn.get((1).to_bytes(8, "big"), db=db))
        buf[-1] ^= 0x55
        txn.put((1).to_bytes(8, "big"), bytes(buf), db=db)
    with pytest.raises(CorruptRecordError, match="samples/1.*crc32"):
        f.get_samples("samples", [1])
    assert f.get_samples("samples", [2])[0].sample_id == 2
    f.close()


def test_unwritable_state_dir_and_newer_schema(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create state directory"):
        FlashTier(str(blocker / "state"))
    f = open_store(tmp_path / "s")
    f.close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaTooNewError, match="schema 99"):
        FlashTier(str(tmp_path / "s"))
    with pytest.raises(StoreError, match="data.mdb missing"):
        FlashTier(str(tmp_path / "none"), readonly=True)


def test_environment_is_never_used_across_fork(tmp_path):
    f = open_store(tmp_path)
    put(f, [0])
    pid = os.fork()
    if pid == 0:  # child: any use must refuse, not corrupt the parent's environment
        try:
            f.get_samples("samples", [0])
        except ForkError:
            os._exit(7)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 7
    assert f.get_samples("samples", [0])[0].sample_id == 0
    f.close()


def test_sync_modes_and_unknown_mode(tmp_path):
    for mode in ("sync", "metasync-off", "nosync"):
        f = open_store(tmp_path / mode, sync_mode=mode)
        put(f, [1, 2])
        f.close()
        assert FlashTier(str(tmp_path / mode)).class_counts("samples").sum() == 2
    with pytest.raises(StoreError, match="sync mode 'fast'"):
        FlashTier(str(tmp_path / "x"), sync_mode="fast")


def test_generic_blob_namespace(tmp_path):
    from miro_runtime.storage import RamBlobTier
    f = FlashTier(str(tmp_path))
    for tier in (f, RamBlobTier()):
        tier.put("kv", b"layer0/page1", b"a" * 100)
        tier.put("kv", 42, b"b" * 10)
        tier.put("other", b"k", b"c")
        assert tier.get("kv", b"layer0/page1") == b"a" * 100 and tier.get("kv", 42) == b"b" * 10
        assert tier.contains("kv", 42) and not tier.contains("kv", 43)
        assert tier.bytes_used("kv") - tier.bytes_used("other") > 100
        assert tier.delete("kv", 42) and not tier.delete("kv", 42) and tier.get("kv", 42) is None
    f.close()
    assert FlashTier(str(tmp_path)).get("kv", b"layer0/page1") == b"a" * 100


def test_put_batches_writes_several_namespaces_in_one_transaction(tmp_path):
    """Latent replay's write: the raw samples and their latents (another shape and dtype) land together,
    with the same ids, or not at all; invalid data in the second namespace leaves both untouched."""
    from miro_runtime.storage import NsBatch
    f = open_store(tmp_path)
    f.declare_samples("latents", SampleSpec(shape=(4, 2, 3), dtype="float16", num_classes=10))
    xs = [fill_for(i) for i in range(6)]
    zs = [np.full((4, 2, 3), i / 8, np.float16) for i in range(6)]
    labels = [0, 1, 2, 0, 1, 2]
    out = f.put_batches([NsBatch("samples", xs, labels, [0] * 6), NsBatch("latents", zs, labels, [0] * 6)],
                        meta={"pos": "{first_id}:{stored}"})
    assert [r.ids.tolist() for r in out] == [list(range(6))] * 2
    assert f.get_meta("pos") == "0:6"
    bad = zs[:2] + [np.full((4, 2, 3), np.nan, np.float16)]
    with pytest.raises(BadRecordError, match="namespace 'latents', sample 2 of the batch holds NaN"):
        f.put_batches([NsBatch("samples", xs[:3], labels[:3], [1] * 3), NsBatch("latents", bad, labels[:3], [1] * 3)])
    with pytest.raises(BadRecordError, match="appears twice"):
        f.put_batches([NsBatch("samples", xs[:1], [0], [0]), NsBatch("samples", xs[:1], [0], [0])])
    f.close()
    f = open_store(tmp_path)
    f.declare_samples("latents", SampleSpec(shape=(4, 2, 3), dtype="float16", num_classes=10))
    for ns in ("samples", "latents"):
        assert f.class_counts(ns).sum() == 6 and f.seen(ns) == 6
    b = f.read_batch("latents", [5])
    assert b["x"].dtype == np.float16 and float(b["x"][0, 0, 0, 0]) == 5 / 8
    out = f.put_batches([NsBatch("samples", xs[:2], [3, 4], [1, 1]), NsBatch("latents", zs[:2], [3, 4], [1, 1])])
    assert [r.ids.tolist() for r in out] == [[6, 7], [6, 7]]  # the failed call drew no ids
    f.close()
