"""What the rehearsal-free prompt methods share (L2P, DualPrompt and their REP variants): a frozen
ViT from a local file, only prompts, keys and the head trained, L2P's train-time logit mask (a step
only competes among the current task's classes), per-step time and memory accounting. No replay and
no flash reads: the samples still go to the flash tier (crash-safe ingest), nothing reads them back.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .base import Strategy


def parse_options(cls, given: dict, strategy: str):
    """A method's options dataclass from ``--method-opt KEY=VALUE`` pairs (strings) or a stored config
    (JSON values), each typed by the one conversion, ``miro_runtime.config.typed``; a ValueError naming
    the key otherwise."""
    import typing

    from miro_runtime.config import typed
    known = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in (given or {}).items():
        if k not in known:
            raise ValueError(f"--method-opt {k}: not an option of --strategy {strategy}; its options are "
                             f"{', '.join(sorted(known))}")
        want = tuple[int, ...] if hints[k] is tuple else hints[k]  # a bare tuple option lists layer indices
        out[k] = typed(v, want, k, "--method-opt")
    opts = cls(**out)
    problems = opts.check()
    if problems:
        raise ValueError("; ".join(f"--method-opt {p}" for p in problems))
    return opts


class SavedBytes:
    """Bytes the autograd graph keeps for the backward pass (frozen weights excluded): on a CPU the
    activation memory a step needs, the part of memory these methods change."""

    def __init__(self, model):
        self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen, self.total = set(), 0

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += st.nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


@dataclass
class PromptOptions:
    lr: float = 0.01  # Adam, over prompts, keys and head
    match_coeff: float = 0.5  # weight of the key-query matching loss
    heads: int = 0  # attention heads of the backbone (0: from its width, 64 per head)
    train_mask: bool = True  # a step competes only among the current task's classes (L2P's train mask)
    head: str = "linear"  # classifier: linear (as the papers) | cosine (old and new classes on one scale)

    def check(self) -> list:
        p = []
        if self.lr <= 0:
            p.append(f"lr={self.lr}: must be > 0")
        if self.match_coeff < 0:
            p.append(f"match_coeff={self.match_coeff}: must be >= 0")
        if self.head not in ("linear", "cosine"):
            p.append(f"head={self.head!r}: must be linear or cosine")
        if self.heads < 0:
            p.append(f"heads={self.heads}: must be >= 0")
        return p


class PromptStrategy(Strategy):
    """Base of the prompt methods. Subclasses set ``method`` ("l2p" | "dualprompt"), ``Options`` and
    ``rep`` (swift selection + AToM + ALD available)."""

    uses_memory = False
    method = "l2p"
    Options = PromptOptions
    rep = False

    @classmethod
    def build_model(cls, cfg, stream):
        from ..rep.build import build_prompted
        opts = parse_options(cls.Options, cfg.method, cfg.strategy)
        return build_prompted(cls.method, opts, cfg, stream, rep=cls.rep)

    def __init__(self, model, cfg, flash, stream, device="cpu"):
        super().__init__(model, cfg, flash, stream, device)
        self.opts = model.opts
        self.step_s, self.query_s, self.mem, self.peak_saved = [], [], [], 0
        self.steps_done = 0
        self.cuda = self.device.type == "cuda"
        self.param_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))

    def make_optimizer(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.opts.lr)

    def begin_task(self, t: int) -> None:
        self.task = t
        m = self.model
        m.task = t
        if m.method == "dualprompt":
            m.prompts.grow(t + 1)
        m.head.grow(len(self.stream.classes_upto(t)))
        m.to(self.device)
        self.opt = self.make_optimizer()

    def _mask(self, k: int):
        """L2P's train-time mask: logits of classes outside the current task are left out."""
        cur = [c for c in self.stream.tasks[self.task].classes if c < k] if self.task >= 0 else []
        mask = torch.full((k,), float("-inf"), device=self.device)
        mask[cur] = 0.0
        return mask

    def advance_clock(self):
        m = self.model
        if m.ald_opts:
            m.clock = float(self.task) if m.ald_opts["clock"] == "task" else float(self.steps_done)

    def observe(self, x, y):
        m = self.model
        m.train()
        m.task = self.task
        self.advance_clock()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with SavedBytes(m) as sb:
            logits = m(x.to(self.device))  # (B, K)
            if self.opts.train_mask:
                logits = logits + self._mask(logits.shape[1])
            loss = F.cross_entropy(logits, y.to(self.device))
            if m.last_match_loss is not None and self.opts.match_coeff:
                loss = loss + self.opts.match_coeff * m.last_match_loss
        value = self.step(loss)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            used = torch.cuda.max_memory_allocated(self.device)
        else:
            used = sb.total + self.param_bytes
        self.peak_saved = max(self.peak_saved, used)
        self.mem.append(used)
        self.step_s.append(time.perf_counter() - t0)
        self.query_s.append(m.last_query_s)
        self.steps_done += 1
        return value

    def step(self, loss) -> float:
        value = float(loss.detach())
        if not np.isfinite(value):
            self.skipped_steps += 1
            return value
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.clip_grad)
        self.opt.step()
        return value

    # ---------------------------------------------------------------- reporting
    def cost(self) -> dict:
        """Per-step training cost so far: median step time (query included) and the query's own
        time, peak memory of a step and where that figure comes from."""
        med = (lambda v: statistics.median(v) * 1e3 if v else None)
        return {"step_ms": med(self.step_s), "query_ms": med(self.query_s),
                "peak_mem_mb": self.peak_saved / 2**20 if self.peak_saved else None,
                "step_mem_mb": statistics.median(self.mem) / 2**20 if self.mem else None,
                "peak_mem_source": "torch.cuda.max_memory_allocated" if self.cuda else
                "autograd saved tensors + parameters and buffers (CPU)"}

    def stats(self) -> dict:
        return {**super().stats(), **self.cost(), **self.model.applied()}

    def summary_extra(self) -> dict:
        a = self.model.applied()
        return {**self.cost(), "merge_counts": a["merge_schedule"], "merged_per_layer": a["merged_per_layer"],
                "layer_keep_rate": a["layer_keep_rate"], "backbone": self.model.backbone_info}

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        m = self.model
        st = {"model": m.trainable_state(), "head_classes": m.head.num_classes, "task": self.task,
              "rng": json.dumps(self.rng.bit_generator.state), "backbone": json.dumps(m.backbone_info),
              "prompt_tasks": m.prompts.num_tasks if m.method == "dualprompt" else 0,
              "ald_rng": json.dumps(m.ald_rng.bit_generator.state), "steps_done": self.steps_done,
              "r_max": m.r_max, "ald": json.dumps(m.ald_opts), "counters": json.dumps(m.counters),
              "cost": json.dumps({"step_s": self.step_s[-512:], "query_s": self.query_s[-512:],
                                  "mem": self.mem[-512:], "peak": self.peak_saved})}
        if self.opt is not None:
            st["opt"] = self.opt.state_dict()
        return st

    def load_state_dict(self, st: dict) -> None:
        m = self.model
        saved = json.loads(st["backbone"])
        for k in ("sha256", "query_sha256"):
            if saved.get(k) != m.backbone_info.get(k):
                what = "backbone" if k == "sha256" else "swift query backbone"
                raise ValueError(f"the checkpoint's prompts were trained on the {what} with sha256 "
                                 f"{str(saved.get(k))[:12]}..., but this run loads one with "
                                 f"{str(m.backbone_info.get(k))[:12]}...: prompts only fit the backbone they were "
                                 f"trained on")
        if m.method == "dualprompt":
            m.prompts.grow(st["prompt_tasks"])
        m.head.grow(st["head_classes"])
        missing, unexpected = m.load_state_dict(st["model"], strict=False)
        lost = [k for k in missing if not k.startswith(("backbone.", "query.small."))]
        if lost or unexpected:
            raise ValueError(f"checkpoint does not fit this prompt model: missing {lost[:3]}, unexpected "
                             f"{unexpected[:3]}")
        m.to(self.device)
        self.task = m.task = st["task"]
        self.rng.bit_generator.state = json.loads(st["rng"])
        m.ald_rng.bit_generator.state = json.loads(st["ald_rng"])
        self.steps_done = st["steps_done"]
        m.set_r_max(st["r_max"])
        m.ald_opts = json.loads(st["ald"])
        m.counters = json.loads(st["counters"])
        c = json.loads(st["cost"])
        self.step_s, self.query_s, self.mem, self.peak_saved = c["step_s"], c["query_s"], c["mem"], c["peak"]
        self.opt = self.make_optimizer()
        if "opt" in st:
            self.opt.load_state_dict(st["opt"])

