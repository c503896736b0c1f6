"""``miro budget``: show or set the running daemon's energy budget (joules per task, or an average power
over the stream), kept as `miro config set` keeps its keys and adopted from the next training step."""

from __future__ import annotations

import click

from miro_runtime.cli.control import call
from miro_runtime.cli.render import budget_text, emit


@click.group()
def budget():
    """Show or set the energy budget: joules per task or an average power. Its guard stops a task's
    training once the budget is spent, whatever configuration trains it."""


@budget.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def budget_show(ctx, as_json):
    """The budget in force, the joules spent by kind (train, profile, eval, predict, kv), what the task
    in training has spent and has left, a forecast of its whole cost, and the tasks the guard stopped."""
    emit(call(ctx, "budget_show"), as_json, lambda r: click.echo(budget_text(r["budget"])))


@budget.command(name="set")
@click.option("--energy", "energy_j", type=click.FloatRange(min=0, min_open=True), default=None, metavar="J",
              help="Joules each task may spend (training, profiling, evaluation and requests).")
@click.option("--power", "power_w", type=click.FloatRange(min=0, min_open=True), default=None, metavar="W",
              help="Average watts over the stream: at most W x elapsed time plus a bucket.")
@click.option("--bucket-s", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="A power budget's bucket: seconds of W it may bank while idle (alone: resize it).")
@click.option("--none", "clear", is_flag=True, help="No budget: the guard never stops training.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def budget_set(ctx, energy_j, power_w, bucket_s, clear, as_json):
    """Set the budget: --energy J, --power W [--bucket-s S], --none, or --bucket-s S alone. Kept in
    STATE_DIR/overrides.toml (learning.energy_budget_j, power_budget_w, power_bucket_s), so a reload or a
    restart keeps it; the trainer adopts it before its next step (logged as budget_changed)."""
    chosen = [f for f, v in (("--energy", energy_j), ("--power", power_w), ("--none", clear or None)) if v is not None]
    if len(chosen) > 1 or (clear and bucket_s is not None) or not (chosen or bucket_s is not None):
        raise click.UsageError("give one of --energy J, --power W [--bucket-s S] or --none (or --bucket-s S alone)"
                               + (f"; got {' and '.join(chosen)}" if len(chosen) > 1 else ""), ctx)
    params = {k: v for k, v in (("energy_j", energy_j), ("power_w", power_w), ("bucket_s", bucket_s)) if v is not None}
    r = call(ctx, "budget_set", **params, **({"none": True} if clear else {}))
    emit(r, as_json, lambda r: click.echo(f"{budget_text(r['budget'])}  ({r['applies']}; kept in {r['persisted']})"))
