"""REP (Jeon et al.): a prompt method made cheap -- swift prompt selection (the query from a small
ViT), AToM (adaptive token merging) and ALD (adaptive layer dropping), each switchable for ablations.
The mechanisms live in ``miro_runtime.engine.rep``; this file only binds them to L2P and DualPrompt."""

from dataclasses import dataclass

from .dualprompt import DualPrompt, DualPromptOptions
from .l2p import L2P, L2POptions


@dataclass
class REPKnobs:
    swift: bool = True  # query from a small ViT (swift prompt selection)
    atom: bool = True  # adaptive token merging
    ald: bool = True  # adaptive layer dropping
    r_max: int = 8  # AToM: tokens merged in the last layer
    theta_bar: float = 0.5  # ALD: the keep probability's floor
    gamma: float = 0.001  # ALD: decay per unit of the clock
    alpha: float = 0.9  # ALD: keep factor of layers that merge more than tau tokens
    tau: int = 4  # ALD: merge count above which a layer gets alpha
    ald_clock: str = "step"  # step: t counts training steps (PLD's clock); task: t is the task index
    query_backbone: str = ""  # the small ViT's state dict; empty: the backbone's first query_layers blocks
    query_layers: int = 0  # 0: a quarter of the backbone's blocks (at least one)
    projection_seed: int = -1  # -1: the run's seed

    def check_rep(self) -> list:
        p = [f"{k}={getattr(self, k)}: must be >= 0" for k in ("r_max", "tau", "query_layers", "gamma")
             if getattr(self, k) < 0]
        if not 0.0 <= self.theta_bar <= 1.0:
            p.append(f"theta_bar={self.theta_bar}: must lie in [0, 1]")
        if not 0.0 < self.alpha <= 1.0:
            p.append(f"alpha={self.alpha}: must lie in (0, 1]")
        if self.ald_clock not in ("step", "task"):
            p.append(f"ald_clock={self.ald_clock!r}: must be step or task")
        return p


@dataclass
class REPL2POptions(L2POptions, REPKnobs):
    def check(self) -> list:
        return L2POptions.check(self) + self.check_rep()


@dataclass
class REPDualPromptOptions(DualPromptOptions, REPKnobs):
    def check(self) -> list:
        return DualPromptOptions.check(self) + self.check_rep()


class _REP:
    rep = True

    @classmethod
    def option_files(cls, opts) -> tuple:
        return (("--method-opt query_backbone", opts.query_backbone),)

    def set_knobs(self, r_max=None, theta_bar=None, **rest) -> None:
        if rest:
            raise ValueError(f"{self.name} has no tunable knobs {sorted(rest)}")
        m = self.model
        if r_max is not None and self.opts.atom:
            m.set_r_max(r_max)
        if theta_bar is not None and m.ald_opts:
            m.ald_opts = {**m.ald_opts, "theta_bar": float(theta_bar)}


class REPL2P(_REP, L2P):
    name = "rep-l2p"
    Options = REPL2POptions


class REPDualPrompt(_REP, DualPrompt):
    name = "rep-dualprompt"
    Options = REPDualPromptOptions
