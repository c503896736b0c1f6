"""Run configuration: one dataclass, JSON in and out (the run directory keeps a copy for --resume), and
``typed``, the one conversion of a written value into a typed setting.

Each RunConfig field is defined once, with its `miro run` option in the field's ``metadata`` (``about``):
cli/options.py builds the click options from them, so a flag's help cannot drift from its setting, and the
allowed values come from choices.RUN_CHOICES by field name (as ``validate`` and the daemon's TOML read them).

``typed`` turns every written value into a setting: the daemon's TOML, ``MIROD_*`` environment, ``--set`` and
``miro config set`` (daemon/config.py), ``--method-opt`` (engine/strategies/prompt.py) and stored run configs
(``RunConfig.from_json``); kv/policies' ``--policy-opt`` does the same directly (kv/ does not import this
package). It is built on msgspec because msgspec decodes typed values from JSON and TOML data in one call
(``convert``: strict for stored JSON, where "3" is not an int; lax for text, where "3", "1e-3" and "true"
parse), its validation errors name the path that failed ("Expected `int`, got `str` - at `$.epochs`";
``typed`` names the key as the user wrote it instead), it is fast (C), and it needs neither torch nor
numpy, so the torch-free control path (the daemon's config, ``miro config set``) uses it as is. Around it,
``typed`` keeps the spellings msgspec does not know: yes/no/on/off, none for an optional setting, a comma
list for a tuple, JSON text for a table; and a number must be finite. A byte-size setting (the daemon's
``*_bytes`` keys) also takes a unit, ``10MiB``, ``512KiB``, ``1GB`` (``parse_bytes``, the one reading of one).
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from miro_runtime.choices import PROMPT_STRATEGIES, RUN_CHOICES

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("", "none", "None")  # an optional setting left unset, as env, --set and TOML strings spell it
# byte-size units: SI (powers of 1000) and IEC (powers of 1024), as `ls`, `df` and systemd spell them
BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_WHAT = {int: "int (an integer)", float: "float (a finite number)", bool: "bool (true or false)",
         str: "str (a string)", dict: "dict (a table, or JSON text)", tuple: "tuple (integers, e.g. 0,1)"}


def parse_bytes(text: str) -> int:
    """"10MiB" -> 10485760, "1.5KiB" -> 1536, "4096" -> 4096; a ValueError naming the unit otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m:
        raise ValueError("a byte size is a number with an optional unit, e.g. 4096, 512KiB, 10MiB, 1GB")
    number, unit = m.groups()
    if unit not in BYTE_UNITS:
        raise ValueError(f"unknown unit {unit!r}; byte sizes take {', '.join(u for u in BYTE_UNITS if u)}")
    n = float(number) * BYTE_UNITS[unit] if "." in number else int(number) * BYTE_UNITS[unit]
    if n != int(n):
        raise ValueError(f"{text.strip()} is not a whole number of bytes")
    return int(n)


def typed(value, type_, key: str, origin: str, spelled: bool = True, byte_size: bool = False):
    """``value`` as ``type_`` (int, float, bool, str, dict, tuple[int, ...], or Optional of one), else a
    ValueError ``"{origin} {key}={value!r}: must be {type}"`` naming the key as the caller knows it.

    ``spelled``: the value was written by a person (env, CLI, TOML, --method-opt): a string is read as its
    spelling (bool 1/0/true/false/yes/no/on/off, none/None/"" for an optional setting, "0,1" for a tuple,
    JSON text for a dict, numbers as msgspec parses them). Otherwise (a stored JSON config) each value must
    already be of its type, ints widening to float. ``byte_size``: an int setting counting bytes, whose
    spelling may carry a unit (``parse_bytes``)."""
    import msgspec  # here, not at the top: `miro status` imports this module for RunConfig's fields only

    base, optional = unwrap_optional(type_)
    what = _WHAT.get(typing.get_origin(base) or base, getattr(base, "__name__", str(base)))
    bad = ValueError(f"{origin} {key}={value!r}: must be {what}{' or none' if optional else ''}")
    if spelled and isinstance(value, str):
        text = value.strip()
        if optional and text in NONE_WORDS:
            return None
        if base is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise bad
            value = text.lower() in TRUE_WORDS
        elif base is dict:
            try:
                value = json.loads(text)
            except ValueError:
                raise bad from None
        elif byte_size and base is int:
            try:
                value = parse_bytes(text)
            except ValueError as e:
                raise ValueError(f"{origin} {key}={value!r}: {e}") from None
        elif typing.get_origin(base) is tuple:
            value = [part.strip() for part in text.split(",") if part.strip()]
        elif base is not str:
            value = text
    try:
        out = msgspec.convert(value, type_, strict=not spelled)
    except msgspec.ValidationError:
        raise bad from None
    if isinstance(out, float) and not math.isfinite(out):
        raise bad
    return out


def unwrap_optional(type_) -> tuple:
    """Optional[X] -> (X, True); X -> (X, False)."""
    args = typing.get_args(type_)
    if typing.get_origin(type_) is typing.Union and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return type_, False


def about(help_: str, **more) -> dict:
    """A RunConfig field's metadata, its `miro run` option: ``help`` (allowed values are appended from
    choices.RUN_CHOICES), and where they apply ``metavar``, ``min`` (the least value the flag takes),
    ``file`` (a file path), ``zero_is_none`` (0 spells None, unbounded, on the command line and in TOML),
    ``flag`` (the option's name where it is not the field's)."""
    return {"help": help_, **more}


@dataclass
class RunConfig:
    stream: str = field(default="split-digits", metadata=about("The task stream", metavar="NAME"))
    strategy: str = field(default="carm", metadata=about("The continual-learning method", metavar="NAME"))
    backbone: Optional[str] = field(default=None, metadata=about(
        "Prompt strategies: the frozen ViT, a torchvision state dict file (`miro rep pretrain` makes one).",
        file=True, metavar="FILE"))
    method: dict = field(default_factory=dict, metadata=about(
        "The strategy's own hyperparameters (`miro run --method-opt KEY=VALUE`)."))
    classes: Optional[str] = field(default=None, metadata=about(
        "Keep only these classes of the stream, in this order: 5-9 or 0,2,4.", metavar="IDS"))
    replay: str = field(default="er", metadata=about("Replay method under CarM", metavar="NAME"))
    memory: int = field(default=20, metadata=about("RAM episodic memory size, in samples."))
    flash_budget: Optional[int] = field(default=2000, metadata=about(
        "Flash tier size in samples (0: unbounded).", min=0, zero_is_none=True))
    flash_policy: str = field(default="class-balanced", metadata=about("Flash tier eviction", metavar="NAME"))
    em_policy: str = field(default="class-balanced", metadata=about("RAM memory eviction", metavar="NAME"))
    swap_ratio: float = field(default=0.5, metadata=about("Share of replayed samples swapped per step."))
    swap_workers: int = field(default=1, metadata=about("CarM's swap worker threads."))
    swap_group_ms: float = field(default=15.0, metadata=about(
        "Async CarM: fold the swaps of steps spanning this much training into one worker job "
        "(0: one job per step)."))
    epochs: int = field(default=5, metadata=about("Epochs per task (ignored with --online)."))
    online: bool = field(default=False, metadata=about(
        "Single pass: train as each batch arrives (the daemon's setting)."))
    batch_size: int = field(default=16, metadata=about("Stream samples per training step."))
    lr: float = field(default=0.05, metadata=about("Learning rate."))
    momentum: float = field(default=0.9, metadata=about("SGD momentum."))
    clip_grad: float = field(default=5.0, metadata=about("Gradient norm clip per step."))
    der_alpha: float = field(default=0.3, metadata=about("DER: weight of the replayed logits' loss."))
    der_beta: float = field(default=0.5, metadata=about("DER: weight of the replayed labels' loss."))
    ace: bool = field(default=False, metadata=about(
        "ER-ACE (Caccia et al. 2022): the incoming samples' cross-entropy counts only the classes in their "
        "batch, the replayed samples' every class. Old classes' logits are not pulled down when a task starts, "
        "so accuracy does not dip there (the stability gap): what a budget or deadline that stops training "
        "early leaves is not a model worse than before the task."))
    model: str = field(default="auto", metadata=about("The network the non-prompt strategies train", metavar="NAME"))
    freeze_blocks: Optional[int] = field(default=None, metadata=about(
        "efficientnet-lite0: pretrained blocks kept frozen, 0-16 (default 15, through stage 6: the last block, "
        "the 1x1 head and the classifier train; 0 trains it all)."))
    input_size: int = field(default=0, metadata=about(
        "efficientnet-lite0: images are resized to this side in pixels (0: 112)."))
    latent_replay: bool = field(default=False, metadata=about(
        "Store and replay the frozen blocks' output (latents), not images: a step trains only the blocks above."))
    drop_raw: bool = field(default=False, metadata=about(
        "With --latent-replay: keep only the latents in the flash tier, not the raw samples beside them."))
    tasks: Optional[int] = field(default=None, metadata=about("Number of tasks (default: 5; 10 for cifar100)."))
    seed: int = field(default=0, metadata=about("Random seed."))
    train_per_class: Optional[int] = field(default=None, metadata=about(
        "Keep at most N training samples per class (the same N for every seed; test sets whole).", metavar="N"))
    data_dir: Optional[str] = field(default=None, metadata=about(
        "Local dataset directory (torchvision or folder streams).", metavar="DIR"))
    download: bool = field(default=False, metadata=about("Let torchvision download the dataset into --data-dir."))
    synthetic: dict = field(default_factory=dict, metadata=about(
        "--stream synthetic: shape, num_classes, per_class, noise (`miro run --synthetic-*`)."))
    device: str = field(default="cpu", metadata=about("Torch device: cpu, auto, cuda, cuda:N or mps.",
                                                      metavar="DEVICE"))
    threads: int = field(default=1, metadata=about(
        "Torch intra-op threads on the CPU (0: one per core). One is cheaper per joule for small models."))
    run_dir: Optional[str] = field(default=None, metadata=about(
        "Where the store, metrics and checkpoints go (default: runs/<time>).", metavar="DIR"))
    checkpoint_every: int = field(default=200, metadata=about(
        "Steps between checkpoints; one is also written at every task end (0: only then)."))
    sync_mode: str = field(default="sync", metadata=about("Flash tier durability", metavar="NAME"))
    energy_source: str = field(default="auto", metadata=about("Energy meter", metavar="NAME"))
    miro: bool = field(default=False, metadata=about(
        "Retune memory, flash, swap ratio, epochs per task for accuracy per joule."))
    # acc-per-joule: the rule bench/miro.py shows best without a budget (the paper's top-half rule scored
    # 0.73x / 0.80x of the best static configuration's accuracy per joule there); under a budget: within-budget
    miro_rule: str = field(default="acc-per-joule", metadata=about(
        "Miro's selection rule without an energy budget", metavar="NAME"))
    miro_search: str = field(default="bandit", metadata=about("Miro's search over candidates", metavar="NAME"))
    miro_budget: float = field(default=0.10, metadata=about(
        "Profiling energy cap: a share of the stream's energy so far (less profiling already spent)."))
    # resource pressure: Miro re-decides mid-task when one of these newly holds
    miro_ram_floor_mb: float = field(default=256.0, metadata=about(
        "Available RAM under which Miro moves to a smaller RAM memory, mid-task."))
    miro_battery_floor: float = field(default=20.0, metadata=about(
        "Battery % under which (unplugged) Miro moves to a cheaper arm, mid-task."))
    monitor_every_s: float = field(default=2.0, metadata=about(
        "Seconds between resource readings during a task (0: every step)."))
    # the user's energy budget (engine/budget.py): its guard stops a task's training when it is spent
    energy_budget_j: Optional[float] = field(default=None, metadata=about(
        "Joules each task may spend: training, profiling, evaluation and requests (none: no budget).",
        flag="--energy-budget", metavar="J"))
    power_budget_w: Optional[float] = field(default=None, metadata=about(
        "Average watts over the stream: at most P x elapsed time plus a bucket (none: no budget).",
        flag="--power-budget", metavar="W"))
    power_bucket_s: float = field(default=60.0, metadata=about(
        "A power budget's bucket: seconds of P it may bank while idle (its burst)."))
    task_deadline_s: Optional[float] = field(default=None, metadata=about(
        "Wall seconds a task may train (epoch mode; none: no deadline): training stops there.", metavar="S"))

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{origin}: unknown run config keys: {unknown}")
        hints = typing.get_type_hints(cls)
        cfg = cls(**{k: typed(v, hints[k], k, f"{origin}:", spelled=False) for k, v in data.items()})
        cfg.validate()
        return cfg

    def validate(self, names: str = "flag") -> None:
        """Every knob checked; a ValueError lists each problem under the name the caller knows it by:
        the CLI flag (``--lr``) by default, ``learning.lr`` for the daemon's TOML (``names="key"``)."""
        problems = []

        def bad(field, msg):
            flag = FLAGS.get(field) or "--" + field.replace("_", "-")
            problems.append(f"{flag if names == 'flag' else 'learning.' + field}: {msg}")
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
        if self.freeze_blocks is not None and not 0 <= self.freeze_blocks <= 16:
            bad("freeze_blocks", f"must lie in 0..16 (efficientnet-lite0's blocks), got {self.freeze_blocks}")
        if (self.freeze_blocks is not None or self.input_size) and self.model != "efficientnet-lite0":
            bad("freeze_blocks" if self.freeze_blocks is not None else "input_size",
                f"only --model efficientnet-lite0 has pretrained blocks to freeze and resize for, not {self.model}")
        if self.input_size and not 32 <= self.input_size <= 1024:
            bad("input_size", f"must lie in 32..1024 pixels (or 0: 112), got {self.input_size}")
        if self.latent_replay:
            if self.model != "efficientnet-lite0" or self.freeze_blocks == 0:
                bad("latent_replay", "replays the output of frozen pretrained blocks: needs --model efficientnet-lite0 "
                                     "with --freeze-blocks >= 1")
            if self.strategy in PROMPT_STRATEGIES:
                bad("latent_replay", f"--strategy {self.strategy} prompts a ViT of its own; latent replay is for "
                                     "the replay strategies")
            if self.miro:
                bad("latent_replay", "Miro's profiles train on raw samples; --miro with latent replay is not "
                                     "supported yet")
        elif self.drop_raw:
            bad("drop_raw", "only latent replay stores something in place of the raw samples")
        if self.ace and self.strategy not in ("er", "der", "carm", "carm-sync"):
            bad("ace", f"the asymmetric replay loss is for the replay strategies (er, der, carm, carm-sync), "
                       f"not {self.strategy}")
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
        for name in ("energy_budget_j", "power_budget_w"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                bad(name, f"must be > 0 (or none: no budget), got {getattr(self, name)}")
        if self.energy_budget_j is not None and self.power_budget_w is not None:
            bad("power_budget_w", "give an energy budget per task or a power budget, not both")
        if self.task_deadline_s is not None and self.task_deadline_s <= 0:
            bad("task_deadline_s", f"must be > 0 s (or none: no deadline), got {self.task_deadline_s}")
        if self.power_bucket_s <= 0:
            bad("power_bucket_s", f"must be > 0 s, got {self.power_bucket_s}")
        if not 0 < self.miro_budget <= 1:
            bad("miro_budget", f"must lie in (0, 1] (a share of the stream's energy so far), got {self.miro_budget}")
        if self.threads < 0:
            bad("threads", f"threads must be >= 0 (0: one per core), got {self.threads}")
        if self.epochs < 1:
            bad("epochs", f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            bad("batch_size", f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            bad("lr", f"learning rate must be > 0, got {self.lr}")
        if self.train_per_class is not None and self.train_per_class < 1:
            bad("train_per_class", f"must be >= 1 (or left out: every sample), got {self.train_per_class}")
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


# fields whose `miro run` flag is not their name (an error names the flag the user typed)
FLAGS = {f.name: f.metadata["flag"] for f in fields(RunConfig) if "flag" in f.metadata}


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
