"""`miro run`'s options, generated from RunConfig's fields: the flag is the field's name, the type and
default are the field's, the help and metavar come from its ``metadata`` (config.about) and the allowed
values from choices.RUN_CHOICES. A setting is defined once, in config.py, so --help cannot drift from it.
The options that are not one field each are declared here by hand, once: --method-opt (KEY=VALUE pairs
of the ``method`` table, listed per strategy at the end of --help from the strategies' own option
dataclasses) and --synthetic-* (the ``synthetic`` table)."""

from __future__ import annotations

import os
import time
import typing
from dataclasses import MISSING, Field, fields

import click

from miro_runtime.choices import RUN_CHOICES
from miro_runtime.config import RunConfig, typed, unwrap_optional

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}

# RunConfig fields that `miro run` spells with options of their own; they are shown where the field is
BY_HAND = {
    "method": [click.option("--method-opt", "method_opts", multiple=True, default=(), metavar="KEY=VALUE",
                            help="A hyperparameter of the strategy itself, repeatable (e.g. r_max=8, theta_bar=0.5, "
                                 "atom=false); each strategy's keys are listed at the end.")],
    "synthetic": [click.option("--synthetic-shape", default="1,16,16", show_default=True, metavar="C,H,W",
                               help="Image shape of --stream synthetic."),
                  click.option("--synthetic-classes", default=10, show_default=True,
                               help="Classes of --stream synthetic."),
                  click.option("--synthetic-per-class", default=200, show_default=True,
                               help="Samples per class of --stream synthetic.")],
}


def field_option(f: Field, hint):
    """One RunConfig field as a click option decorator: ``--the-field``, typed and defaulted as the field."""
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    help_ = meta["help"] + (f": {' | '.join(RUN_CHOICES[f.name])}" if f.name in RUN_CHOICES else "")
    base, _ = unwrap_optional(hint)
    if base is bool:
        return click.option(flag, f.name, is_flag=True, default=f.default, help=help_)
    if "min" in meta:
        type_ = click.IntRange(min=meta["min"])
    elif meta.get("file"):
        type_ = click.Path(dir_okay=False)
    else:
        type_ = CLICK_TYPES[base]
    return click.option(flag, f.name, type=type_, default=f.default, show_default=True, metavar=meta.get("metavar"),
                        help=help_)


def run_options(command):
    """Decorate `miro run` with one option per RunConfig field, in the fields' order."""
    hints = typing.get_type_hints(RunConfig)
    decorators = []
    for f in fields(RunConfig):
        decorators += BY_HAND.get(f.name) or [field_option(f, hints[f.name])]
    for decorate in reversed(decorators):  # click lists options in the order their decorators are written
        command = decorate(command)
    return command


def _spell(value) -> str:
    """A default as --method-opt takes it: true/false, 0,1 for a tuple, nothing for an empty string."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


class RunCommand(click.Command):
    """`miro run`, whose --help ends with the --method-opt keys each strategy takes and their defaults,
    read from the strategies' own option dataclasses: imported only when the help is shown (the
    strategies import torch)."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        from miro_runtime.engine.strategies import STRATEGIES
        plain = [name for name, cls in STRATEGIES.items() if cls.Options is None]
        rows = [(", ".join(plain), "none: their knobs are the flags above (--memory, --replay, --der-alpha, ...)")]
        for name, cls in STRATEGIES.items():
            if cls.Options is not None:
                rows.append((name, "  ".join(f"{f.name}={_spell(_default(f))}" for f in fields(cls.Options))))
        with formatter.section("Method options (--method-opt KEY=VALUE, defaults shown; README: Prompt methods)"):
            formatter.write_dl(rows)


def config_from_options(o: dict) -> RunConfig:
    """`miro run`'s options as a validated RunConfig: every value checked where it is parsed, the
    message naming the flag; nothing reinterpreted (--flash-budget 0 means unbounded, as documented)."""
    try:
        shape = typed(o["synthetic_shape"], tuple[int, ...], "--synthetic-shape", "")
    except ValueError:
        raise click.BadParameter(f"{o['synthetic_shape']!r}: give C,H,W as three integers, e.g. 3,32,32",
                                 param_hint="--synthetic-shape") from None
    run_dir = o["run_dir"] or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") +
                                          f"-{o['stream']}-{o['strategy']}-s{o['seed']}")
    method = {}
    for kv in o["method_opts"]:
        key, sep, val = kv.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{kv!r}: give KEY=VALUE", param_hint="--method-opt")
        method[key.strip()] = val.strip()
    values = {}
    for f in fields(RunConfig):
        if f.name not in BY_HAND:
            v = o[f.name]
            values[f.name] = None if v == 0 and f.metadata.get("zero_is_none") else v
    synthetic = {"shape": shape, "num_classes": o["synthetic_classes"], "per_class": o["synthetic_per_class"]}
    cfg = RunConfig(**{**values, "run_dir": run_dir, "method": method,
                       "synthetic": synthetic if o["stream"] == "synthetic" else {}})
    cfg.validate()
    return cfg
