"""Latent replay (engine/latent.py) on EfficientNet-Lite0 with the packaged ImageNet weights (the dev
extra installs them), through the real learner, LMDB store and CarM swap workers: the frozen part stays
frozen and is never run by a training step, what the store and the RAM memory hold are exactly the
frozen part's outputs, and a store is tied to the frozen part that made it."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from miro_runtime.config import RunConfig
from miro_runtime.engine.checkpoint import CheckpointError
from miro_runtime.engine.efficientnet import EfficientNetCL
from miro_runtime.engine.latent import NS_LATENT, NS_RAW, Composed
from miro_runtime.engine.learner import Learner
from miro_runtime.engine.streams import make_stream
from miro_runtime.records import Position
from miro_runtime.session.experiment import run

SIZE = 32  # pixels: small, so the frozen forward of every digit is cheap on the CI's two cores
# frozen through block 15: the trained top is stage 7 and the head, so a replay step costs little on the CI's
# two cores (through block 11, the default, stages 6-7 train: ~5x the step); the mechanism is the same
FREEZE = 15


def cfg_for(tmp_path, name="run", **kw):
    base = dict(stream="split-digits", tasks=2, strategy="carm", model="efficientnet-lite0", latent_replay=True,
                input_size=SIZE, freeze_blocks=FREEZE, epochs=1, memory=60, checkpoint_every=0,
                run_dir=str(tmp_path / name))
    return RunConfig(**{**base, **kw})


def frozen_state(model) -> dict:
    return {k: v.clone() for k, v in model.frozen.state_dict().items()}


def task(lr, stream, t):
    lr.begin_task(t, Position.start_of(t))
    x, y = stream.train[t]
    ids = np.concatenate([lr.store(t, x[i:i + 256], y[i:i + 256]).ids for i in range(0, len(y), 256)])
    return x, y, ids


@pytest.mark.parametrize("latent", [False, True])
def test_the_frozen_part_stays_frozen_and_latent_steps_never_run_it(tmp_path, latent):
    cfg = cfg_for(tmp_path, latent_replay=latent)
    stream = make_stream("split-digits", 2, 0)
    lr = Learner(cfg, stream)
    lr.open()
    try:
        full = lr.strategy.model
        frozen = lr.latent.codec.frozen if latent else full.frozen
        before = frozen_state(type("M", (), {"frozen": frozen}))
        assert before and any("running_mean" in k for k in before) and any("num_batches_tracked" in k for k in before)
        in_opt = {id(p) for g in lr.strategy.base.opt.param_groups for p in g["params"]} if lr.strategy.base.opt \
            else set()
        x, y, ids = task(lr, stream, 0)
        in_opt = {id(p) for g in lr.strategy.base.opt.param_groups for p in g["params"]}
        assert not any(id(p) in in_opt for p in frozen.parameters()), "a frozen parameter is in the optimizer"
        assert all(not p.requires_grad for p in frozen.parameters())
        full.train()
        assert not frozen.training, "model.train() put the frozen part's batch norms in training mode"
        calls = []
        hook = frozen.register_forward_hook(lambda *a: calls.append(1))
        for b in range(20):
            sl = slice(16 * b, 16 * b + 16)
            lr.observe(0, x[sl], y[sl], ids[sl])
        hook.remove()
        assert (len(calls) == 0) if latent else (len(calls) == 20), len(calls)
        lr.strategy.settle()
        after = frozen_state(type("M", (), {"frozen": frozen}))
        assert all(torch.equal(before[k], after[k]) for k in before), "a frozen weight or BN statistic moved"
        assert [k for k in full.state_dict() if k.startswith("frozen.")] == ([] if latent else list(
            "frozen." + k for k in before)), "latent mode keeps the frozen weights out of the trained model"
    finally:
        lr.abort_task()
        lr.close()


def test_stored_and_remembered_latents_are_the_frozen_parts_output(tmp_path):
    cfg = cfg_for(tmp_path)
    stream = make_stream("split-digits", 2, 0)
    lr = Learner(cfg, stream)
    lr.open()
    try:
        for t in range(2):
            x, y, ids = task(lr, stream, t)
            lr.train_epochs(t, x, y, ids, Position.start_of(t))
            lr.finish_task(t, x, y, ids)
        lr.strategy.settle()  # CarM's swap workers have landed every swap
        assert lr.strategy.swap_engine.stats()["completed"] > 0
        # the flash tier: for sampled ids, the stored latent == the codec's output on the raw sample, exactly
        pick = np.random.default_rng(0).choice(ids, 20, replace=False)
        stored = lr.flash.read_batch(NS_LATENT, pick)
        raw = lr.flash.read_batch(NS_RAW, pick)
        assert stored["found"].all() and raw["found"].all() and stored["x"].dtype == np.float16
        assert np.array_equal(stored["x"], lr.latent.codec.encode(raw["x"]).numpy())
        assert np.array_equal(raw["x"], x[np.searchsorted(ids, pick)])
        for ns in (NS_LATENT, NS_RAW):  # both namespaces hold the same ids
            assert lr.flash.class_counts(ns).sum() == lr.flash.seen(ns) == sum(len(y) for _, y in stream.train)
        # the RAM memory: every slot (after swaps) holds exactly its id's flash record
        ram = lr.strategy.memory.ram
        n = ram.size
        slots = ram.gather(np.arange(n))
        assert slots["x"].dtype == torch.float16 and tuple(slots["x"].shape[1:]) == lr.latent.codec.latent_shape
        rec = lr.flash.read_batch(NS_LATENT, slots["ids"])
        assert rec["found"].all() and np.array_equal(slots["x"].numpy(), rec["x"])
        # prediction on raw images == the trained part on their latents
        model = lr.strategy.model.eval()
        xt = torch.from_numpy(stream.test[0][0][:32])
        with torch.no_grad():
            assert torch.equal(Composed(lr.latent.codec, model)(xt), model(lr.latent.codec.encode(xt)))
        labels, _ = lr.predict(stream.test[0][0][:32], k=1)
        assert np.array_equal(labels[:, 0], model(lr.latent.codec.encode(xt)).argmax(1).numpy())
    finally:
        lr.close()


def test_drop_raw_keeps_only_latents_and_a_run_resumes_on_them(tmp_path):
    # carm-sync: its swaps are part of the step, so a resumed run repeats the uninterrupted one exactly
    cfg = cfg_for(tmp_path, drop_raw=True, tasks=2, checkpoint_every=20, strategy="carm-sync")
    first = run(cfg)
    from miro_runtime.storage import FlashTier
    with FlashTier(os.path.join(cfg.run_dir, "state"), readonly=True) as f:
        assert NS_RAW not in f.stats()["namespaces"] and f.class_counts(NS_LATENT).sum() > 0
    # the same run killed after task 0 and resumed: it ends where the uninterrupted one ends
    cut = dataclasses.replace(cfg, run_dir=str(tmp_path / "cut"))
    from miro_runtime.session.experiment import Experiment
    exp = Experiment(cut)
    lr = exp.learner
    real_finish = lr.finish_task

    def finish_then_stop(t, *a):
        rec = real_finish(t, *a)
        if t == 0:
            raise KeyboardInterrupt
        return rec
    lr.finish_task = finish_then_stop
    with pytest.raises(KeyboardInterrupt):
        exp.run()
    again = Experiment.from_run_dir(cut.run_dir).run()
    assert again["acc_matrix"] == first["acc_matrix"] and again["steps"] == first["steps"]


def test_a_store_of_latents_is_tied_to_the_frozen_part_that_made_them(tmp_path):
    cfg = cfg_for(tmp_path, tasks=1)
    run(cfg)
    stream = make_stream("split-digits", 1, 0)
    other = dataclasses.replace(cfg, freeze_blocks=13)  # latents of the same shape (stage 6's): only the
    # frozen part's identity tells them apart
    lr = Learner(other, stream)
    with pytest.raises(CheckpointError, match=r"made by \[.*blocks=15 .*\], but this configuration makes them "
                                              r"with \[.*blocks=13 "):
        lr.open(resume=True)
    lr.close()


def test_latent_replay_settings_are_checked_by_name():
    ok = dict(model="efficientnet-lite0", latent_replay=True)
    for kw, msg in ((dict(latent_replay=True), "--latent-replay: replays the output of frozen pretrained blocks"),
                    (dict(ok, freeze_blocks=0), "needs --model efficientnet-lite0 with --freeze-blocks >= 1"),
                    (dict(ok, miro=True), "--latent-replay: Miro's profiles train on raw samples"),
                    (dict(ok, strategy="l2p", backbone="x.pt"), "--strategy l2p prompts a ViT of its own"),
                    (dict(drop_raw=True), "--drop-raw: only latent replay"),
                    (dict(freeze_blocks=3), "--freeze-blocks: only --model efficientnet-lite0"),
                    (dict(ok, freeze_blocks=17), "--freeze-blocks: must lie in 0..16"),
                    (dict(ok, input_size=8), "--input-size: must lie in 32..1024")):
        with pytest.raises(ValueError, match=msg):
            RunConfig(**kw).validate()


def test_frozen_and_top_split_the_network_without_changing_it():
    torch.manual_seed(0)
    for freeze in (0, 5, 11, 16):
        m = EfficientNetCL(freeze, 64)
        m.head.grow(3)
        m.eval()
        x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
        net_blocks = list(m.frozen.blocks) + list(m.top.blocks)
        assert len(net_blocks) == 16 and len(m.frozen.blocks) == freeze
        with torch.no_grad():
            h = m.frozen(x)
            assert h.shape[1] == ({0: 3, 5: 40, 11: 112, 16: 320}[freeze])
            assert torch.equal(m(x), m.head(m.top(h)))
    assert tuple(EfficientNetCL(11, 112).frozen(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).shape) == (1, 112, 7, 7)
    assert tuple(EfficientNetCL(15, 112).frozen(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).shape) == (1, 192, 4, 4)
    # --freeze-blocks unset: frozen through stage 6, block 15, as its help says
    from miro_runtime.config import RunConfig
    from miro_runtime.engine.models import make_model
    assert len(make_model("efficientnet-lite0", (1, 28, 28)).frozen.blocks) == 15
    assert "default 15, through stage 6" in RunConfig.__dataclass_fields__["freeze_blocks"].metadata["help"]


def test_task_latents_come_from_ram_then_flash_then_the_encoder(tmp_path):
    """After a restart mid-task the open task's latents are read back from flash by id; ids the flash no
    longer holds (a budget evicted them) are encoded again from the raw samples: same values every way."""
    cfg = cfg_for(tmp_path, tasks=1, flash_budget=100)
    stream = make_stream("split-digits", 1, 0)
    lr = Learner(cfg, stream)
    lr.open()
    try:
        x, y, ids = task(lr, stream, 0)
        from_ram = lr.latent.task.get(0, ids, x, lr.latent.codec, lr.flash, NS_LATENT).clone()
        assert lr.flash.class_counts(NS_LATENT).sum() == 100 < len(ids)
        lr.latent.task.clear()  # as after a restart
        before = lr.latent.codec.encoded
        again = lr.latent.task.get(0, ids, x, lr.latent.codec, lr.flash, NS_LATENT)
        assert lr.latent.codec.encoded - before == len(ids) - 100  # only the evicted ones ran the frozen part
        assert torch.equal(again, from_ram) and torch.equal(from_ram, lr.latent.codec.encode(x))
    finally:
        lr.abort_task()
        lr.close()
