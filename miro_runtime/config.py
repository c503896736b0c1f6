"""Run configuration: one dataclass, JSON in and out (the run directory keeps a copy for --resume)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional


_OPTIONAL = {"flash_budget": int, "tasks": int, "data_dir": str, "run_dir": str}  # None allowed
# the strategies' names without importing them (and torch): control commands validate configs too
STRATEGY_NAMES = ("finetune", "joint", "er", "der", "carm", "carm-sync")


@dataclass
class RunConfig:
    stream: str = "split-digits"
    strategy: str = "carm"  # finetune | joint | er | der | carm | carm-sync
    replay: str = "er"  # the method CarM runs on top of: er | der
    memory: int = 20  # RAM episodic memory, samples
    flash_budget: Optional[int] = 2000  # flash tier, samples (None: unbounded)
    flash_policy: str = "class-balanced"  # or reservoir
    em_policy: str = "class-balanced"  # or reservoir
    swap_ratio: float = 0.5
    swap_workers: int = 1
    swap_group_ms: float = 15.0  # async CarM: one swap job per this much training (0: one per step)
    epochs: int = 5
    online: bool = False  # single pass as batches arrive (the daemon's setting)
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    clip_grad: float = 5.0
    der_alpha: float = 0.3
    der_beta: float = 0.5
    model: str = "auto"  # cnn | resnet18 | auto
    tasks: Optional[int] = None
    seed: int = 0
    data_dir: Optional[str] = None
    download: bool = False
    synthetic: dict = field(default_factory=dict)  # shape, num_classes, per_class, noise
    device: str = "cpu"
    threads: int = 1  # torch intra-op threads on the CPU (0: torch's default, one per core)
    run_dir: Optional[str] = None
    checkpoint_every: int = 200  # steps; a checkpoint is also written at every task end
    sync_mode: str = "sync"
    energy_source: str = "auto"  # auto | nvml | rapl | jetson | pi5 | estimate
    miro: bool = False  # retune memory, flash, swap ratio and epochs per task for accuracy per joule
    miro_rule: str = "top-half-acc-per-joule"  # | lowest-energy | highest-accuracy | zeus
    miro_search: str = "bandit"  # | grid
    miro_budget: float = 0.10  # profiling energy cap, share of the previous task's energy
    # resource pressure: Miro re-decides mid-task when one of these newly holds
    miro_ram_floor_mb: float = 256.0  # available RAM under this: move to a smaller RAM memory
    miro_battery_floor: float = 20.0  # battery % under this, unplugged: move to a cheaper arm
    monitor_every_s: float = 2.0  # how often the resources are read during a task (0: every step)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, origin: str = "run config") -> "RunConfig":
        """Parse and type-check a stored configuration; ValueError naming the key otherwise."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{origin} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{origin} holds {type(data).__name__}, not a configuration object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{origin}: unknown run config keys: {unknown}")
        defaults = cls()
        for k, v in data.items():
            want = _OPTIONAL.get(k) or type(getattr(defaults, k))
            ok = (v is None and k in _OPTIONAL) or (isinstance(v, want) and
                                                    not (want is not bool and isinstance(v, bool)))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                data[k], ok = float(v), True
            if not ok:
                raise ValueError(f"{origin}: {k} = {v!r} must be {want.__name__}{' or null' if k in _OPTIONAL else ''}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGY_NAMES:
            problems.append(f"strategy {self.strategy!r} is not one of {sorted(STRATEGY_NAMES)}")
        if self.replay not in ("er", "der"):
            problems.append(f"replay {self.replay!r} must be er or der")
        if self.memory < 0:
            problems.append(f"memory must be >= 0 samples, got {self.memory}")
        if self.flash_budget is not None and self.flash_budget < 1:
            problems.append(f"flash budget must be >= 1 sample, got {self.flash_budget}")
        if not 0.0 <= self.swap_ratio <= 1.0:
            problems.append(f"swap ratio must lie in [0, 1], got {self.swap_ratio}")
        if self.swap_group_ms < 0:
            problems.append(f"swap group must be >= 0 ms, got {self.swap_group_ms}")
        for name in ("miro_ram_floor_mb", "miro_battery_floor", "monitor_every_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threads < 0:
            problems.append(f"threads must be >= 0 (0: one per core), got {self.threads}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("epochs and batch size must be >= 1")
        if self.lr <= 0:
            problems.append(f"learning rate must be > 0, got {self.lr}")
        if problems:
            raise ValueError("; ".join(problems))
