"""CL methods, one file each, all behind begin_task / observe / end_task."""

from .base import Strategy
from .carm import CarM, select_swap_out
from .der import DER
from .er import ER
from .finetune import Finetune
from .joint import Joint

STRATEGIES = {"finetune": Finetune, "joint": Joint, "er": ER, "der": DER, "carm": CarM, "carm-sync": CarM}


def make_strategy(name, model, cfg, flash, stream, device="cpu"):
    if name in ("carm", "carm-sync"):
        base = {"er": ER, "der": DER}[cfg.replay](model, cfg, flash, stream, device)
        return CarM(base, sync=name == "carm-sync")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](model, cfg, flash, stream, device)


__all__ = ["Strategy", "Finetune", "Joint", "ER", "DER", "CarM", "select_swap_out", "STRATEGIES", "make_strategy"]
