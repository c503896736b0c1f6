"""What the CLI prints: one JSON object or a human rendering of it, the accuracy table of a run, and a
progress bar per task."""

from __future__ import annotations

import json
import sys

import click


def emit(obj, as_json: bool, human) -> None:
    """``--json``: one JSON object on stdout; otherwise ``human(obj)`` prints it for a person."""
    if as_json:
        click.echo(json.dumps(obj))
    else:
        human(obj)


def _fmt(v):
    return "  -  " if v is None else f"{100 * v:5.1f}"


def print_table(summary: dict, out=sys.stdout, short: bool = False):
    acc = summary["acc_matrix"]
    T = len(acc[0]) if acc else 0
    click.echo("\nAccuracy (%) on task j's classes after training task i:", file=out)
    click.echo("after \\ on " + " ".join(f"  T{j}  " for j in range(T)), file=out)
    for i, row in enumerate(acc):
        click.echo(f"task {i:<5} " + " ".join(f"{_fmt(v)} " for v in row), file=out)
    lines = [("final average accuracy", f"{100 * summary['final_avg_acc']:.1f} %"),
             ("average forgetting", f"{100 * summary['forgetting']:.1f} points"),
             ("backward transfer", f"{100 * summary['bwt']:+.1f} points")]
    if not short:
        lines += [("training samples/s", f"{summary['train_samples_per_s']:.0f}"),
                  ("peak RSS", f"{summary['peak_rss_mb']:.0f} MB"),
                  ("wall time", f"{summary['wall_s']:.1f} s")]
    if summary.get("energy_j") is not None:
        lines.append(("energy", f"{summary['energy_j']:.1f} J ({summary['energy_provenance']})"))
    if summary.get("miro_decisions"):
        lines.append(("miro profiling", f"{summary['profiling_energy_j']:.1f} J (counted in energy)"))
        for d in summary["miro_decisions"]:
            lines.append((f"  task {d['task']} chose", f"{d['winner']} of {len(d['candidates'])} candidates"))
    if "swap" in summary:
        s = summary["swap"]
        lines.append(("swaps", f"{s['completed']} done, {s['dropped']} dropped, {s['bytes_read']} B read"))
    for k, v in lines:
        click.echo(f"{k:<24}{v}", file=out)
    if not short:
        click.echo(f"run directory           {summary['config']['run_dir']}", file=out)


class Progress:
    """One progress bar per task on stderr."""

    def __init__(self):
        self.bar = None

    def __call__(self, kind, p):
        if kind == "task_begin":
            self.close()
            self.bar = click.progressbar(length=p["steps"], label=f"task {p['task']} classes {p['classes']}",
                                         file=sys.stderr, show_eta=True)
            self.bar.__enter__()
            if p["done"]:
                self.bar.update(p["done"])
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
        elif kind == "task_end":
            self.close()
            row = " ".join(f"{100 * a:.1f}" for a in p["acc"])
            click.echo(f"  task {p['task']} done: acc per task [{row}]  avg {100 * p['avg_acc']:.1f}%", err=True)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
