"""Probe, not a bench (`make bench` does not run it, BENCHMARKS.md does not cite it): does calibrating the
prompt methods' head after each task steady REP-vs-base on split Fashion-MNIST (issue 22)?

Each run trains once (bench/rep.py's accuracy configuration); at the last task's end the test accuracy is
taken under three heads, then the head is put back, so the run itself is untouched:
- ``none``: the head as trained (what bench/rep_fmnist.py measures);
- ``anchor``: the new classes' biases shifted so their mean own-class logit on their training data equals
  the old classes' (each recorded at its task's end; one scalar per class is kept, no samples);
- ``ca``: classifier alignment (SLCA, Zhang et al. ICCV'23; HiDe-Prompt): each class's head-input feature
  mean and covariance, taken on its training data at its task's end, and the head retrained on features
  drawn from those Gaussians for every class seen (statistics, not samples: still rehearsal-free).
``--slow F`` trains everything but the head (prompts, keys) at F times the method's learning rate: SLCA's
other half, the slow learner, aimed at the old task's drift under the shared prompt pool.
The hooks wrap ``PromptStrategy.end_task`` (and ``make_optimizer`` for ``--slow``) in this process only: a
probe of an idea, not the engine's code.

    python bench/probe_rep_head.py --backbone B.pt --seeds 30-32 --out runs.jsonl   # one process per core

Last line of stdout: one JSON object, per variant and method mean and sd, and REP minus base seed by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from miro_runtime.engine.metrics import evaluate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rep  # noqa: E402

STREAM = "split-fashion-mnist"
REP_OPTS = {"gamma": "0.02", "query_backbone": "", "query_layers": "2", "theta_bar": "0.8"}  # rep_fmnist's
VARIANTS = ("none", "anchor", "ca")


def logits_and_features(m, x, batch: int = 256):
    """(N, K) logits and (N, D) head-input features of ``x``, eval mode, no grad."""
    feats, outs = [], []
    hook = m.head.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].detach()))
    m.eval()
    try:
        with torch.no_grad():
            x = torch.as_tensor(x)
            outs = [m(x[i:i + batch]) for i in range(0, len(x), batch)]
    finally:
        hook.remove()
    return torch.cat(outs), torch.cat(feats)


def align(head, stats: dict, seed: int, per: int = 256, epochs: int = 10, lr: float = 0.01) -> None:
    """Retrain ``head`` on ``per`` features a class drawn from each seen class's Gaussian, all classes at once."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, (mu, cov) in sorted(stats.items()):
        chol = torch.linalg.cholesky(cov + 1e-3 * torch.eye(len(mu)))  # a small ridge: 200 samples, 128 dims
        xs.append(mu + torch.randn(per, len(mu), generator=g) @ chol.T)
        ys.append(torch.full((per,), c))
    X, Y = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.Adam(head.fc.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(Y), generator=g)
            for i in range(0, len(Y), 64):
                idx = perm[i:i + 64]
                loss = torch.nn.functional.cross_entropy(head(X[idx]), Y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()


class Probe:
    """State of one run: per-class statistics, and the last task's accuracy rows under each variant."""

    def __init__(self):
        self.own, self.stats, self.rows = {}, {}, {}

    def end_task(self, strat, t: int, x, y) -> None:
        m = strat.model
        y = np.asarray(y)
        lg, f = logits_and_features(m, x)
        classes = sorted(set(y.tolist()))
        new_own = {c: float(lg[y == c, c].mean()) for c in classes}
        for c in classes:
            fc = f[torch.from_numpy(y == c)]
            self.stats[c] = (fc.mean(0), torch.cov(fc.T))
        if t < len(strat.stream.tasks) - 1:
            self.own.update(new_own)
            return
        fc = m.head.fc
        W, B = fc.weight.data.clone(), fc.bias.data.clone()
        shift = np.mean(list(self.own.values())) - np.mean(list(new_own.values()))
        self.rows["none"] = evaluate(m, strat.stream, t)
        fc.bias.data[classes] = B[classes] + float(shift)
        self.rows["anchor"] = evaluate(m, strat.stream, t)
        fc.bias.data.copy_(B)
        align(m.head, self.stats, strat.cfg.seed)
        self.rows["ca"] = evaluate(m, strat.stream, t)
        fc.weight.data.copy_(W)
        fc.bias.data.copy_(B)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, help="a `miro rep pretrain` file (bench/rep_fmnist.py's recipe)")
    ap.add_argument("--seeds", default="30-32", help="FIRST-LAST; keep clear of the seeds a bench judges")
    ap.add_argument("--methods", default="l2p,rep-l2p")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="JSON lines, one a run (appended)")
    ap.add_argument("--root", default="/tmp/miro-probe-rep-head")
    ap.add_argument("--slow", type=float, default=1.0, help="learning-rate factor of all but the head")
    a = ap.parse_args(argv)
    from miro_runtime import RunConfig, run
    from miro_runtime.engine.strategies.prompt import PromptStrategy
    first, _, last = a.seeds.partition("-")
    seeds = list(range(int(first), int(last or first) + 1))
    current = {}  # the run's Probe
    plain_end = PromptStrategy.end_task

    def end_task(self, t, x, y, ids, online):
        plain_end(self, t, x, y, ids, online)
        current["probe"].end_task(self, t, x, y)
    PromptStrategy.end_task = end_task
    if a.slow != 1.0:
        def make_optimizer(self):
            head = [p for p in self.model.head.parameters() if p.requires_grad]
            ids = {id(p) for p in head}
            rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
            return torch.optim.Adam([{"params": head}, {"params": rest, "lr": self.opts.lr * a.slow}],
                                    lr=self.opts.lr)
        PromptStrategy.make_optimizer = make_optimizer
    runs = []
    for seed in seeds:
        for name in a.methods.split(","):
            probe = current["probe"] = Probe()
            cfg = RunConfig(stream=STREAM, strategy=name, backbone=a.backbone, classes=rep.ACC_CLASSES,
                            tasks=rep.ACC_TASKS, epochs=10, seed=seed, threads=a.threads, checkpoint_every=0,
                            method=dict(REP_OPTS) if name.startswith("rep") else {}, batch_size=64,
                            train_per_class=rep.STREAMS[STREAM]["per_class"],
                            run_dir=os.path.join(a.root, f"{name}-{seed}-slow{a.slow:g}"))
            s = run(cfg, stream=rep.prompt_stream(STREAM, rep.ACC_TASKS, seed))
            r = {"seed": seed, "method": name, "slow": a.slow, "final_avg_acc": s["final_avg_acc"], "rows": probe.rows,
                 **{v: float(np.mean(probe.rows[v])) for v in VARIANTS}}
            runs.append(r)
            with open(a.out, "a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"seed {seed} {name}: " + ", ".join(f"{v} {100 * r[v]:.1f}" for v in VARIANTS), file=sys.stderr)
    print(json.dumps(summary(runs)))


def summary(runs: list) -> dict:
    out = {}
    by = {(r["seed"], r["method"]): r for r in runs}
    for v in VARIANTS:
        out[v] = {}
        for name in sorted({r["method"] for r in runs}):
            accs = [r[v] for r in runs if r["method"] == name]
            out[v][name] = {"mean": float(np.mean(accs)), "sd": float(np.std(accs))}
        for base, rep_name in rep.PAIRS:
            d = [by[(s, rep_name)][v] - by[(s, base)][v] for s, n in by if n == base and (s, rep_name) in by]
            if d:
                out[v][f"{rep_name}_minus_{base}"] = {"runs": d, "mean": float(np.mean(d)),
                                                      "sd": float(np.std(d, ddof=1)) if len(d) > 1 else None}
    return out


if __name__ == "__main__":
    main()
