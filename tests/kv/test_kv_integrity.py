"""Two KV claims README made without a test: a cold block that fails its checksum during lossless
generation ends the step with an error naming the block (never wrong attention over bad bytes), and
the KV namespace's flash share (`kv.flash_bytes`) holds at its limit: a generation whose cold layers
need exactly the share is served, one byte more is refused by name, and stored prefixes stay within
what the share leaves them."""
import pytest
import torch

from miro_runtime.kv.cache import TieredKVCache
from miro_runtime.kv.llama import Llama, LlamaConfig
from miro_runtime.kv.service import KVService, KVShare
from miro_runtime.kv.sizes import kv_bytes
from miro_runtime.storage import CorruptRecordError, FlashTier

CFG = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=172)


def test_a_cold_block_failing_its_checksum_stops_generation_by_name(tmp_path):
    torch.manual_seed(0)
    model = Llama(CFG).eval()
    cold = FlashTier(str(tmp_path / "kv"))
    cache = TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim, cold=cold, hot_layers=[1], block_tokens=8)
    try:
        torch.set_grad_enabled(False)  # inference, as generate() runs it
        prompt = torch.randint(0, 256, (1, 33), generator=torch.Generator().manual_seed(1))
        logits = model(prompt, 0, cache)  # 4 full blocks of layer 0 go to the flash tier
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        key = cache.key(0, 2)
        db = cold._blob_db(cache.ns, False)
        from miro_runtime.storage.flash import blob_key
        with cold.env.begin(write=True) as txn:  # one bit of the stored block flips, as on a failing card
            raw = bytearray(txn.get(blob_key(key), db=db))
            raw[-5] ^= 0x10
            txn.put(blob_key(key), bytes(raw), db=db)
        with pytest.raises(CorruptRecordError) as e:
            model(nxt, cache.seen, cache)
        assert str(key) in str(e.value) or repr(key) in str(e.value)
    finally:
        torch.set_grad_enabled(True)
        cache.close()
        cold.close()


def test_the_flash_share_holds_at_its_limit(tmp_path):
    prompt, n = "the quick brown fox jumps over the lazy dog. " * 3, 8
    probe = KVService(str(tmp_path / "probe"), KVShare(flash_bytes=1 << 30, ram_bytes=1 << 30))
    _, model = probe._open()
    layer = kv_bytes(len(model.encode(prompt.encode())) + n, model.n_kv_heads, model.head_dim)
    probe.close()
    hot = layer * (model.n_layers // 2)  # half the layers hot: the other half's KV is cold
    need = layer * model.n_layers - hot
    at_limit = KVService(str(tmp_path / "at"), KVShare(flash_bytes=need, ram_bytes=hot, reuse_prefixes=False))
    try:
        res = at_limit.generate(prompt, n, "full", hot)
        assert res["new_tokens"] == n and res["cold_bytes"] > 0
    finally:
        at_limit.close()
    over = KVService(str(tmp_path / "over"), KVShare(flash_bytes=need - 1, ram_bytes=hot))
    try:
        with pytest.raises(ValueError, match=f"needs {need} B of cold KV.*kv.flash_bytes = {need - 1}"):
            over.generate(prompt, n, "full", hot)
        assert over.counters["errors"] == 1
    finally:
        over.close()
    # with prefixes kept, the stored prefixes stay within what the share leaves beside the cold layers
    share = need + 4096
    svc = KVService(str(tmp_path / "prefixes"), KVShare(flash_bytes=share, ram_bytes=hot, reuse_prefixes=True))
    try:
        for i in range(4):
            svc.generate(f"{i} " + prompt, n, "full", hot)
            st = svc.status()
            assert st["flash_prefix_bytes"] <= share - need and st["flash_cold_bytes"] == 0, st
    finally:
        svc.close()
