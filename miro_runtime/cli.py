"""`miro` command line: a thin shell over the library (``miro_runtime.run``)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from .config import RunConfig


def _fmt(v):
    return "  -  " if v is None else f"{100 * v:5.1f}"


def print_table(summary: dict, out=sys.stdout):
    acc = summary["acc_matrix"]
    T = len(acc[0]) if acc else 0
    click.echo("\nAccuracy (%) on task j's classes after training task i:", file=out)
    click.echo("after \\ on " + " ".join(f"  T{j}  " for j in range(T)), file=out)
    for i, row in enumerate(acc):
        click.echo(f"task {i:<5} " + " ".join(f"{_fmt(v)} " for v in row), file=out)
    lines = [("final average accuracy", f"{100 * summary['final_avg_acc']:.1f} %"),
             ("average forgetting", f"{100 * summary['forgetting']:.1f} points"),
             ("backward transfer", f"{100 * summary['bwt']:+.1f} points"),
             ("training samples/s", f"{summary['train_samples_per_s']:.0f}"),
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


@click.group()
@click.version_option(package_name="miro-runtime")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision to stderr.")
def main(verbose):
    """miro: on-device continual learning over RAM + flash (CarM) with energy-aware tuning (Miro)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@main.command()
@click.option("--stream", default="split-digits", show_default=True,
              help="split-digits | mnist | fashion-mnist | cifar10 | cifar100 | folder | synthetic")
@click.option("--strategy", default="carm", show_default=True, help="finetune | joint | er | der | carm | carm-sync")
@click.option("--replay", default="er", show_default=True, help="Replay method under CarM: er | der")
@click.option("--memory", default=20, show_default=True, help="RAM episodic memory size, in samples.")
@click.option("--flash-budget", default=2000, show_default=True, help="Flash tier size in samples (0: unbounded).")
@click.option("--flash-policy", default="class-balanced", show_default=True, help="class-balanced | reservoir")
@click.option("--em-policy", default="class-balanced", show_default=True, help="class-balanced | reservoir")
@click.option("--swap-ratio", default=0.5, show_default=True, help="Share of replayed samples swapped per step.")
@click.option("--swap-workers", default=1, show_default=True)
@click.option("--swap-group-ms", default=15.0, show_default=True,
              help="Async CarM: fold the swaps of steps spanning this much training into one worker job "
                   "(0: one job per step).")
@click.option("--epochs", default=5, show_default=True, help="Epochs per task (ignored with --online).")
@click.option("--online", is_flag=True, help="Single pass: train as each batch arrives.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=0.05, show_default=True)
@click.option("--model", default="auto", show_default=True, help="cnn | resnet18 | auto")
@click.option("--tasks", type=int, default=None, help="Number of tasks (default: 5; 10 for cifar100).")
@click.option("--seed", default=0, show_default=True)
@click.option("--data-dir", default=None, help="Local dataset directory (torchvision or folder streams).")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset into --data-dir.")
@click.option("--synthetic-shape", default="1,16,16", show_default=True, help="C,H,W for --stream synthetic.")
@click.option("--synthetic-classes", default=10, show_default=True)
@click.option("--synthetic-per-class", default=200, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option("--threads", default=1, show_default=True,
              help="Torch intra-op threads on the CPU (0: one per core). One is cheaper per joule for small models.")
@click.option("--run-dir", default=None, help="Where the store, metrics and checkpoints go (default: runs/<time>).")
@click.option("--checkpoint-every", default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--energy-source", default="auto", show_default=True, help="auto | nvml | rapl | jetson | pi5 | estimate")
@click.option("--miro", is_flag=True, help="Retune memory, flash, swap ratio, epochs per task for accuracy per joule.")
@click.option("--miro-rule", default="top-half-acc-per-joule", show_default=True,
              help="top-half-acc-per-joule | lowest-energy | highest-accuracy | zeus")
@click.option("--miro-search", default="bandit", show_default=True, help="bandit | grid")
@click.option("--miro-budget", default=0.10, show_default=True, help="Profiling energy cap (share of last task's).")
@click.option("--miro-ram-floor-mb", default=256.0, show_default=True,
              help="Available RAM under which Miro moves to a smaller RAM memory, mid-task.")
@click.option("--miro-battery-floor", default=20.0, show_default=True,
              help="Battery %% under which (unplugged) Miro moves to a cheaper arm, mid-task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary as the last stdout line.")
def run(**o):
    """Run a whole continual-learning experiment in-process (no daemon needed)."""
    from .engine import Experiment
    from .streams import StreamError
    from miro_runtime.storage import StoreError

    as_json = o.pop("as_json")
    progress = None if as_json else Progress()
    try:
        if o["resume"]:
            if not o["run_dir"]:
                raise click.UsageError("--resume needs --run-dir")
            exp = Experiment.from_run_dir(o["run_dir"], on_event=progress)
        else:
            shape = tuple(int(v) for v in o["synthetic_shape"].split(","))
            run_dir = o["run_dir"] or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") +
                                                  f"-{o['stream']}-{o['strategy']}-s{o['seed']}")
            cfg = RunConfig(stream=o["stream"], strategy=o["strategy"], replay=o["replay"], memory=o["memory"],
                            flash_budget=o["flash_budget"] or None, flash_policy=o["flash_policy"],
                            em_policy=o["em_policy"], swap_ratio=o["swap_ratio"], swap_workers=o["swap_workers"],
                            swap_group_ms=o["swap_group_ms"],
                            epochs=o["epochs"], online=o["online"], batch_size=o["batch_size"], lr=o["lr"],
                            model=o["model"], tasks=o["tasks"], seed=o["seed"], data_dir=o["data_dir"],
                            download=o["download"], device=o["device"], threads=o["threads"], run_dir=run_dir,
                            checkpoint_every=o["checkpoint_every"], energy_source=o["energy_source"],
                            miro=o["miro"], miro_rule=o["miro_rule"], miro_search=o["miro_search"],
                            miro_budget=o["miro_budget"], miro_ram_floor_mb=o["miro_ram_floor_mb"],
                            miro_battery_floor=o["miro_battery_floor"],
                            synthetic={"shape": shape, "num_classes": o["synthetic_classes"],
                                       "per_class": o["synthetic_per_class"]} if o["stream"] == "synthetic" else {})
            exp = Experiment(cfg, on_event=progress)
        summary = exp.run()
    except (ValueError, StreamError, StoreError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if progress:
            progress.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_table(summary)


@main.command()
@click.argument("state_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def inspect(state_dir, as_json):
    """Show what a flash tier holds (safe while a writer is running: opens read-only)."""
    from miro_runtime.storage import FlashTier, StoreError
    path = os.path.join(state_dir, "state") if os.path.isdir(os.path.join(state_dir, "state")) else state_dir
    try:
        with FlashTier(path, readonly=True) as f:
            st = f.stats()
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(st))
        return
    click.echo(f"{st['path']}  (schema {st['schema_version']}, map {st['map_size'] / 2**20:.0f} MiB)")
    for ns, s in st["namespaces"].items():
        click.echo(f"  {ns}: {s['records']} records of {s['dtype']}{s['shape']}, {s['bytes'] / 2**20:.2f} MiB, "
                   f"capacity {s['capacity']}, {s['policy']}")
        click.echo(f"    per class: {s['class_counts']}")


if __name__ == "__main__":
    main()
