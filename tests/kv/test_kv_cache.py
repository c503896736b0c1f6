"""The tiered KV cache's lossless policy: greedy generation of the built-in Llama-style decoder is
token-identical to recomputing without a cache, with any number of layers' KV in a real LMDB flash
tier or the RAM blob tier."""

import pytest
import torch

from miro_runtime.kv.cache import TieredKVCache
from miro_runtime.kv.llama import Llama, LlamaConfig, generate
from miro_runtime.storage import FlashTier, RamBlobTier

CFG = LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=172)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Llama(CFG).eval()


@pytest.fixture(scope="module")
def reference(model):
    prompt = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    return prompt, generate(model, prompt, 20)


@pytest.mark.parametrize("cold_layers", [(), (1, 3), (0, 1, 2, 3)])
@pytest.mark.parametrize("tier", ["flash", "ram"])
def test_full_policy_is_token_identical_to_recompute(model, reference, tmp_path, cold_layers, tier):
    prompt, want = reference
    cold = FlashTier(str(tmp_path / "kv")) if tier == "flash" else RamBlobTier()
    cache = TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim, cold=cold,
                          hot_layers=[i for i in range(CFG.n_layers) if i not in cold_layers], block_tokens=8)
    try:
        got = generate(model, prompt, 20, cache)
        assert torch.equal(got, want)
        assert cache.seen == 37 + 19  # prompt + every generated token but the last (never fed back)
        if cold_layers:
            assert cache.stats["written_blocks"] == len(cold_layers) * (56 // 8)
            assert cache.cold_bytes() > 0 and cache.stats["fetches"] > 0
            assert cold.bytes_used("kv") >= cache.cold_bytes()
        all_hot = 2 * 2 * CFG.n_kv_heads * cache.seen * CFG.head_dim * 4 * CFG.n_layers
        tails = 2 * 2 * CFG.n_kv_heads * (cache.seen % 8) * CFG.head_dim * 4 * len(cold_layers)
        assert cache.hot_bytes() == all_hot * (CFG.n_layers - len(cold_layers)) // CFG.n_layers + tails
    finally:
        cache.close()
        if tier == "flash":
            cold.close()


def test_chunked_prefill_matches_one_shot(model):
    """Prompt fed in chunks through the cache gives the same last logits as one pass without it."""
    prompt = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(prompt)[:, -1]
        cache = TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim, cold=RamBlobTier(), hot_layers=[0, 2],
                              block_tokens=16)
        for s in range(0, 50, 13):
            out = model(prompt[:, s:s + 13], s, cache)
        cache.close()
    assert torch.allclose(out[:, -1], ref, atol=1e-5)


def test_moving_layers_between_hot_and_cold_mid_generation_stays_lossless(model, reference, tmp_path):
    """What a re-plan does: layers go down to the LMDB tier and come back up between decode steps."""
    prompt, want = reference
    tier = FlashTier(str(tmp_path / "kv"))
    cache = TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim, cold=tier, hot_layers=[0, 1, 2, 3],
                          block_tokens=8)
    try:
        out = []
        with torch.no_grad():
            logits = model(prompt, 0, cache)
            for i in range(20):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
                if i == 5:
                    assert cache.set_hot([0, 2]) == {"demoted": [1, 3], "promoted": []}
                    assert cache.cold_bytes() > 0 and tier.bytes_used("kv") >= cache.cold_bytes()
                if i == 12:
                    assert cache.set_hot([0, 1, 2]) == {"demoted": [], "promoted": [1]}
                logits = model(nxt, cache.seen, cache)
        assert torch.equal(torch.cat(out, dim=1), want)
        assert cache.hot == {0, 1, 2} and cache._blocks[1] == 0  # promoted: its blocks left the tier
    finally:
        cache.close()
        tier.close()


def test_generation_replans_as_the_sequence_grows_within_the_budget():
    from miro_runtime.kv.generate import run_generate
    prompt = b"a forty-byte prompt for the re-planner.."
    want = run_generate("builtin-tiny", prompt, 120)["tokens"]
    per_layer_token = 2 * 2 * 32 * 4  # builtin-tiny: K and V, 2 KV heads of 32, float32
    budget = 4 * per_layer_token * 15 + 3 * per_layer_token * 56  # tails, then three layers at 56 tokens
    got = run_generate("builtin-tiny", prompt, 120, hot_budget=budget)
    assert got["tokens"] == want and got["peak_hot_bytes"] <= budget  # at every decode step
    assert got["placement"]["solves"] > 4 and got["cold_bytes"] > 0  # solved again as the sequence grew


def test_cold_layers_need_a_tier():
    with pytest.raises(ValueError, match="cold tier"):
        TieredKVCache(2, 1, 8, hot_layers=[0])


# ---------------------------------------------------------------- lossy policies
from miro_runtime.kv.policies import make_policy  # noqa: E402


from functools import partial  # noqa: E402

from miro_runtime.kv.llama import rope  # noqa: E402

LOSSY = ["sink", "h2o", "cascade", "topk"]


PAPER = {"span": 1, "per_head": True}  # cascade's options for the paper's rule (its defaults depart from it)


def lossy_cache(policy, budget, **kw):
    return TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim, policy=make_policy(policy, **kw),
                         hot_budget=budget, block_tokens=8, rope=partial(rope, theta=CFG.rope_theta))


@pytest.mark.parametrize("policy", LOSSY)
def test_lossy_policies_equal_full_while_everything_fits(model, reference, policy):
    prompt, want = reference
    per_token = 2 * 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers  # K and V, batch 2, float32
    # 56 tokens < 64: nothing evicted; topk: k covers every block, so attention sees them all
    cache = lossy_cache(policy, per_token * 64, **({"k": 8} if policy == "topk" else {}))
    try:
        assert torch.equal(generate(model, prompt, 20, cache), want)
    finally:
        cache.close()


@pytest.mark.parametrize("policy", LOSSY)
def test_a_prompt_shorter_than_one_block_works_under_every_policy(model, policy):
    """A 5-token prompt in 8-token blocks: no block is finished when the prefill runs (topk then has no
    block to choose and no representative yet), and the answer still equals recomputing."""
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    per_token = 2 * 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers
    cache = lossy_cache(policy, per_token * 64, **({"k": 8} if policy == "topk" else {}))
    try:
        assert torch.equal(generate(model, prompt, 12, cache), generate(model, prompt, 12))
    finally:
        cache.close()


@pytest.mark.parametrize("policy", [*LOSSY, "cascade/paper"])
def test_hot_memory_never_exceeds_the_budget_and_masks_stay_causal(model, policy, monkeypatch):
    per_token = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers  # batch 1
    budget = per_token * (64 if policy == "topk" else 48) + 100  # topk's block bounds take their share too
    policy, paper = policy.split("/")[0], policy.endswith("/paper")
    cache = lossy_cache(policy, budget, **(PAPER if paper else {}))
    seen_masks = []
    real_update = cache.update

    def spy(layer, k, v, q=None):
        K, V, krope, kabs = real_update(layer, k, v, q=q)
        T = k.shape[2]
        rows = kabs.view(-1, kabs.shape[-1])  # the paper's cascade: a row per KV head, each its own tokens
        seen_masks.extend((r.clone(), T) for r in rows)
        assert cache.hot_bytes() <= budget  # at every layer of every step, prefill chunks included
        assert rows.shape[0] == (CFG.n_kv_heads if paper else 1)
        for r in rows:
            assert torch.equal(r, r.sort().values) and len(set(r.tolist())) == len(r)
            if policy in ("sink", "cascade"):
                assert torch.equal(krope, torch.arange(len(r)))  # StreamingLLM's positions: place in the cache
                assert r[: min(4, len(r) - T)].tolist() == list(range(min(4, len(r) - T)))  # sinks kept
            else:
                assert torch.equal(krope, r)
        return K, V, krope, kabs
    monkeypatch.setattr(cache, "update", spy)
    prompt = torch.randint(0, 256, (1, 150), generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad():
            step = cache.capacity_hint(150) if policy == "topk" else 20
            for s in range(0, 150, step):  # chunked prefill past the capacity: evictions between chunks
                model(prompt[:, s:s + step], s, cache)
            for i in range(30):  # decode
                model(prompt[:, i:i + 1], 150 + i, cache)
    finally:
        cache.close()
    assert cache.seen == 180
    # the new tokens are always the cache's last T, at their own absolute positions
    assert all(kabs[-T:].tolist() == list(range(int(kabs[-1]) - T + 1, int(kabs[-1]) + 1)) for kabs, T in seen_masks)
    if policy == "topk":  # every block went to the cold tier; attention saw only some of them
        assert cache.cold_bytes() == 2 * CFG.n_kv_heads * 8 * CFG.head_dim * 4 * CFG.n_layers * (180 // 8)
        assert max(len(kabs) for kabs, _ in seen_masks[-CFG.n_layers:]) < 180
    else:
        assert cache.capacity == 48
        with pytest.raises(ValueError, match="does not fit"):
            with torch.no_grad():
                model(prompt[:, :60], 180, cache)  # a chunk larger than the capacity is refused by name


def test_policies_keep_what_their_papers_keep():
    from miro_runtime.kv.policies import H2O, Cascade, Sink
    from miro_runtime.kv.policies.topk import select_blocks
    pos = torch.arange(10)
    assert Sink(sinks=2).keep(pos, None, 5).tolist() == [0, 1, 7, 8, 9]
    scores = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert H2O(recent=3).keep(pos, scores, 5).tolist() == [1, 3, 7, 8, 9]  # two heavy hitters + 3 recent
    # cascade: 1 sink, 3 levels of 14 // 3 slots; after 200 equal-score tokens level i's tokens are 2^i apart
    # (a tie keeps the resident), so the 15 kept tokens reach back much further than a recent window of 15
    c = Cascade(sinks=1, levels=3, beta=0.5, **PAPER)
    for t in range(1, 201):
        kept = c.keep(torch.arange(t), torch.zeros(t), 15)
    assert len(kept) == 15 and kept[0] == 0
    for level, q in enumerate(c.lanes[0].sub):
        gaps = set(torch.tensor(list(q)).diff().tolist())
        assert gaps == {2 ** level}, (level, list(q))
    assert int(kept[1]) <= 200 - (6 + 4 * 2 + 4 * 4) + 2  # sizes [6, 4, 4]: a recent window would start at 186
    # the paper's acceptance rule, by hand: 1 sink, 2 sub-caches of 2; sub-cache 1 accepts on even steps
    # (token p enters sub-cache 0 on step p - 1), and every step before the 4 slots have been full once.
    # Step 2: 1 is evicted to sub-cache 1, accepted. Step 3: 2 arrives on an odd step, still in the first
    # fill: accepted -> [1, 2]. Step 4: 3 accepted, 1 falls off the last level -> [2, 3]. Step 5: 4 loses to
    # 3, dropped. Step 6: 5 accepted, 2 falls off -> [3, 5]. Step 7: 6 beats 5 by score -> [3, 6].
    # Step 8: 7 accepted, 3 falls off -> [6, 7]; sub-cache 0 holds [8, 9].
    score = torch.tensor([0.0, 0.1, 0.9, 0.5, 0.05, 0.2, 0.8, 0.0, 0.0, 0.0])
    c = Cascade(sinks=1, levels=2, beta=0.5, **PAPER)
    for t in range(1, 11):
        kept = c.keep(torch.arange(t), score[:t], 5)
        if t == 5:
            assert list(c.lanes[0].sub[1]) == [1, 2]  # the first fill: a sliding window
        if t == 7:
            assert list(c.lanes[0].sub[1]) == [2, 3]  # 4 lost to 3
    assert kept.tolist() == [0, 6, 7, 8, 9] and list(c.lanes[0].sub[1]) == [6, 7] and c.lanes[0].step == 9
    # topk: the block whose bound (per-channel max and min of its keys) matches the query wins, groups first
    reps = torch.zeros(1, 1, 9, 2, 4)
    reps[0, 0, 5, 0] = torch.tensor([1.0, 0, 0, 0])
    reps[0, 0, 2, 0] = torch.tensor([0.5, 0, 0, 0])
    reps[0, 0, 7, 1] = torch.tensor([0, -3.0, 0, 0])  # a large negative key channel: a match for a negative query
    q = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 1, 4)
    assert select_blocks(q, reps, 0, 9, 1, 2) == [5]  # the tree: [0-7] [8], then [4-7], [4, 5], then 5
    assert select_blocks(q, reps, 0, 9, 2, 2) == [2, 5]
    assert select_blocks(-q.roll(1, -1), reps, 0, 9, 1, 2) == [7]
    both = torch.tensor([1.0, -1.0, 0, 0]).view(1, 1, 1, 4)  # scores: block 7 3.0, block 5 1.0, block 2 0.5
    assert [select_blocks(both, reps, 0, hi, 1, 2) for hi in (9, 7, 5)] == [[7], [5], [2]]  # candidates only
    # a wider beam above the blocks reaches a block whose parent's (loose) bound ranks second: blocks 0 and 1
    # each match one channel of q (1.0 each), so their parent bounds 2.0; block 2 matches both at 0.9 (1.8)
    loose = torch.zeros(1, 1, 4, 2, 2)
    loose[0, 0, 0, 0], loose[0, 0, 1, 0], loose[0, 0, 2, 0] = torch.tensor([1.0, 0]), torch.tensor([0, 1.0]), 0.9
    q2 = torch.ones(1, 1, 1, 2)
    assert select_blocks(q2, loose, 0, 4, 1, 2) in ([0], [1])  # beam 1: into the parent with the larger bound
    assert select_blocks(q2, loose, 0, 4, 1, 2, beam=2) == [2]  # beam 2: both parents, the best block
    # deep in a long context (1000 blocks, 5 levels of 4), the search still finds the one matching block
    big = torch.zeros(1, 1, 1000, 2, 4)
    big[0, 0, 613, 0, 2] = 2.0
    assert 613 in select_blocks(torch.tensor([0, 0, 1.0, 0]).view(1, 1, 1, 4), big, 1, 998, 2, 4)
    # the bound holds: no key of a block scores above it
    keys = torch.randn(1, 1, 16, 4)
    bound = torch.stack([keys.amax(dim=2), keys.amin(dim=2)], dim=2)  # (1, 1, 2, 4)
    qq = torch.randn(4)
    assert float((keys[0, 0] @ qq).max()) <= float(torch.maximum(qq * bound[0, 0, 0], qq * bound[0, 0, 1]).sum()) + 1e-6
    with pytest.raises(ValueError, match="--policy lru: not a KV policy"):
        make_policy("lru")


def test_topk_holds_a_bounded_bank_and_log_many_bounds(model, monkeypatch):
    """HiP's residency: past its sink and recent blocks a layer holds at most ``slots`` blocks (least recently
    used out), and of its key bounds only fewer than ``group`` per tree level stay hot, however long the
    context; what attention sees is still sinks + chosen + recent + tail."""
    cache = lossy_cache("topk", 10 ** 9, k=2, slots=3, group=2, refresh=1, recent=1)
    worst = {"bank": 0, "bounds": 0, "seen": 0}
    real_update = cache.update

    def spy(layer, k, v, q=None):
        out = real_update(layer, k, v, q=q)
        tree, N = cache._trees[layer], cache._blocks[layer]
        worst["bank"] = max(worst["bank"], cache.bank_blocks(layer))
        levels = max(1, (N - 1).bit_length()) if N else 0  # log2 of the blocks: group 2
        assert tree.hot_nodes() <= levels, (N, tree.hot_nodes())
        worst["bounds"] = max(worst["bounds"], tree.hot_nodes())
        worst["seen"] = max(worst["seen"], len(out[3]))
        assert len(out[3]) <= (1 + 2 + 1) * 8 + 8 + k.shape[2]  # sink, 2 chosen, 1 recent blocks, tail, new
        return out
    monkeypatch.setattr(cache, "update", spy)
    prompt = torch.randint(0, 256, (1, 400), generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():
            for s in range(0, 400, 16):
                model(prompt[:, s:s + 16], s, cache)
            for i in range(40):
                model(prompt[:, i:i + 1], 400 + i, cache)
    finally:
        cache.close()
    assert worst["bank"] == 3  # the bank filled, and never passed its slots
    assert cache.stats["bank_hits"] > 0 and cache.stats["bank_misses"] > 0
    assert 0 < worst["bounds"] <= 6  # 55 blocks: at most one hot bound per level of a binary tree
    assert cache._trees[0].fetched > 0  # the rest came back from the cold tier when searched
    with pytest.raises(ValueError, match="slots >= k"):
        make_policy("topk", k=4, slots=2)


def test_topk_chooses_per_head_uses_its_budget_and_prefills_the_question_alone(model):
    """Every KV head gets its share of the chosen blocks (a head whose keys run large does not choose for
    all); k and slots left at 0 take what the layer's budget leaves room for; a prompt's last block is a
    prefill chunk of its own, so the question's queries choose what the first token reads."""
    from miro_runtime.kv.policies import TopK
    from miro_runtime.kv.policies.topk import select_blocks
    reps = torch.zeros(1, 2, 6, 2, 4)  # 2 KV heads, 6 blocks
    reps[0, 0, :3, 0, 0] = torch.tensor([10.0, 9.0, 8.0])  # head 0: large keys in blocks 0-2
    reps[0, 1, 4, 0, 1] = 1.0  # head 1: one modest match, block 4
    q = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).view(1, 2, 1, 4)  # one query head per KV head
    assert select_blocks(q, reps, 0, 6, 2, 2) == [0, 4]  # by the largest bound over heads: [0, 1]
    assert select_blocks(q, reps, 0, 6, 4, 2) == [0, 1, 2, 4]
    assert TopK().sized(30) == (30, 30, 120) and TopK(k=4).sized(30) == (4, 30, 16)
    assert TopK(slots=6).sized(30)[:2] == (6, 6) and TopK(k=8, slots=9).sized(5)[:2] == (5, 5)
    per_token = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers  # K and V, batch 1, float32
    cache = lossy_cache("topk", per_token * 200, refresh=1)  # 200 tokens a layer: 25 blocks of 8
    prompt = torch.randint(0, 256, (1, 400), generator=torch.Generator().manual_seed(3))
    try:
        spans = cache.prefill_spans(0, 400)
        assert spans[0][0] == 0 and spans[-1] == (392, 400) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        with torch.no_grad():
            for a, b in spans:
                model(prompt[:, a:b], a, cache)
            for i in range(4):
                model(prompt[:, i:i + 1], 400 + i, cache)
        chosen = max(len(c) for c in cache._chosen.values())
        assert chosen > 8, chosen  # more than the old fixed k of 8: the budget's room
        assert cache.hot_bytes() <= per_token * 200
    finally:
        cache.close()
    sink = lossy_cache("sink", per_token * 200)
    assert sink.prefill_spans(0, 400) == [(s, min(s + 100, 400)) for s in range(0, 400, 100)]  # half its capacity
    sink.close()


def test_cascade_scores_a_token_by_the_head_that_reads_it_most():
    from miro_runtime.kv.policies import Cascade, H2O
    probs = torch.zeros(1, 2, 2, 3)  # (B, Hkv, G, S): only query head 1 of KV group 1 reads token 1
    probs[0, 1, 1, 1] = 0.8
    per_head = Cascade(**PAPER).received(probs).flatten().tolist()
    assert per_head == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.8, 0.0])  # per KV head
    assert Cascade().received(probs).tolist() == pytest.approx([0.0, 0.8, 0.0])  # one cascade: the most any head gave
    assert H2O().received(probs).tolist() == pytest.approx([0.0, 0.2, 0.0])  # H2O keeps the mean over heads
    assert Cascade().beta == 0.9999  # the paper's EMA


def test_cascade_moves_runs_of_tokens_whole_and_a_run_wins_by_its_score():
    """span 2, 1 sink, 2 sub-caches of 2 runs (4 tokens): run k (positions 1+2k, 2+2k) enters sub-cache 0 on
    step k. By hand, all scores 0: step 4 evicts run 0 off the last level, run 3 loses to run 2 on step 5
    (odd, past the first fill; a tie keeps the resident), step 6 takes run 4, step 7 drops run 5, step 8 takes
    run 6: sub-cache 1 holds runs 4 and 6 (positions 9-10, 13-14), whole, two runs apart. Scored high, run 5
    beats run 4 on step 7 instead and is kept whole."""
    from miro_runtime.kv.policies import Cascade
    for high, want in ((None, [0, 9, 10, 13, 14, 15, 16, 17]), (5, [0, 11, 12, 13, 14, 15, 16, 17])):
        score = torch.zeros(18)
        if high is not None:
            score[1 + 2 * high:3 + 2 * high] = 0.9
        c = Cascade(sinks=1, levels=2, beta=0.5, span=2, per_head=False)
        for t in range(1, 19):
            kept = c.keep(torch.arange(t), score[:t], 9)
            assert len(kept) <= 9
            runs = {int(p) - (int(p) - 1) % 2 for p in kept if p >= 1}
            assert all(r in kept and (r + 1 in kept or r + 1 == t) for r in runs), (t, kept.tolist())  # whole runs
        assert kept.tolist() == want, high
    c = Cascade()  # 14 runs of 8 for 4 levels (56 tokens): runs of 8; a tiny budget (7 tokens past the sinks,
    # under a run per level) runs single tokens instead, as the paper's rule does
    assert len(c.keep(torch.arange(70), torch.zeros(70), 60)) <= 60 and c.run_len == 8
    tiny, paper = Cascade(), Cascade(span=1)
    for t in range(12, 40):
        pos, zero = torch.arange(t), torch.zeros(t)
        assert torch.equal(tiny.keep(pos, zero, 11), paper.keep(pos, zero, 11))
    assert tiny.run_len == 1
    with pytest.raises(ValueError, match="runs of 8 tokens need at least sinks \\+ 8 = 12 tokens per layer, the "
                                         "cache keeps 11"):
        c.keep(torch.arange(71), torch.zeros(71), 11)  # the run length holds for the whole sequence


def test_cascade_by_default_keeps_one_token_set_for_every_head():
    """The default cascade (one cascade for every KV head, runs of 8): through the model each head's cached
    keys are the lossless cache's keys of the same kept tokens, whole runs of them."""
    per_token = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers
    cache, full = lossy_cache("cascade", per_token * 48), TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim)
    prompt = torch.randint(0, 256, (1, 120), generator=torch.Generator().manual_seed(4))
    model = Llama(CFG).eval()
    with torch.no_grad():
        for s in range(0, 120, 8):
            model(prompt[:, s:s + 8], s, cache)
        model(prompt, 0, full)
    apos, K, fullK = cache._apos[0], cache._kv[0][0], full._kv[0][0]  # (S,), (1, Hkv, S, hd), (1, Hkv, 120, hd)
    assert apos.dim() == 1 and apos.shape[0] <= 48 and int(apos[-1]) == 119
    kept = set(apos.tolist())
    assert int(apos[4]) > 4 + 8  # old context was thinned, not only the recent window kept
    runs = {4 + (p - 4) // 8 * 8 for p in kept if p >= 4}
    assert all(all(r + j in kept or r + j >= 120 for j in range(8)) for r in runs)  # whole runs (the newest growing)
    for h in range(CFG.n_kv_heads):
        assert torch.equal(K[0, h], fullK[0, h, apos])
    cache.close()
    full.close()


def test_cascade_keeps_each_kv_heads_own_tokens():
    """Two KV heads, 1 sink and 2 sub-caches of 2: where head 0 scores token 6 high and head 1 token 5,
    each head's sub-cache 1 keeps its own winner (one budget, the same count per head); in the model each
    head's cached keys are the keys of the tokens that head kept."""
    from miro_runtime.kv.policies import Cascade
    c = Cascade(sinks=1, levels=2, beta=0.5, **PAPER)
    score = torch.zeros(2, 10)
    score[0, 6], score[1, 5] = 0.9, 0.9
    for t in range(1, 10):  # step 6: 5 enters sub-cache 1 -> [3, 5]; step 7: 6 competes with 5, per head
        kept = c.keep(torch.arange(t).expand(2, t), score[:, :t], 5)
    assert [list(lane.sub[1]) for lane in c.lanes] == [[3, 6], [3, 5]]
    assert kept.tolist() == [[0, 3, 6, 7, 8], [0, 3, 5, 7, 8]]
    # through the model: layer 0's keys depend on the tokens alone, so each head's cached row j must be the
    # lossless cache's key of the token apos[h, j]
    per_token = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * CFG.n_layers
    cache = lossy_cache("cascade", per_token * 24, **PAPER)
    full = TieredKVCache(CFG.n_layers, CFG.n_kv_heads, CFG.head_dim)
    prompt = torch.randint(0, 256, (1, 60), generator=torch.Generator().manual_seed(3))
    model = Llama(CFG).eval()
    with torch.no_grad():
        for s in range(0, 60, 6):
            model(prompt[:, s:s + 6], s, cache)
            # a random model's attention barely tells heads apart: make head 1 of layer 0 prefer new tokens
            cache._scores[0][1] += cache._apos[0][1].float()
        model(prompt, 0, full)
    apos, K = cache._apos[0], cache._kv[0][0]  # (Hkv, S), (1, Hkv, S, hd)
    fullK = full._kv[0][0]  # (1, Hkv, 60, hd)
    assert apos.shape == (CFG.n_kv_heads, 24) and int(apos[0, -1]) == 59
    assert any(not torch.equal(apos[0], apos[h]) for h in range(1, CFG.n_kv_heads))  # the heads chose apart
    for h in range(CFG.n_kv_heads):
        assert torch.equal(K[0, h], fullK[0, h, apos[h]])
    cache.close()
    full.close()


def test_miro_kv_generate_reports_and_stays_lossless_with_cold_layers(tmp_path):
    import json
    import subprocess
    import sys

    from miro_runtime.kv.generate import run_generate
    prompt = b"the tiered cache keeps what fits and fetches the rest"
    hot = run_generate("builtin-tiny", prompt, 24)
    cold = run_generate("builtin-tiny", prompt, 24, hot_budget=70000, cold_dir=str(tmp_path / "kv"))
    assert cold["tokens"] == hot["tokens"] and cold["cold_bytes"] > 0 and hot["cold_bytes"] == 0
    assert cold["placement"]["cold_layers"] and cold["hot_bytes"] <= 70000
    r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "kv", "generate", "--policy", "h2o",
                        "--policy-opt", "recent=8", "--hot-budget", "40000", "--prompt", prompt.decode(),
                        "--max-new-tokens", "40", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("tokens_per_s", "ttft_s", "hot_bytes", "cold_bytes", "prefix_hits", "text"):
        assert k in out
    assert out["new_tokens"] == 40 and out["hot_bytes"] <= 40000
    bad = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "kv", "generate", "--prompt", "x",
                          "--hot-budget", "100"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--hot-budget 100 B is below" in bad.stderr
    from miro_runtime.kv.policies import parse_options
    assert parse_options("cascade", ["levels=3", "beta=0.5"]) == {"levels": 3, "beta": 0.5}
    for pairs, needle in [(["window=3"], "not an option of --policy sink"), (["sinks=x"], "sinks='x': must be int"),
                          (["sinks"], "give KEY=VALUE")]:
        with pytest.raises(ValueError, match=needle):
            parse_options("sink", pairs)
    with pytest.raises(ValueError, match="full takes no options"):
        run_generate("builtin-tiny", prompt, 4, policy_opts={"k": 2})


# ---------------------------------------------------------------- persistent prefix reuse
def _gen(store, prompt, n=12):
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "miro_runtime.cli", "kv", "generate", "--store", str(store),
                        "--prompt", prompt, "--max-new-tokens", str(n), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_new_process_reuses_a_stored_prefix_and_a_damaged_block_is_recomputed(tmp_path):
    from miro_runtime.kv.prefix import NS, PrefixStore
    from miro_runtime.storage import FlashTier
    store = tmp_path / "kv"
    prompt = "a prompt long enough to fill a few sixteen-token chunks of the prefix store, reused later"
    first = _gen(store, prompt)
    assert first["prefix_hits"] == 0
    second = _gen(store, prompt)  # another process: the KV comes from the flash tier
    n_chunks = (len(prompt.encode()) - 1) // 16
    assert second["prefix_hits"] == n_chunks and second["prefix_tokens_reused"] == 16 * n_chunks
    assert second["tokens"] == first["tokens"]
    tier = FlashTier(str(store))  # damage one block of chunk 2 (a valid record with wrong bytes)
    ps = PrefixStore(tier, first["model"], 4)  # the model identity is part of every key
    h = ps.chain(list(prompt.encode()))[2]
    key = f"{h}:1"
    tier.put(NS, key, bytes(len(tier.get(NS, key))))
    tier.close()
    third = _gen(store, prompt)
    assert third["prefix_store"]["damaged"] == 1 and third["prefix_hits"] == 2  # used up to the damage only
    assert third["tokens"] == first["tokens"]  # recomputed, never used
    fourth = _gen(store, prompt)  # the recomputed chunks were stored again
    assert fourth["prefix_hits"] == n_chunks and fourth["tokens"] == first["tokens"]


def test_the_cap_evicts_suffixes_before_prefixes(tmp_path):
    from miro_runtime.kv.prefix import PrefixStore
    from miro_runtime.storage import RamBlobTier
    ps = PrefixStore(RamBlobTier(), "m", n_layers=2, chunk=4)
    K = torch.randn(1, 1, 40, 2)

    def kv(layer):
        return K, K
    a = list(range(40))
    b = a[:8] + [99] * 32  # shares the first two chunks with a
    ps.store(a, kv)
    ps.store(b, kv)
    per = ps.entries()[0]["bytes"]
    assert len(ps.entries()) == 10 + 8
    ps.capacity = per * 6
    ps._enforce_cap()
    depths = sorted(e["depth"] for e in ps.entries())
    assert depths == [0, 1, 2, 2, 3, 3]  # the deepest (suffix) chunks went first; the shared prefix stays
    assert len(ps.lookup(a)[0]) == 4 and len(ps.lookup(b)[0]) == 4
