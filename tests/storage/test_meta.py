"""The store's own metadata: every key and value of the meta database, every name in LMDB's table of
named databases and the class index, bit-flipped in a real file. Each is damage the store names at
open (never a new empty namespace), `verify` agrees, and a refused open leaves the file as it was."""
import hashlib
import json
import os
import shutil

import lmdb
import numpy as np
import pytest
from lmdb_pages import databases, flip

from miro_runtime.storage import DamagedStoreError, FlashTier, SampleSpec, StoreError
from miro_runtime.storage.integrity import verify
from miro_runtime.storage.meta import Manifest, digest_of, unseal


def small_store(path, batches=5):
    f = FlashTier(str(path))
    f.declare_samples("samples", SampleSpec(shape=(1, 4, 4), num_classes=3, budget_records=20))
    for b in range(batches):
        f.put_batch("samples", [np.full((1, 4, 4), b, np.uint8)] * 8, [0, 1, 2, 0, 1, 2, 0, 1], [0] * 8,
                    meta={"ingest_pos": f"0:{b + 1}"})
    f.set_meta("live/labels", json.dumps([7, 3, 5]))
    f.put("kv", b"k", b"blob")
    return f


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def flip_cases(path):
    """(what, file offset) for a bit in every meta key and value, every named DB's name, and a few
    class index keys."""
    dbs = databases(str(path / "data.mdb"))
    out = []
    for name, (node, _) in dbs.items():
        out.append((f"the name {name!r} in LMDB's table", node.key_at + len(node.key) // 2))
    for node in dbs["meta"][1]:
        out.append((f"meta key {node.key!r}", node.key_at + len(node.key) - 1))
        out.append((f"meta value of {node.key!r}", node.value_at + node.value_size - 1))
    for node in dbs["samples.class"][1][::7]:
        out.append((f"class index key {node.key.hex()}", node.key_at + 3))  # the class field
    return out


def test_every_metadata_flip_is_named_at_open_and_verify_agrees(tmp_path):
    small_store(tmp_path / "base").close()
    cases = flip_cases(tmp_path / "base")
    assert len(cases) > 25
    for i, (what, off) in enumerate(cases):
        d = tmp_path / f"c{i}"
        shutil.copytree(tmp_path / "base", d)
        flip(str(d / "data.mdb"), off, i % 8)
        before = sha(d / "data.mdb")
        with pytest.raises(StoreError) as e:
            FlashTier(str(d)).close()  # writable: it must refuse before writing anything
        msg = str(e.value)
        assert "miro store verify" in msg and "salvage" in msg, (what, msg)
        assert sha(d / "data.mdb") == before, f"{what}: a refused open wrote to the store"
        with pytest.raises(StoreError):
            FlashTier(str(d), readonly=True).close()
        assert not verify(str(d))["ok"], f"{what}: open refuses, verify calls it intact"
        shutil.rmtree(d)


def test_a_misspelt_namespace_is_damage_never_a_new_empty_one(tmp_path):
    small_store(tmp_path).close()
    node = databases(str(tmp_path / "data.mdb"))["samples.data"][0]
    flip(str(tmp_path / "data.mdb"), node.key_at + 3, 2)  # the case: 'samples.data' -> 'samtles.data'
    for ro in (True, False):
        with pytest.raises(DamagedStoreError, match="'samtles.data' is not accounted for.*'samples.data' of a "
                                                    "declared namespace is missing"):
            FlashTier(str(tmp_path), readonly=ro)
    rep = verify(str(tmp_path))
    assert not rep["ok"] and any("samtles.data" in e for e in rep["errors"])


def test_the_manifest_follows_adds_and_evictions_and_is_checked_at_open(tmp_path):
    f = small_store(tmp_path)
    m = f.manifest("samples")
    ids_by_class = [f.class_ids("samples", c) for c in range(3)]
    assert m == Manifest.of_index(ids_by_class, 40) and m.count == 20 and m.seen == 40
    assert f.manifest_at("samples", 40) == [m] and len(f.manifest_at("samples", 16)) == 1
    f.set_budget("samples", budget_records=10)  # evictions with nothing new: a second entry at 40
    assert f.manifest("samples").count == 10 and len(f.manifest_at("samples", 40)) == 2
    f.prune_manifest_log({"samples": 40})
    assert f.manifest_at("samples", 16) == [] and len(f.manifest_at("samples", 40)) == 2
    f.close()
    f = FlashTier(str(tmp_path), readonly=True)
    assert f.manifest("samples").count == 10
    f.close()
    env = lmdb.open(str(tmp_path), max_dbs=64)  # one index entry and its record gone, counts untouched
    with env.begin(write=True) as txn:
        cls_db, data_db = env.open_db(b"samples.class", txn=txn), env.open_db(b"samples.data", txn=txn)
        k = next(iter(txn.cursor(db=cls_db).iternext(values=False)))
        txn.delete(k, db=cls_db)
        txn.delete(k[4:], db=data_db)
    env.close()
    with pytest.raises(DamagedStoreError, match="manifest disagrees|meta counts"):
        FlashTier(str(tmp_path), readonly=True)
    assert not verify(str(tmp_path))["ok"]


def test_digest_is_order_independent_and_sensitive():
    a = digest_of([1, 2, 3], [0, 1, 2])
    assert a == digest_of([3, 1, 2], [2, 0, 1]) and a != digest_of([1, 2, 3], [0, 1, 1])
    assert (digest_of([1, 2], [0, 1]) + digest_of([3], [2])) % 2**64 == a


def test_a_schema_1_store_opens_and_is_sealed_on_its_first_writable_open(tmp_path):
    small_store(tmp_path).close()
    env = lmdb.open(str(tmp_path), max_dbs=64)  # turn it into what the previous code wrote
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        for k, v in list(txn.cursor(db=meta)):
            k = bytes(k)
            if b"/manifest" in k or b"/mlog/" in k:
                txn.delete(k, db=meta)
            else:
                txn.put(k, unseal(k.decode(), v, sealed=True).encode(), db=meta)
        txn.put(b"schema_version", b"1", db=meta)
    env.close()
    before = sha(tmp_path / "data.mdb")
    f = FlashTier(str(tmp_path), readonly=True)  # read as legacy, nothing written
    assert f.class_counts("samples").sum() == 20 and f.get_meta("ingest_pos") == "0:5"
    f.close()
    assert sha(tmp_path / "data.mdb") == before and verify(str(tmp_path))["ok"]
    f = FlashTier(str(tmp_path))
    assert f.manifest("samples").count == 20 and f.get_meta("live/labels") == "[7, 3, 5]"
    f.close()
    env = lmdb.open(str(tmp_path), max_dbs=64, readonly=True)
    with env.begin() as txn:
        raw = dict(txn.cursor(db=env.open_db(b"meta", txn=txn)))
    env.close()
    assert all(bytes(v).startswith(b"\x00MC") for v in raw.values()) and b"ns/samples/manifest" in raw
    assert verify(str(tmp_path))["ok"]
    f = FlashTier(str(tmp_path))  # sealed now: a value without its crc is damage
    f.close()
    env = lmdb.open(str(tmp_path), max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(b"user/ingest_pos", b"0:9", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(DamagedStoreError, match="'user/ingest_pos': no crc"):
        FlashTier(str(tmp_path), readonly=True)
    assert os.path.exists(tmp_path / "data.mdb")
