"""Run configuration: one dataclass, JSON in and out (the run directory keeps a copy for --resume)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from miro_runtime.choices import PROMPT_STRATEGIES, RUN_CHOICES

# None allowed
_OPTIONAL = {"flash_budget": int, "tasks": int, "data_dir": str, "run_dir": str, "backbone": str, "classes": str}


@dataclass
class RunConfig:
    stream: str = "split-digits"
    strategy: str = "carm"  # one of choices.STRATEGIES
    backbone: Optional[str] = None  # the prompt methods' frozen ViT: a torchvision state dict file
    method: dict = field(default_factory=dict)  # the strategy's own hyperparameters (--method-opt KEY=VALUE)
    classes: Optional[str] = None  # keep only these classes of the stream ("5-9", "0,2,4"), in this order
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

    def validate(self, names: str = "flag") -> None:
        """Every knob checked; a ValueError lists each problem under the name the caller knows it by:
        the CLI flag (``--lr``) by default, ``learning.lr`` for the daemon's TOML (``names="key"``)."""
        problems = []

        def bad(field, msg):
            problems.append(f"{'--' + field.replace('_', '-') if names == 'flag' else 'learning.' + field}: {msg}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                bad(f.name, f"must be a finite number, got {v}")
        if problems:  # NaN and inf make every comparison below meaningless
            raise ValueError("; ".join(problems))
        for name, allowed in RUN_CHOICES.items():
            if name != "stream" and getattr(self, name) not in allowed:
                bad(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.strategy in PROMPT_STRATEGIES and not self.backbone:
            bad("backbone", f"--strategy {self.strategy} prompts a frozen pretrained ViT: give its state dict file "
                            "(make one with `miro rep pretrain`)")
        if self.backbone and self.strategy not in PROMPT_STRATEGIES:
            bad("backbone", f"only the prompt strategies ({', '.join(PROMPT_STRATEGIES)}) use a backbone file; "
                            f"--strategy {self.strategy} trains --model")
        if not isinstance(self.method, dict) or any(not isinstance(k, str) for k in self.method):
            bad("method", "method options are a mapping of option names to values")
        if self.classes is not None:
            try:
                parse_classes(self.classes)
            except ValueError as e:
                bad("classes", str(e))
        if self.memory < 0:
            bad("memory", f"memory must be >= 0 samples, got {self.memory}")
        if self.flash_budget is not None and self.flash_budget < 1:
            bad("flash_budget", f"flash budget must be >= 1 sample (or unbounded), got {self.flash_budget}")
        if not 0.0 <= self.swap_ratio <= 1.0:
            bad("swap_ratio", f"swap ratio must lie in [0, 1], got {self.swap_ratio}")
        if self.swap_group_ms < 0:
            bad("swap_group_ms", f"swap group must be >= 0 ms, got {self.swap_group_ms}")
        if self.swap_workers < 1:
            bad("swap_workers", f"must be >= 1, got {self.swap_workers}")
        for name in ("miro_ram_floor_mb", "miro_battery_floor", "monitor_every_s", "clip_grad", "der_alpha",
                     "der_beta", "momentum"):
            if getattr(self, name) < 0:
                bad(name, f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.miro_budget <= 1:
            bad("miro_budget", f"must lie in (0, 1] (a share of the previous task's energy), got {self.miro_budget}")
        if self.threads < 0:
            bad("threads", f"threads must be >= 0 (0: one per core), got {self.threads}")
        if self.epochs < 1:
            bad("epochs", f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            bad("batch_size", f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            bad("lr", f"learning rate must be > 0, got {self.lr}")
        if self.tasks is not None and self.tasks < 1:
            bad("tasks", f"must be >= 1 (or left out for the stream's default), got {self.tasks}")
        if self.checkpoint_every < 0:
            bad("checkpoint_every", f"must be >= 0 steps (0: only at task ends), got {self.checkpoint_every}")
        if self.seed < 0:
            bad("seed", f"must be >= 0, got {self.seed}")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", str(self.device)):
            bad("device", f"{self.device!r} is not a device: cpu, auto, cuda, cuda:N or mps")
        syn = self.synthetic or {}
        if syn:
            shape = syn.get("shape", (1, 16, 16))
            if len(tuple(shape)) != 3 or any(int(v) < 1 for v in shape):
                problems.append(f"{'--synthetic-shape' if names == 'flag' else 'learning.synthetic'}: C,H,W must be "
                                f"three integers >= 1, got {list(shape)}")
            if int(syn.get("num_classes", 10)) < 1 or int(syn.get("per_class", 200)) < 2:
                who = "--synthetic-classes/--synthetic-per-class" if names == "flag" else "learning.synthetic"
                problems.append(f"{who}: need >= 1 class and >= 2 samples per class")
        if problems:
            raise ValueError("; ".join(problems))


def parse_classes(spec: str) -> list:
    """"5-9" or "0,2,4" or "0-2,7" -> [5, 6, 7, 8, 9] ...; ValueError on anything else."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"{spec!r}: give class ids as a list and ranges, e.g. 5-9 or 0,2,4")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"{spec!r}: range {part} runs backwards")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{spec!r}: a class is named twice")
    return out
