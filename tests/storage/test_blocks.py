"""The typed block interface over the RAM blob tier and the LMDB flash tier: batched futures,
budgets with eviction by policy objects, pins that survive pressure, a composite hot -> flash."""

import pytest

from miro_runtime.storage import FlashTier, RamBlobTier
from miro_runtime.storage.blocks import BlockKey, BlockStore, TieredBlocks
from miro_runtime.storage.errors import BudgetError
from miro_runtime.storage.eviction import LRU, SuffixFirst


def key(i, layer=0, model="m"):
    return BlockKey(model, layer, f"b{i}")


@pytest.fixture(params=["ram", "flash"])
def store(request, tmp_path):
    tier = RamBlobTier() if request.param == "ram" else FlashTier(str(tmp_path / "f"))
    s = BlockStore(tier, LRU, name=request.param)
    yield s
    s.close()
    if request.param == "flash":
        tier.close()


def test_batched_put_and_get_with_typed_keys(store):
    fut = store.put_many("kv", [(key(i), bytes([i]) * 100) for i in range(5)])
    assert fut.result() == []
    got = store.get_many("kv", [key(3), key(9), key(0)])
    assert got == [bytes([3]) * 100, None, bytes([0]) * 100]
    assert store.bytes_used("kv") == 500 and store.keys("kv")[0] == key(0)
    with pytest.raises(TypeError, match="BlockKey"):
        store.put_many("kv", [("raw", b"x")])
    assert BlockKey.decode(key(7, 3, "a/b").encode()) == key(7, 3, "a/b")


def test_lru_budget_evicts_the_least_recently_used_and_pins_survive(store):
    store.set_budget("kv", 300)
    store.put_many("kv", [(key(i), b"x" * 100) for i in range(3)]).result()
    store.pin("kv", key(0))
    store.get_many("kv", [key(1)])  # 1 is now more recent than 2
    evicted = store.put_many("kv", [(key(3), b"y" * 100)]).result()
    assert evicted == [key(2)]  # 0 is older but pinned
    evicted = store.put_many("kv", [(key(4), b"z" * 100)]).result()
    assert evicted == [key(1)] and store.contains("kv", key(0))
    with pytest.raises(BudgetError, match="pinned"):
        store.pin("kv", key(3))
        store.pin("kv", key(4))
        store.put_many("kv", [(key(5), b"w" * 150)]).result()
    store.unpin("kv", key(3))
    assert store.put_many("kv", [(key(5), b"w" * 100)]).result() == [key(3)]


def test_suffix_first_evicts_the_deepest_chunks():
    s = BlockStore(RamBlobTier(), SuffixFirst, budgets={"p": 400})
    for d in range(4):
        s.put_many("p", [(key(d), b"." * 100, {"depth": d})]).result()
    s.put_many("p", [(key(10), b"." * 100, {"depth": 1})]).result()
    assert key(3) not in s.keys("p") and {key(0), key(1), key(2), key(10)} == set(s.keys("p"))
    s.close()


def test_flash_blocks_outlive_the_process_view_and_keep_their_budget(tmp_path):
    tier = FlashTier(str(tmp_path / "f"))
    s = BlockStore(tier, LRU)
    s.put_many("kv", [(key(i), b"q" * 64) for i in range(4)]).result()
    s.close()
    tier.close()
    tier = FlashTier(str(tmp_path / "f"))
    s2 = BlockStore(tier, LRU, budgets={"kv": 128})
    assert s2.bytes_used("kv") == 256  # indexed at open
    assert len(s2.set_budget("kv", 128)) == 2 and s2.bytes_used("kv") == 128
    s2.close()
    tier.close()


def test_tiered_reads_walk_down_and_promote(tmp_path):
    flash_tier = FlashTier(str(tmp_path / "f"))
    hot = BlockStore(RamBlobTier(), LRU, budgets={"kv": 200}, name="hot")
    cold = BlockStore(flash_tier, LRU, name="flash")
    t = TieredBlocks([hot, cold])
    t.put_many("kv", [(key(i), bytes([i]) * 100) for i in range(4)])  # hot keeps the last two
    assert set(hot.keys("kv")) == {key(2), key(3)} and len(cold.keys("kv")) == 4
    assert t.get_many("kv", [key(0), key(3)]) == [bytes([0]) * 100, bytes([3]) * 100]
    assert t.hits == [1, 1] and hot.contains("kv", key(0))  # promoted
    assert t.get_many("kv", [key(0), key(9)]) == [bytes([0]) * 100, None] and t.misses == 1
    t.close()
    flash_tier.close()
