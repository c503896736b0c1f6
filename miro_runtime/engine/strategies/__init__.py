"""CL methods, one file each, all behind begin_task / observe / end_task."""

from miro_runtime import choices

from .base import Strategy
from .carm import CarM, select_swap_out
from .dualprompt import DualPrompt
from .l2p import L2P
from .rep import REPDualPrompt, REPL2P
from .der import DER
from .er import ER
from .finetune import Finetune
from .joint import Joint

STRATEGIES = {"finetune": Finetune, "joint": Joint, "er": ER, "der": DER, "carm": CarM, "carm-sync": CarM,
              "l2p": L2P, "dualprompt": DualPrompt, "rep-l2p": REPL2P, "rep-dualprompt": REPDualPrompt}
assert tuple(STRATEGIES) == choices.STRATEGIES, "a strategy's name is listed in miro_runtime/choices.py"


def check_method(cfg) -> None:
    """Before anything is written: the strategy's own options parse, and its backbone file exists."""
    cls = STRATEGIES.get(cfg.strategy)
    if cls is None or cls.Options is None:
        if cfg.method:
            raise ValueError(f"--method-opt: --strategy {cfg.strategy} takes no method options (its knobs are "
                             f"`miro run` flags); got {sorted(cfg.method)}")
        return
    from .prompt import parse_options
    opts = parse_options(cls.Options, cfg.method, cfg.strategy)
    import os
    for flag, path in (("--backbone", cfg.backbone), *cls.option_files(opts)):
        if path and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file (make one with `miro rep pretrain`)")


def build_model(cfg, stream):
    """The network a strategy trains: the prompt methods build their own (a frozen ViT from
    ``--backbone``), the others the backbone ``--model`` names."""
    return STRATEGIES.get(cfg.strategy, Strategy).build_model(cfg, stream)


def make_strategy(name, model, cfg, flash, stream, device="cpu"):
    if name in ("carm", "carm-sync"):
        base = {"er": ER, "der": DER}[cfg.replay](model, cfg, flash, stream, device)
        return CarM(base, sync=name == "carm-sync")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](model, cfg, flash, stream, device)


__all__ = ["Strategy", "Finetune", "Joint", "ER", "DER", "CarM", "select_swap_out", "L2P", "DualPrompt", "REPL2P",
           "REPDualPrompt", "STRATEGIES", "make_strategy", "build_model", "check_method"]
