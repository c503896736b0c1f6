"""Assemble a ``PromptedViT`` from a run's configuration: backbone file, query network, options."""

from __future__ import annotations

import os

from .model import PromptedViT
from .swift import BackboneQuery, SwiftQuery
from .vit import load_backbone


def build_prompted(method: str, opts, cfg, stream, rep: bool = False) -> PromptedViT:
    if not cfg.backbone:
        raise ValueError(f"--strategy {cfg.strategy} prompts a frozen pretrained ViT: give its weights with "
                         "--backbone FILE (a torchvision VisionTransformer state dict; `miro rep pretrain` makes one)")
    vit, spec, digest = load_backbone(cfg.backbone, heads=opts.heads or None)
    info = {"path": os.path.abspath(cfg.backbone), "sha256": digest, "spec": spec.__dict__, "query": "backbone",
            "query_sha256": None}
    if rep and opts.swift:
        seed = cfg.seed if opts.projection_seed < 0 else opts.projection_seed
        if opts.query_backbone:
            small, sspec, sdig = load_backbone(opts.query_backbone)
            query = SwiftQuery(small, sspec.image_size, spec.hidden_dim, seed)
            info.update(query="swift: " + os.path.abspath(opts.query_backbone), query_sha256=sdig,
                        query_spec=sspec.__dict__)
        else:
            layers = opts.query_layers or max(1, spec.num_layers // 4)
            query = SwiftQuery(vit, spec.image_size, spec.hidden_dim, seed, layers=min(layers, spec.num_layers),
                               owned=False)
            info.update(query=f"swift: the backbone's first {min(layers, spec.num_layers)} blocks")
    else:
        query = BackboneQuery(vit, spec.image_size)
    kw = {}
    if method == "l2p":
        kw = dict(pool_size=opts.pool_size, length=opts.length, top_k=opts.top_k)
    else:
        kw = dict(g_layers=opts.g_layers, g_length=opts.g_length, e_layers=opts.e_layers, e_length=opts.e_length)
    r_max = opts.r_max if rep and opts.atom else 0
    ald_opts = ({"theta_bar": opts.theta_bar, "gamma": opts.gamma, "alpha": opts.alpha, "tau": opts.tau,
                 "clock": opts.ald_clock} if rep and opts.ald else None)
    model = PromptedViT(vit, spec, method, query, r_max=r_max, ald_opts=ald_opts, seed=cfg.seed, head=opts.head, **kw)
    model.opts, model.backbone_info = opts, info
    return model
