"""REP: the merge math (AToM), the layer-keep law (ALD), swift selection, the prompted ViT's
checkpoints, and `miro rep pretrain` + `miro run --strategy rep-*` end to end, killed and resumed.

Backbones are real torchvision ViTs: random-init for the math (it holds for any weights), and one
pretrained here with `miro rep pretrain` for the runs."""

import itertools
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from miro_runtime.config import RunConfig
from miro_runtime.engine.rep import ald
from miro_runtime.engine.rep.atom import match, merge_tokens, schedule
from miro_runtime.engine.rep.vit import ViTSpec, block, build, embed, load_backbone, preprocess
from miro_runtime.engine.streams import from_arrays
from miro_runtime.engine.strategies import build_model, make_strategy

from conftest import wait_for_event

MIRO = [sys.executable, "-m", "miro_runtime.cli"]
SPEC = ViTSpec(image_size=16, patch_size=2, hidden_dim=32, num_layers=6, num_heads=2, mlp_dim=64)  # 64 patches


def miro(*args, **kw):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def random_backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bb") / "vit.pt"
    torch.save(build(SPEC).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A micro ViT pretrained on digits 0-4 by the CLI (8x8 images, 16 patches: seconds)."""
    out = tmp_path_factory.mktemp("pre") / "digits04.pt"
    r = miro("rep", "pretrain", "--stream", "split-digits", "--classes", "0-4", "--out", str(out), "--image-size", "8",
             "--patch-size", "2", "--epochs", "8", "--batch-size", "32", "--lr", "2e-3", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    return str(out), json.loads(r.stdout.strip().splitlines()[-1])


def digits_stream(n=40, seed=0, shape=(1, 8, 8), classes=4):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = np.arange(n) % classes
    return from_arrays("noise", x, y, x, y, 2)


# ---------------------------------------------------------------- AToM
def test_schedule_is_zero_first_and_r_max_last():
    assert schedule(12, 8) == [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8]
    assert schedule(6, 0) == [0] * 6 and schedule(1, 8) == [0]
    for L in (2, 5, 12, 24):
        s = schedule(L, 13)
        assert s[0] == 0 and s[-1] == 13 and all(b >= a for a, b in zip(s, s[1:]))
        assert all(v == min(13 * i // (L - 1), 13) for i, v in enumerate(s))


def test_merging_follows_the_schedule_protects_prompts_and_keeps_the_patch_count(random_backbone):
    vit, spec, _ = load_backbone(random_backbone)
    torch.manual_seed(1)
    img = preprocess(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8), spec.image_size)
    P = 7
    x = torch.cat([embed(vit, img)[:, :1], torch.randn(3, P, spec.hidden_dim), embed(vit, img)[:, 1:]], 1)
    sched = schedule(spec.num_layers, 9)
    size, expect = None, x.shape[1]
    for i, blk in enumerate(vit.encoder.layers):
        ref, _, _ = block(blk, x, size, 1 + P, r=0)  # same block, no merge
        out, size, merged = block(blk, x, size, 1 + P, r=sched[i])
        expect -= sched[i]
        assert merged == sched[i] and out.shape[1] == expect
        # the class token and the prompts come through exactly as without merging
        assert torch.equal(out[:, :1 + P], ref[:, :1 + P])
        if size is not None:
            assert torch.allclose(size[:, :1 + P], torch.ones(3, 1 + P, 1))
            assert torch.allclose(size[:, 1 + P:].sum(1), torch.full((3, 1), float(spec.tokens)))
        x = out


def test_r_zero_is_torchvisions_own_block_and_merge_is_a_weighted_mean(random_backbone):
    vit, spec, _ = load_backbone(random_backbone)
    x = torch.randn(2, 1 + spec.tokens, spec.hidden_dim)
    for blk in vit.encoder.layers:
        ours, size, merged = block(blk, x, None, 1, r=0)
        assert size is None and merged == 0
        assert torch.allclose(ours, blk(x), atol=1e-5)  # torchvision's EncoderBlock forward
    s = torch.ones(2, x.shape[1], 1)
    same, s2, m = merge_tokens(x, s, x, 0)
    assert m == 0 and same is x and s2 is s
    # a merged token is the size-weighted mean of what it absorbed: sum(x * size) is conserved
    sizes = torch.randint(1, 4, (2, x.shape[1], 1)).float()
    out, so, m = merge_tokens(x, sizes, torch.randn_like(x), 10)
    assert m == 10 and torch.allclose((out * so).sum(1), (x * sizes).sum(1), atol=1e-4)
    assert torch.equal(so.sum(1), sizes.sum(1))


def test_matching_is_capped_at_half_and_merges_the_most_similar_pairs():
    k = torch.randn(1, 10, 4)
    k[0, 3] = k[0, 6] * 2  # token 3 (set B, odd) is a scaled copy of token 6 (set A, even): cosine 1
    m = match(k, 100)
    assert m.r == 5  # |A| = 5
    m1 = match(k, 1)
    assert m1.src.tolist() == [[3]] and m1.dst.tolist() == [[1]]  # A's 4th (token 6) -> B's 2nd (token 3)


def test_proportional_attention_with_unit_sizes_is_plain_attention(random_backbone):
    vit, spec, _ = load_backbone(random_backbone)
    x = torch.randn(2, 1 + spec.tokens, spec.hidden_dim)
    blk = vit.encoder.layers[0]
    a, _, _ = block(blk, x, torch.ones(2, x.shape[1], 1), 1)
    b, _, _ = block(blk, x, None, 1)
    assert torch.allclose(a, b, atol=1e-6)


def _hand_attention(mha, h, size, prefix=None):
    """softmax(q.k / sqrt(dh) + log s) v, head by head in float64, from the block's own weights;
    a DualPrompt prefix key has no size (log 1 = 0)."""
    W, b = mha.in_proj_weight.detach().double(), mha.in_proj_bias.detach().double()
    Bn, T, D = h.shape
    H = mha.num_heads
    dh = D // H
    qkv = h.detach().double() @ W.T + b
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(Bn, T, H, dh).permute(0, 2, 1, 3) for i in range(3))
    log_s = size.detach().double().log().view(Bn, 1, 1, T)
    if prefix is not None:
        pk, pv = (p.detach().double() for p in prefix)
        k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        log_s = torch.cat([torch.zeros(Bn, 1, 1, pk.shape[2], dtype=torch.float64), log_s], -1)
    logits = q @ k.transpose(-1, -2) / np.sqrt(dh) + log_s  # (B, H, T, P + T)
    p = torch.exp(logits - logits.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    out = (p @ v).permute(0, 2, 1, 3).reshape(Bn, T, D)
    return out @ mha.out_proj.weight.detach().double().T + mha.out_proj.bias.detach().double()


def test_proportional_attention_adds_the_log_of_each_tokens_size(random_backbone):
    vit, spec, _ = load_backbone(random_backbone)
    torch.manual_seed(3)
    x = torch.randn(2, 1 + spec.tokens, spec.hidden_dim)
    sizes = torch.randint(1, 9, (2, x.shape[1], 1)).float()  # sizes 1..8: log s is far from 0
    dh = spec.hidden_dim // spec.num_heads
    prefix = (torch.randn(2, spec.num_heads, 3, dh), torch.randn(2, spec.num_heads, 3, dh))
    for blk in vit.encoder.layers[:2]:
        for pre in (None, prefix):
            with torch.no_grad():
                got, so, _ = block(blk, x, sizes, 1, prefix=pre)
                h = x.double() + _hand_attention(blk.self_attention, blk.ln_1(x), sizes, pre)
                want = h + blk.mlp(blk.ln_2(h.float())).double()
                plain, _, _ = block(blk, x, None, 1, prefix=pre)
            assert so is sizes
            assert torch.allclose(got.double(), want, atol=2e-5), (got.double() - want).abs().max()
            assert (got - plain).abs().max() > 1e-2  # the sizes do change the output: the check has teeth


def _brute_force_merge(x, size, keys, r):
    """One sample: every choice of r tokens of A (even positions) and a B partner (odd) for each,
    the one of highest total cosine merged away by size-weighted means; rows as ``Merge`` lays
    them out: the kept A tokens, then the B tokens, each in original order."""
    x, size, keys = x.double().numpy(), size.double().numpy(), keys.double().numpy()
    k = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    A, B = list(range(0, len(k), 2)), list(range(1, len(k), 2))
    best, pick = -np.inf, None
    for chosen in itertools.combinations(A, r):
        for partners in itertools.product(B, repeat=r):
            total = sum(float(k[a] @ k[b]) for a, b in zip(chosen, partners))
            if total > best:
                best, pick = total, dict(zip(chosen, partners))
    groups = [[a] for a in A if a not in pick] + [[b] + [a for a in pick if pick[a] == b] for b in B]
    s = np.array([size[g].sum(0) for g in groups])
    return np.array([(x[g] * size[g]).sum(0) for g in groups]) / s, s


def test_matching_with_several_merges_is_the_brute_force_best():
    gen = torch.Generator().manual_seed(4)
    protect = 2
    for T in (6, 7, 9):
        for r in range(2, T // 2 + 1):
            x = torch.randn(3, protect + T, 5, generator=gen)
            size = torch.randint(1, 4, (3, protect + T, 1), generator=gen).float()
            size[:, :protect] = 1.0  # the class token and a prompt: one patch each, never merged
            keys = torch.randn(3, protect + T, 4, generator=gen)
            out, so, m = merge_tokens(x, size, keys, r, protect=protect)
            assert m == r and out.shape == (3, protect + T - r, 5)
            for i in range(3):
                want_x, want_s = _brute_force_merge(x[i, protect:], size[i, protect:], keys[i, protect:], r)
                assert torch.equal(out[i, :protect], x[i, :protect]) and torch.equal(so[i, :protect], size[i, :protect])
                np.testing.assert_allclose(so[i, protect:].numpy(), want_s, err_msg=f"T={T} r={r} sample {i}")
                np.testing.assert_allclose(out[i, protect:].numpy(), want_x, rtol=1e-5, atol=1e-6,
                                           err_msg=f"T={T} r={r} sample {i}")


# ---------------------------------------------------------------- ALD
def test_keep_rates_over_many_draws_match_theta():
    merges = schedule(12, 8)
    t, rng, n = 700.0, np.random.default_rng(0), 20000
    probs = ald.keep_probabilities(t, merges, {0, 1}, theta_bar=0.5, gamma=0.001, alpha=0.9, tau=4)
    kept = np.zeros(12)
    for _ in range(n):
        kept += ald.draw(probs, rng)
    base = 0.5 * np.exp(-0.7) + 0.5
    for i in range(12):
        want = 1.0 if i in (0, 1) else base * (0.9 if merges[i] > 4 else 1.0)
        assert probs[i] == pytest.approx(want)
        assert abs(kept[i] / n - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-9, i
    assert ald.keep_probability(0, 0, 0.5, 0.001, 0.9, 4) == 1.0  # t = 0: every layer kept


def test_prompt_layers_never_drop_and_evaluation_runs_every_layer(random_backbone, tmp_path):
    st = digits_stream()
    for strategy, prompt_layers in (("rep-l2p", {0}), ("rep-dualprompt", {0, 1, 2, 3, 4})):
        cfg = RunConfig(strategy=strategy, backbone=random_backbone, run_dir=str(tmp_path),
                        method={"theta_bar": "0.0", "gamma": "5", "query_layers": "1"})
        m = build_model(cfg, st)
        strat = make_strategy(strategy, m, cfg, None, st)
        strat.begin_task(0)
        x, y = torch.from_numpy(st.train[0][0][:8]), torch.from_numpy(st.train[0][1][:8])
        for _ in range(30):
            strat.observe(x, y)
        a = m.applied()
        assert a["steps"] == 30
        for i, rate in enumerate(a["layer_keep_rate"]):
            if i in prompt_layers:
                assert rate == 1.0
        assert min(a["layer_keep_rate"]) < 0.5  # theta -> 0 after the first steps: the others mostly drop
        m.eval()
        with torch.no_grad():
            o1, o2 = m(x), m(x)
        assert torch.equal(o1, o2) and m.applied()["steps"] == 30  # eval draws nothing, counts nothing


# ---------------------------------------------------------------- swift selection, checkpoints
def test_swift_selection_same_seed_same_projection_and_prompts(random_backbone, tmp_path):
    st = digits_stream()
    x = torch.from_numpy(st.train[0][0][:6])

    def chosen(seed):
        cfg = RunConfig(strategy="rep-l2p", backbone=random_backbone, run_dir=str(tmp_path), seed=seed,
                        method={"query_backbone": random_backbone})
        torch.manual_seed(seed)
        m = build_model(cfg, st)
        q = m.query(preprocess(x, m.spec.image_size))
        return m.query.projection.clone(), m.prompts.select(q)[2]
    p0, i0 = chosen(0)
    p0b, i0b = chosen(0)
    p1, _ = chosen(1)
    assert torch.equal(p0, p0b) and torch.equal(i0, i0b) and not torch.equal(p0, p1)
    assert p0.shape == (SPEC.hidden_dim, SPEC.hidden_dim)


def test_checkpoint_holds_prompts_keys_projection_head_and_reloads_exactly(random_backbone, tmp_path):
    st = digits_stream()
    x, y = torch.from_numpy(st.train[0][0][:8]), torch.from_numpy(st.train[0][1][:8])
    for strategy in ("rep-l2p", "rep-dualprompt", "l2p"):
        cfg = RunConfig(strategy=strategy, backbone=random_backbone, run_dir=str(tmp_path))
        torch.manual_seed(0)
        a = make_strategy(strategy, build_model(cfg, st), cfg, None, st)
        a.begin_task(0)
        for _ in range(3):
            a.observe(x, y)
        a.begin_task(1)
        a.observe(x, y + 2)
        state = a.state_dict()
        keys = set(state["model"])
        assert not any(k.startswith("backbone.") for k in keys)  # frozen weights come from their file
        assert any(k.startswith("prompts.") for k in keys) and any(k.startswith("head.") for k in keys)
        assert ("query.projection" in keys) == strategy.startswith("rep")
        path = tmp_path / "ck.pt"
        torch.save(state, path)
        torch.manual_seed(123)  # a different init: everything must come from the checkpoint
        b = make_strategy(strategy, build_model(cfg, st), cfg, None, st)
        b.load_state_dict(torch.load(path, weights_only=True))
        a.model.eval(), b.model.eval()
        with torch.no_grad():
            assert torch.equal(a.model(x), b.model(x))
        a.observe(x, y + 2), b.observe(x, y + 2)  # training continues identically (Adam state, ALD draws)
        with torch.no_grad():
            assert torch.equal(a.model(x), b.model(x))


def test_prompts_refuse_another_backbone_and_bad_files_say_what_is_wrong(random_backbone, tmp_path):
    st = digits_stream()
    cfg = RunConfig(strategy="l2p", backbone=random_backbone, run_dir=str(tmp_path))
    a = make_strategy("l2p", build_model(cfg, st), cfg, None, st)
    a.begin_task(0)
    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    torch.save(build(SPEC).state_dict(), other)
    b_cfg = RunConfig(strategy="l2p", backbone=str(other), run_dir=str(tmp_path))
    b = make_strategy("l2p", build_model(b_cfg, st), b_cfg, None, st)
    with pytest.raises(ValueError, match="prompts only fit the backbone"):
        b.load_state_dict(a.state_dict())
    sd = build(SPEC).state_dict()
    sd["encoder.layers.encoder_layer_1.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"encoder_layer_1\.mlp\.0\.weight has shape \[3, 3\]"):
        load_backbone(str(tmp_path / "bad.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable torch state dict"):
        load_backbone(str(tmp_path / "junk.pt"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "other_dict.pt")
    with pytest.raises(ValueError, match="not a torchvision VisionTransformer state dict"):
        load_backbone(str(tmp_path / "other_dict.pt"))

    class Evil:  # pickled code must never run: weights_only refuses it
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"conv_proj.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError):
        load_backbone(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_layer_drop_pretraining_skips_whole_layers_by_the_linear_rule():
    from miro_runtime.engine.rep.pretrain import _forward_dropping
    torch.manual_seed(0)
    vit = build(SPEC, num_classes=3).eval()
    img = preprocess(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), SPEC.image_size)

    class Fixed:  # draws 0.5 every time: layer i drops when 0.5 < p_max * i / (L - 1)
        def random(self):
            return 0.5
    with torch.no_grad():
        assert torch.allclose(_forward_dropping(vit, img, 0.0, Fixed()), vit(img), atol=1e-5)
        out = _forward_dropping(vit, img, 0.9, Fixed())  # 0.9*i/5 > 0.5 for i >= 3: layers 0-2 run
        x = embed(vit, img)
        for blk in list(vit.encoder.layers)[:3]:
            x = blk(x)
        assert torch.allclose(out, vit.heads(vit.encoder.ln(x)[:, 0]), atol=1e-5)
    rng, L, n = np.random.default_rng(0), SPEC.num_layers, 4000
    probe = build(SPEC, num_classes=3)
    calls = np.zeros(L)  # layers run, counted by a hook on each block
    for i, blk in enumerate(probe.encoder.layers):
        blk.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    small = preprocess(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), SPEC.image_size)
    with torch.no_grad():
        for _ in range(n):
            _forward_dropping(probe, small, 0.5, rng)
    for i in range(L):
        want = 1.0 - 0.5 * i / (L - 1)
        assert abs(calls[i] / n - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-9, i


def test_pretrain_refuses_a_layer_drop_outside_0_1(tmp_path):
    out = tmp_path / "x.pt"
    r = miro("rep", "pretrain", "--classes", "0-4", "--out", str(out), "--layer-drop", "1.5")
    assert r.returncode != 0 and "--layer-drop 1.5: must lie in [0, 1)" in r.stderr and not out.exists()


# ---------------------------------------------------------------- the product: pretrain, run, kill, resume
def test_pretrain_writes_a_torchvision_state_dict(pretrained):
    path, info = pretrained
    from torchvision.models.vision_transformer import VisionTransformer
    sd = torch.load(path, weights_only=True)
    s = info["spec"]
    vit = VisionTransformer(s["image_size"], s["patch_size"], s["num_layers"], s["num_heads"], s["hidden_dim"],
                            s["mlp_dim"], num_classes=5)
    vit.load_state_dict(sd)  # torchvision itself loads it
    assert info["classes"] == [0, 1, 2, 3, 4] and 0.0 <= info["test_acc"] <= 1.0
    assert info["test_acc"] > 0.5  # eight epochs on five digit classes: well above chance (0.2)


def test_bad_options_are_named_before_anything_is_written(pretrained, tmp_path):
    from miro_runtime.session.experiment import Experiment
    path, _ = pretrained

    def exp(strategy, **kw):
        kw = {"classes": "5-9", **kw}
        cfg = RunConfig(strategy=strategy, tasks=2, epochs=1, run_dir=str(tmp_path / strategy), **kw)
        return Experiment(cfg)
    with pytest.raises(ValueError, match="--method-opt tau=-1: must be >= 0"):
        exp("rep-l2p", backbone=path, method={"tau": "-1"})
    with pytest.raises(ValueError, match="--method-opt atom='maybe': must be bool"):
        exp("rep-l2p", backbone=path, method={"atom": "maybe"})
    with pytest.raises(ValueError, match="--backbone: --strategy rep-dualprompt prompts a frozen pretrained ViT"):
        exp("rep-dualprompt")
    with pytest.raises(ValueError, match="--method-opt: --strategy er takes no method options"):
        exp("er", method={"r_max": "8"})
    with pytest.raises(ValueError, match="has no class 10, 11, 12"):
        exp("l2p", backbone=path, classes="8-12")
    with pytest.raises(ValueError, match=r"e_layers \[2, 9\] name layers outside 0..5"):
        exp("dualprompt", backbone=path, method={"e_layers": "2,9"}).run()
    assert not os.path.exists(tmp_path / "rep-l2p" / "config.json")


@pytest.mark.parametrize("strategy", ["rep-l2p"])
def test_sigkill_then_resume_is_the_run_that_never_stopped(pretrained, tmp_path, strategy):
    path, _ = pretrained
    args = ["run", "--strategy", strategy, "--backbone", path, "--classes", "5-9", "--tasks", "2", "--epochs", "2",
            "--checkpoint-every", "7", "--json"]
    full = miro(*args, "--run-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    full = json.loads(full.stdout.strip().splitlines()[-1])
    from miro_runtime.session.experiment import Experiment  # what `miro run --json` prints, in-process
    e = Experiment(RunConfig(strategy="er", classes="5-9", tasks=2, epochs=1, run_dir=str(tmp_path / "er"))).run()
    assert set(e) - {"swap"} <= set(full)  # the same keys as the other strategies, plus the cost and AToM/ALD
    assert full["step_ms"] > 0 and full["peak_mem_mb"] > 0 and full["query_ms"] > 0
    assert full["merge_counts"] == schedule(6, 8) == [0, 1, 3, 4, 6, 8]
    assert len(full["merged_per_layer"]) == 6 and full["stream"]["class_order"] == [5, 6, 7, 8, 9]
    assert full["backbone"]["sha256"] == pretrained[1]["sha256"]
    run_dir = tmp_path / "killed"
    child = subprocess.Popen(MIRO + args + ["--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    killed_at = wait_for_event(run_dir / "events.jsonl",  # mid task 1, after a mid-task checkpoint
                               lambda e: e["event"] == "checkpoint" and e["task"] == 1 and e["batch"] > 0)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert killed_at is not None and child.returncode == -signal.SIGKILL
    res = miro("run", "--resume", "--run-dir", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    res = json.loads(res.stdout.strip().splitlines()[-1])
    # every random stream (torch, ALD's draws, data order) continues from the checkpoint: to the bit
    assert res["acc_matrix"] == full["acc_matrix"]
    assert res["merged_per_layer"] and os.path.getsize(run_dir / "checkpoint.pt") < 2e6  # no backbone inside


def test_miro_tunes_rep_knobs_not_only_memory(pretrained, tmp_path):
    """Miro's knob set follows the strategy: for rep-l2p its arms vary r_max and theta_bar (no replay
    memory to size), and what it adopts is what the model then runs with."""
    from miro_runtime.session.experiment import Experiment
    path, _ = pretrained
    cfg = RunConfig(strategy="rep-l2p", backbone=path, classes="5-9", tasks=2, epochs=2, miro=True,
                    miro_search="grid", miro_budget=1.0, run_dir=str(tmp_path / "m"), energy_source="estimate")
    exp = Experiment(cfg)
    out = exp.run()
    arms = {c["knobs"] for d in out["miro_decisions"] for c in d["candidates"]}
    assert any("r_max=4" in a for a in arms) and any("r_max=16" in a for a in arms)
    assert any("theta_bar=0.75" in a for a in arms)
    last = out["per_task"][-1]["knobs"]["method"]
    assert dict(map(tuple, last))["r_max"] == out["merge_counts"][-1]  # adopted: the schedule ends at its r_max


def test_pretrain_on_split_fashion_mnist_picks_a_patch_that_tiles_28_px(tmp_path):
    """28 // 8 = 3 does not tile a 28 px image: the default patch is 4 (7x7 tokens). --per-class cuts the
    base classes' samples; the state dict then serves `miro run` as its --backbone."""
    from miro_runtime.engine.rep.pretrain import default_patch
    assert [default_patch(s) for s in (8, 16, 28, 32, 224)] == [1, 2, 4, 4, 28]
    from miro_runtime.engine.idx import write_idx
    from miro_runtime.engine.streams import FASHION_FILES
    data = tmp_path / "fm"  # Fashion-MNIST's four IDX files at 28x28: 6 training, 2 test images per class
    data.mkdir()
    rng = np.random.default_rng(0)
    for (images, labels), n in zip(FASHION_FILES.values(), (6, 2)):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        write_idx(str(data / (images + ".gz")), rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8), compress=True)
        write_idx(str(data / (labels + ".gz")), y, compress=True)
    out = tmp_path / "fm04.pt"
    r = miro("rep", "pretrain", "--stream", "split-fashion-mnist", "--data-dir", str(data), "--classes", "0-4",
             "--per-class", "4", "--out", str(out), "--epochs", "1", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["spec"]["image_size"] == 28 and info["spec"]["patch_size"] == 4 and info["train_samples"] == 20
    run = miro("run", "--stream", "split-fashion-mnist", "--data-dir", str(data), "--classes", "5-9", "--tasks", "1",
               "--strategy", "l2p", "--backbone", str(out), "--epochs", "1", "--run-dir", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
