"""A prompted frozen ViT: query -> prompt selection -> the backbone block by block with AToM and ALD
-> growing head. One module serves L2P, DualPrompt and their REP variants; which parts are on is
decided by its arguments (the strategies in ``strategies/`` set them).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from ..heads import CosineHead, GrowingHead
from . import ald
from .atom import schedule
from .prompts import DualPromptSet, L2PPool
from .vit import block, embed, preprocess

FROZEN = ("backbone.", "query.small.")  # state-dict prefixes of frozen weights: loaded from files, never saved


class PromptedViT(nn.Module):
    def __init__(self, backbone, spec, method: str, query: nn.Module, *, pool_size=10, length=5, top_k=5,
                 g_layers=(0, 1), g_length=5, e_layers=(2, 3, 4), e_length=10, r_max: int = 0,
                 ald_opts=None, seed: int = 0, head: str = "linear"):
        super().__init__()
        if method not in ("l2p", "dualprompt"):
            raise ValueError(f"unknown prompt method {method!r}")
        self.backbone, self.spec, self.method, self.query = backbone, spec, method, query
        L, D = spec.num_layers, spec.hidden_dim
        if method == "l2p":
            self.prompts = L2PPool(D, pool_size, length, top_k)
            self.prompt_layers = {0}  # the prompts enter at the first block's input
        else:
            self.prompts = DualPromptSet(D, spec.num_heads, L, g_layers, g_length, e_layers, e_length)
            self.prompt_layers = set(g_layers) | set(e_layers)
        self.head = CosineHead(D) if head == "cosine" else GrowingHead(D)
        self.set_r_max(r_max)
        self.ald_opts = ald_opts  # None: every layer runs; else theta_bar, gamma, alpha, tau
        self.ald_rng = np.random.default_rng([seed, 4242])
        self.task, self.clock = 0, 0.0  # ALD's clock t (the strategy advances it)
        self.last_match_loss = None
        self.last_query_s = 0.0
        self.reset_counters()

    def set_r_max(self, r_max: int):
        self.r_max = int(r_max)
        self.schedule = schedule(self.spec.num_layers, self.r_max) if self.r_max else [0] * self.spec.num_layers

    def reset_counters(self):
        L = self.spec.num_layers
        self.counters = {"steps": 0, "merged": [0] * L, "kept": [0] * L}

    def keep_probs(self) -> list:
        o = self.ald_opts
        return ald.keep_probabilities(self.clock, self.schedule, self.prompt_layers, o["theta_bar"], o["gamma"],
                                      o["alpha"], o["tau"])

    def trainable_state(self) -> dict:
        """Prompts, keys, head and the swift projection: what a checkpoint keeps (frozen weights come
        from their files)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) uint8 -> (B, K)
        img = preprocess(x, self.spec.image_size)  # (B, 3, S, S)
        t0 = time.perf_counter()
        q = self.query(img)  # (B, D), no grad
        self.last_query_s = time.perf_counter() - t0
        tokens = embed(self.backbone, img)  # (B, 1 + N, D)
        prefixes = {}
        if self.method == "l2p":
            p, loss, _ = self.prompts.select(q)  # (B, k*Lp, D)
            tokens = torch.cat([tokens[:, :1], p, tokens[:, 1:]], dim=1)  # (B, 1 + P + N, D)
            protect = 1 + p.shape[1]
        else:
            prefixes, loss, _ = self.prompts.select(q, self.task if self.training else None)
            protect = 1
        self.last_match_loss = loss
        keep = ald.draw(self.keep_probs(), self.ald_rng) if self.training and self.ald_opts else None
        size = None
        c = self.counters
        for i, blk in enumerate(self.backbone.encoder.layers):
            if keep is not None and not keep[i]:
                continue  # ALD: this layer is skipped for this step
            tokens, size, m = block(blk, tokens, size, protect, prefixes.get(i), self.schedule[i])
            if self.training:
                c["merged"][i] += m
                c["kept"][i] += 1
        if self.training:
            c["steps"] += 1
        h = self.backbone.encoder.ln(tokens)  # (B, T, D)
        feat = h[:, 1:protect].mean(dim=1) if self.method == "l2p" else h[:, 0]  # (B, D)
        return self.head(feat)

    def applied(self) -> dict:
        """What AToM and ALD did over the training steps counted: mean tokens merged and share of steps
        run, per layer."""
        c = self.counters
        n = max(c["steps"], 1)
        return {"merge_schedule": list(self.schedule),
                "merged_per_layer": [round(m / n, 3) for m in c["merged"]],
                "layer_keep_rate": [round(k / n, 3) for k in c["kept"]], "steps": c["steps"]}
