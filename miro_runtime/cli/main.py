"""`miro` command line: a thin shell over the library. ``miro run`` and ``miro inspect`` work
in-process; every other command is a client of mirod's control socket and imports neither torch
nor the engine (``miro status`` answers in a fraction of a second)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from miro_runtime.config import RunConfig


from miro_runtime.cli.render import Progress, print_table


# exit codes of the control commands (sysexits.h)
EXIT_NO_DAEMON = 69  # EX_UNAVAILABLE: nothing listens on the socket
EXIT_DAEMON_ERROR = 65  # the daemon refused the request (bad input, conflict)
EXIT_DENIED = 77  # EX_NOPERM: the socket or the method is not for this user


@click.group()
@click.version_option(package_name="miro-runtime")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision to stderr.")
@click.option("--state-dir", envvar="MIRO_STATE_DIR", default=None,
              help="The daemon's state directory [env MIRO_STATE_DIR; default $STATE_DIRECTORY or "
                   "~/.local/state/miro].")
@click.option("--socket", "socket_path", envvar="MIRO_SOCKET", default=None,
              help="The control socket [env MIRO_SOCKET; default $RUNTIME_DIRECTORY/mirod.sock, else "
                   "STATE_DIR/mirod.sock].")
@click.pass_context
def main(ctx, verbose, state_dir, socket_path):
    """miro: on-device continual learning over RAM + flash (CarM) with energy-aware tuning (Miro)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ctx.obj = {"state_dir": state_dir, "socket": socket_path}


@main.command()
@click.option("--stream", default="split-digits", show_default=True,
              help="split-digits | mnist | fashion-mnist | cifar10 | cifar100 | folder | synthetic")
@click.option("--strategy", default="carm", show_default=True,
              help="finetune | joint | er | der | carm | carm-sync | l2p | dualprompt | rep-l2p | rep-dualprompt")
@click.option("--backbone", default=None, type=click.Path(dir_okay=False),
              help="Prompt strategies: the frozen ViT, a torchvision state dict file (`miro rep pretrain` makes one).")
@click.option("--method-opt", "method_opts", multiple=True, default=(), metavar="KEY=VALUE",
              help="A hyperparameter of the strategy itself, repeatable (e.g. r_max=8, theta_bar=0.5, atom=false).")
@click.option("--classes", default=None, help="Keep only these classes of the stream, in this order: 5-9 or 0,2,4.")
@click.option("--replay", default="er", show_default=True, help="Replay method under CarM: er | der")
@click.option("--memory", default=20, show_default=True, help="RAM episodic memory size, in samples.")
@click.option("--flash-budget", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Flash tier size in samples (0: unbounded).")
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
    from miro_runtime.session.experiment import Experiment
    from miro_runtime.engine.streams import StreamError
    from miro_runtime.storage import StoreError

    as_json = o.pop("as_json")
    progress = None if as_json else Progress()
    try:
        if o["resume"]:
            if not o["run_dir"]:
                raise click.UsageError("--resume needs --run-dir")
            exp = Experiment.from_run_dir(o["run_dir"], on_event=progress)
        else:
            cfg = config_from_options(o)
            exp = Experiment(cfg, on_event=progress)
        summary = exp.run()
    except (ValueError, StreamError, StoreError, FileNotFoundError, MemoryError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from e
    finally:
        if progress:
            progress.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_table(summary)


def config_from_options(o: dict) -> RunConfig:
    """`miro run`'s options as a validated RunConfig: every value checked where it is parsed, the
    message naming the flag; nothing reinterpreted (--flash-budget 0 means unbounded, as documented)."""
    try:
        shape = tuple(int(v) for v in str(o["synthetic_shape"]).split(","))
    except ValueError:
        raise click.BadParameter(f"{o['synthetic_shape']!r}: give C,H,W as three integers, e.g. 3,32,32",
                                 param_hint="--synthetic-shape") from None
    run_dir = o["run_dir"] or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") +
                                          f"-{o['stream']}-{o['strategy']}-s{o['seed']}")
    method = {}
    for kv in o.get("method_opts") or ():
        key, sep, val = kv.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{kv!r}: give KEY=VALUE", param_hint="--method-opt")
        method[key.strip()] = val.strip()
    cfg = RunConfig(stream=o["stream"], strategy=o["strategy"], replay=o["replay"], memory=o["memory"],
                    backbone=o.get("backbone"), method=method, classes=o.get("classes"),
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
    cfg.validate()
    return cfg


@main.command()
@click.argument("state_dir", type=click.Path(file_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inspect(ctx, state_dir, as_json):
    """Show what a flash tier holds: a run dir, a store dir, or (no argument) the daemon's state dir
    from --state-dir / MIRO_STATE_DIR. Safe while a writer is running: opens read-only."""
    from miro_runtime.storage import FlashTier, StoreError

    from miro_runtime.wire.client import default_state_dir
    state_dir = state_dir or (ctx.find_root().obj or {}).get("state_dir") or default_state_dir()
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



def _state_path(path: str) -> str:
    """A run or daemon state directory holds the store in state/; a store directory is itself."""
    return os.path.join(path, "state") if os.path.isdir(os.path.join(path, "state")) else path


@main.group()
def store():
    """Check or rescue a flash tier (read-only on the source; safe while a writer runs)."""


@store.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def verify(path, as_json):
    """Every record's crc and header, the class index against the records, counts against meta.
    Exit 0: intact; 1: damage found; 2: the store cannot be opened at all."""
    from miro_runtime.storage.integrity import verify as run_verify
    rep = run_verify(_state_path(path))

    def human(r):
        if not r.get("openable", True) and any("data.mdb missing" in e for e in r["errors"]):
            click.echo(f"{r['path']}: no flash store here (data.mdb missing)")
            return
        click.echo(f"{r['path']}: {'intact' if r['ok'] else 'DAMAGED'}")
        for ns, n in r["namespaces"].items():
            click.echo(f"  {ns}: {n['records']} records, {len(n['bad_records'])} failing their checks"
                       + (f" (ids {[b['id'] for b in n['bad_records']][:20]})" if n["bad_records"] else "")
                       + f"; index: {n['index_entries']} entries, {len(n['index_missing'])} records missing from "
                         f"it, {len(n['index_orphans'])} pointing nowhere")
        for e in r["errors"]:
            click.echo(f"  error: {e}")
        if not r["ok"]:
            click.echo(f"  next: miro store salvage {path} NEW_DIR  (copies every readable record)")
    _out(rep, as_json, human)
    sys.exit(0 if rep["ok"] else (2 if not rep.get("openable", True) else 1))


@store.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def salvage(src, dst, as_json):
    """Copy every readable record of SRC's store into a fresh store at DST and say what was lost.
    When SRC is a run directory, DST becomes one too (config, checkpoints and metrics copied), so
    `miro run --resume --run-dir DST` continues on what survived."""
    import shutil

    from miro_runtime.storage import StoreError
    from miro_runtime.storage.salvage import salvage as run_salvage
    run = os.path.isdir(os.path.join(src, "state"))
    if os.path.exists(dst) and os.listdir(dst):
        raise click.ClickException(f"{dst} exists and is not empty; salvage writes into a new directory")
    # built aside and renamed into place: a salvage killed half-way leaves no half-store at DST
    part = dst.rstrip("/") + ".partial"
    shutil.rmtree(part, ignore_errors=True)
    try:
        rep = run_salvage(_state_path(src), os.path.join(part, "state") if run else part)
    except StoreError as e:
        shutil.rmtree(part, ignore_errors=True)
        raise click.ClickException(str(e)) from e
    if run:
        copied = []
        for name in sorted(os.listdir(src)):
            p = os.path.join(src, name)
            if os.path.isfile(p) and not name.startswith("mirod.") and not name.endswith(".sock"):
                shutil.copy2(p, os.path.join(part, name))
                copied.append(name)
        rep["run_files_copied"] = copied
    os.replace(part, dst)
    rep["dst"] = os.path.abspath(os.path.join(dst, "state") if run else dst)

    def human(r):
        click.echo(f"salvaged {r['src']} -> {r['dst']}: {r['kept']} records kept, {r['lost']} lost")
        for ns, n in r["namespaces"].items():
            click.echo(f"  {ns}: kept {n['kept']}, lost {len(n['lost'])}"
                       + (f" (ids {n['lost'][:20]})" if n["lost"] else "")
                       + (f", {n['unreachable']} unreachable" if n.get("unreachable") else ""))
        if r["padded_bytes"]:
            click.echo(f"  data.mdb was cut short by {r['padded_bytes']} bytes (read from a zero-padded copy)")
        for e in r["errors"]:
            click.echo(f"  damage seen: {e}")
        if r.get("run_files_copied"):
            click.echo(f"  run files copied: {', '.join(r['run_files_copied'])}; resume with "
                       f"`miro run --resume --run-dir {dst}`")
    _out(rep, as_json, human)


# ---------------------------------------------------------------------------- daemon control
def _sock(ctx) -> str:
    from miro_runtime.wire.client import default_socket
    o = ctx.find_root().obj or {}
    return o["socket"] or default_socket(o["state_dir"])


def _call(ctx, method, **params):
    """One request to mirod; a clear message and a distinct exit code when it cannot be served."""
    from miro_runtime.wire.client import Client, DaemonError, NoDaemon
    path = _sock(ctx)
    try:
        with Client(path) as c:
            return c.call(method, **params)
    except NoDaemon as e:
        click.echo(f"miro: {e}", err=True)
        sys.exit(EXIT_NO_DAEMON)
    except PermissionError:
        click.echo(f"miro: permission denied on {path}: this user is not in the socket's group", err=True)
        sys.exit(EXIT_DENIED)
    except DaemonError as e:
        click.echo(f"miro: {method}: {e.message}", err=True)
        sys.exit(EXIT_DENIED if e.code == -32002 else EXIT_DAEMON_ERROR)
    except (ConnectionError, OSError) as e:
        click.echo(f"miro: lost the daemon on {path}: {e}", err=True)
        sys.exit(EXIT_NO_DAEMON)


def _out(obj, as_json, human):
    if as_json:
        click.echo(json.dumps(obj))
    else:
        human(obj)


@main.command()
@click.option("--config", "config_path", default=None, help="TOML configuration file.")
@click.option("--set", "sets", multiple=True, metavar="TABLE.KEY=VALUE", help="Override a config key.")
@click.option("--retrain-from-store", is_flag=True,
              help="The checkpoints are gone on purpose: start over on the samples the store holds.")
@click.pass_context
def daemon(ctx, config_path, sets, retrain_from_store):
    """Run mirod in the foreground (what the systemd unit runs)."""
    from miro_runtime.daemon.daemon import run_daemon
    o = ctx.find_root().obj
    pairs = []
    for item in sets:
        if "=" not in item:
            raise click.UsageError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        pairs.append(tuple(item.split("=", 1)))
    sys.exit(run_daemon(config_path, o["state_dir"], o["socket"], pairs, retrain_from_store))


def _fmt_j(v):
    return "-" if v is None else f"{v:.1f} J"


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """What the daemon is doing: task, classes, memory, flash, swaps, energy, Miro, accuracy."""
    def human(s):
        d = s.get("daemon", {})
        rows = [("state", s["state"] + (f"  (paused: {s['paused']})" if s.get("paused") else "")),
                ("uptime", f"{s['uptime_s']:.0f} s  (pid {d.get('pid')})"),
                ("current task", f"{s['current_task']}  (open {s['open_task']}, trained {s['tasks_trained']}, "
                                 f"mode {s['mode']}, strategy {s['strategy']})"),
                ("classes seen", f"{s['classes_seen']}  {s['class_labels'][:20]}"),
                ("samples", f"{s['counters']['ingested_train']} train, {s['counters']['ingested_test']} test, "
                            f"{s['counters']['online_pending']} pending online")]
        if s.get("memory"):
            rows.append(("RAM memory", f"{s['memory']['size']} / {s['memory']['capacity']} samples"))
        if s.get("flash"):
            f = s["flash"]
            rows.append(("flash", f"{f['records']} samples ({f['bytes'] / 2**20:.1f} MiB), budget "
                                  f"{f['budget_records'] or 'unbounded'}"))
        if s.get("swap"):
            w = s["swap"]
            rows.append(("swaps", f"{w.get('completed')} done, {w.get('dropped')} dropped"))
        if s.get("energy"):
            e = s["energy"]
            rows.append(("energy", f"{_fmt_j(e['total_j'])}  ({e['provenance']})"))
        if s.get("miro"):
            m = s["miro"]
            rows.append(("miro", f"{'on' if m['enabled'] else 'off'}: {m['knobs']}" +
                         (f"; last decision: task {m['last_decision']['task']} chose {m['last_decision']['winner']}"
                          if m.get("last_decision") else "")))
        if s.get("kv"):
            k = s["kv"]
            rows.append(("kv", f"{'on' if k['enabled'] else 'off'}: {k['model']}, policy {k['policy']}, RAM share "
                               f"{k['ram_bytes'] / 2**20:.1f} MiB, flash share {k['flash_bytes'] / 2**20:.1f} MiB "
                               f"({(k['flash_used_bytes'] or 0) / 2**20:.1f} MiB used, {k['prefix_chunks'] or 0} "
                               f"prefix chunks), {k['requests']} requests"))
        if s.get("last_acc"):
            rows.append(("last accuracies", " ".join("-" if a is None else f"{100 * a:.1f}" for a in s["last_acc"])))
        for k, v in rows:
            click.echo(f"{k:<16}{v}")
    _out(_call(ctx, "status"), as_json, human)


@main.command(name="eval")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_(ctx, as_json):
    """Accuracy matrix, final average accuracy, forgetting, backward transfer (as `miro run --json`)."""
    r = _call(ctx, "eval")

    def human(r):
        print_table({**r, "train_samples_per_s": None, "peak_rss_mb": None, "wall_s": None, "config": None},
                    short=True)
        for t in r["per_task"]:
            click.echo(f"  task {t['task']}: {_fmt_j(t['energy_j'])} ({t['energy_provenance']})")
    _out({k: r[k] for k in ("acc_matrix", "final_avg_acc", "forgetting", "bwt", "energy_j", "energy_provenance",
                            "per_task")}, as_json, human)


def _load_arrays(path):
    import numpy as np
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z:
            raise click.ClickException(f"{path}: an .npz needs an array 'x' (and 'y' to ingest)")
        x = z["x"]
        y = z["y"] if "y" in z else None
        extra = {k: z[k] for k in ("task", "split") if k in z}
    return (x[:, None] if x.ndim == 3 else x), y, extra


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--task", type=int, default=None, help="Task to ingest into (default: the open task, or the .npz's).")
@click.option("--split", type=click.Choice(["train", "test"]), default=None)
@click.option("--end", is_flag=True, help="End the task afterwards.")
@click.option("--batch", default=1024, show_default=True, help="Samples per request.")
@click.option("--server-side", is_flag=True, help="Let the daemon read PATH itself (a path on its machine).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ingest(ctx, path, task, split, end, batch, server_side, as_json):
    """Send samples: an .npz (arrays x, y, optional task, split) or an image folder (the folder
    stream's layouts; each task is ended after it)."""
    import base64

    if server_side or os.path.isdir(path):
        r = _call(ctx, "ingest", path=os.path.abspath(path), **({"task": task} if task is not None else {}),
                  **({"split": split} if split else {}))
    else:
        x, y, extra = _load_arrays(path)
        if y is None:
            raise click.ClickException(f"{path}: no labels (array 'y')")
        st = _call(ctx, "status")
        if task is None:
            task = int(extra["task"]) if "task" in extra else (
                st["open_task"] if st["open_task"] >= 0 and st["open_task"] not in st["ended_tasks"]
                else st["open_task"] + 1)
        split = split or (str(extra["split"]) if "split" in extra else "train")
        acked = 0
        with click.progressbar(length=len(y), label=f"ingest into task {task} ({split})", file=sys.stderr) as bar:
            for i in range(0, len(y), batch):
                xb = x[i:i + batch]
                import numpy as np
                xb = np.ascontiguousarray(xb)
                r = _call(ctx, "ingest", task=task, split=split, dtype=str(xb.dtype), shape=list(xb.shape),
                          labels=[int(v) for v in y[i:i + batch]], data=base64.b64encode(xb.tobytes()).decode())
                acked += r["acked"]
                bar.update(r["acked"])
        r = {"acked": acked, "task": task, "split": split}
        if end:
            r["task_end"] = _call(ctx, "task_end", task=task)
    _out(r, as_json, lambda r: click.echo(f"acknowledged {r['acked']} samples (durable in the flash tier)"))


@main.group()
def task():
    """End tasks, list them."""


@task.command(name="end")
@click.argument("task_id", type=int, required=False)
@click.option("--wait", is_flag=True, help="Return once the task is trained and evaluated.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_end(ctx, task_id, wait, as_json):
    """End TASK_ID (default: the open task): the daemon trains (epoch mode) and evaluates it."""
    params = {"wait": wait}
    if task_id is not None:
        params["task"] = task_id
    r = _call(ctx, "task_end", **params)
    _out(r, as_json, lambda r: click.echo(f"task {r['task']} ended" + (
        f"; accuracy per task {[round(100 * a, 1) if a is not None else None for a in r['acc']]}"
        if r.get("trained") else "")))


@task.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_list(ctx, as_json):
    """Every task: its classes, state, test samples, accuracy and energy."""
    def human(r):
        for t in r["tasks"]:
            acc = "-" if t["avg_acc"] is None else f"{100 * t['avg_acc']:.1f}%"
            click.echo(f"task {t['task']:<3} {t['state']:<8} classes {t['classes']}  test {t['test_samples']}  "
                       f"avg acc {acc}  energy {_fmt_j(t['energy_j'])}")
    _out(_call(ctx, "task_list"), as_json, human)


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("-k", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def predict(ctx, path, k, as_json):
    """Predict the labels of the images in an .npz (array x) or an image file."""
    import base64

    import numpy as np
    if path.endswith(".npz"):
        x, _, _ = _load_arrays(path)
    else:
        from PIL import Image
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "I;16") else im.convert("RGB"))
        x = (a[None] if a.ndim == 2 else a.transpose(2, 0, 1))[None]
    x = np.ascontiguousarray(x)
    r = _call(ctx, "predict", k=k, dtype=str(x.dtype), shape=list(x.shape), data=base64.b64encode(x.tobytes()).decode())

    def human(r):
        for i, (lab, top, p) in enumerate(zip(r["labels"], r["topk"], r["probs"])):
            click.echo(f"{i:>4}: {lab}   top-{len(top)} " + ", ".join(f"{a} ({100 * b:.1f}%)" for a, b in zip(top, p)))
    _out(r, as_json, human)


@main.group()
def config():
    """Show, set or reload the daemon's configuration."""


@config.command(name="show")
@click.option("--defaults", is_flag=True, help="Print the documented default TOML (no daemon needed).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx, defaults, as_json):
    if defaults:
        from miro_runtime.daemon.config import default_toml
        click.echo(default_toml())
        return

    def human(r):
        for table, values in r["config"].items():
            click.echo(f"[{table}]")
            for k, v in values.items():
                live = "  (live)" if k in r["live_keys"][table] else ""
                click.echo(f"{k} = {json.dumps(v)}{live}")
            click.echo("")
        click.echo(f"# sources: {', '.join(r['sources']) or 'defaults only'}")
    _out(_call(ctx, "config_show"), as_json, human)


@config.command(name="set")
@click.argument("key")
@click.argument("value")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_set(ctx, key, value, as_json):
    """Set TABLE.KEY to VALUE, kept in STATE_DIR/overrides.toml; applied live where it can be."""
    r = _call(ctx, "config_set", key=key, value=value)
    _out(r, as_json, lambda r: click.echo(f"{r['key']} = {r['value']} ({'applied now' if r['applied_live'] else 'takes effect after a restart'}; kept in {r['persisted']})"))  # noqa: E501


@config.command(name="reload")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_reload(ctx, as_json):
    """Re-read the configuration (as SIGHUP does)."""
    r = _call(ctx, "config_reload")
    _out(r, as_json, lambda r: click.echo(f"applied: {r['applied'] or 'nothing'}; needs a restart: "
                                          f"{r['restart_needed'] or 'nothing'}" + (f"; error: {r['error']}"
                                                                                     if r.get("error") else "")))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def profile(ctx, as_json):
    """Run a Miro profile round now, on the open task's samples."""
    _out(_call(ctx, "profile"), as_json, lambda r: click.echo(f"task {r['task']}: rule {r['rule']} chose {r['winner']} "
                                                              f"({r['profiling_energy_j']:.2f} J of profiling)"))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def checkpoint(ctx, as_json):
    """Write a checkpoint now (or at the next step boundary while a task trains)."""
    _out(_call(ctx, "checkpoint"), as_json, lambda r: click.echo(json.dumps(r)))


def _when(text):
    """Unix seconds, an ISO time, or an age such as 90s, 15m, 2h, 1d."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        pass
    import datetime
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r}: give unix seconds, an ISO time or an age like 15m") from None


@main.command()
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Minimum level.")
@click.option("--component", default=None, help="daemon | engine | trainer | socket | inbox | metrics")
@click.option("--task", "task_id", type=int, default=None)
@click.option("--since", default=None, help="Unix seconds, ISO time, or an age (15m, 2h).")
@click.option("--until", default=None)
@click.option("-n", "--limit", default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def logs(ctx, level, component, task_id, since, until, limit, follow, as_json):
    """The daemon's structured log, filtered."""
    params = {"level": level, "limit": limit}
    for k, v in (("component", component), ("task", task_id), ("since", _when(since)), ("until", _when(until))):
        if v is not None:
            params[k] = v

    def show(lines):
        for rec in lines:
            if as_json:
                click.echo(json.dumps(rec))
            else:
                rest = {k: v for k, v in rec.items() if k not in ("ts", "level", "component", "event")}
                ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("ts", 0)))
                click.echo(f"{ts} {rec.get('level', ''):<7} {rec.get('component', ''):<8} {rec.get('event')} "
                           f"{json.dumps(rest)[:300]}")
    r = _call(ctx, "logs", **params)
    show(r["lines"])
    while follow:
        time.sleep(0.5)
        r = _call(ctx, "logs", **{**params, "after": r["offset"], "limit": 10000})
        show(r["lines"])


@main.group()
def service():
    """systemd: print, install or remove the mirod unit."""


@service.command()
@click.option("--user", "user", default=None, help="User= for the unit (default: a DynamicUser).")
@click.option("--group", "group", default="miro", show_default=True, help="Group owning the socket.")
@click.option("--config", "config_path", default="/etc/miro/mirod.toml", show_default=True)
def unit(user, group, config_path):
    """Print the unit file."""
    from miro_runtime.daemon.unit import unit_file
    click.echo(unit_file(user=user, group=group, config=config_path), nl=False)


@service.command()
@click.option("--path", default="/etc/systemd/system/mirod.service", show_default=True)
@click.option("--user", "user", default=None)
@click.option("--group", "group", default="miro", show_default=True)
@click.option("--config", "config_path", default="/etc/miro/mirod.toml", show_default=True)
@click.option("--no-reload", is_flag=True, help="Do not run systemctl daemon-reload.")
def install(path, user, group, config_path, no_reload):
    """Write the unit (and run systemctl daemon-reload when systemd is there)."""
    from miro_runtime.daemon.unit import install_unit
    for line in install_unit(path, user=user, group=group, config=config_path, reload=not no_reload):
        click.echo(line)


@service.command()
@click.option("--path", default="/etc/systemd/system/mirod.service", show_default=True)
@click.option("--no-reload", is_flag=True)
def uninstall(path, no_reload):
    """Remove the unit (the state directory is left alone)."""
    from miro_runtime.daemon.unit import uninstall_unit
    for line in uninstall_unit(path, reload=not no_reload):
        click.echo(line)


@main.command()
@click.option("--tasks", default=5, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary state directory.")
def demo(tasks, epochs, keep):
    """Start mirod on a temporary state dir, stream split-digits through its socket, show the
    accuracy matrix, energy per task and a few predictions, stop it cleanly."""
    from miro_runtime.cli.demo import run_demo
    sys.exit(run_demo(tasks=tasks, epochs=epochs, keep=keep))


@main.group()
def rep():
    """REP: rehearsal-free prompt learning on a frozen ViT (swift selection, AToM, ALD)."""


@rep.command()
@click.option("--stream", default="split-digits", show_default=True, help="Any `miro run` stream.")
@click.option("--classes", required=True, help="The base classes to pretrain on: 0-4 or 0,2,4.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where the state dict goes.")
@click.option("--size", default="micro", show_default=True, help="micro | mini | tiny | small | base")
@click.option("--image-size", default=0, show_default=True, help="Input side in pixels (0: max(16, the stream's)).")
@click.option("--patch-size", default=0, show_default=True, help="Patch side (0: an eighth of the image).")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=5e-4, show_default=True, help="AdamW peak rate (one-cycle); deeper ViTs want less.")
@click.option("--seed", default=0, show_default=True)
@click.option("--data-dir", default=None, help="Local dataset directory (torchvision or folder streams).")
@click.option("--threads", default=0, show_default=True, help="Torch threads (0: torch's default).")
@click.option("--layer-drop", default=0.0, show_default=True,
              help="Skip layer l of L with probability LAYER_DROP*l/(L-1) per batch (LayerDrop): a backbone "
                   "that tolerates REP's ALD. 0: off.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
def pretrain(stream, classes, out, size, image_size, patch_size, epochs, batch_size, lr, seed, data_dir, threads,
             layer_drop, as_json):
    """Pretrain a small ViT on base classes, for a --backbone when no pretrained weights are at hand."""
    from miro_runtime.config import parse_classes
    from miro_runtime.engine.rep.pretrain import pretrain as run_pretrain
    from miro_runtime.engine.streams import StreamError, make_stream, select_classes
    try:
        ids = parse_classes(classes)
        st = select_classes(make_stream(stream, None, seed, data_dir), ids, 1)
        res = run_pretrain(st, out, size=size, image_size=image_size, patch_size=patch_size, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, threads=threads, layer_drop=layer_drop,
                           log=None if as_json else (lambda m: click.echo(m, err=True)))
    except (ValueError, StreamError, OSError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(res))
    else:
        click.echo(f"wrote {res['out']} (ViT {res['spec']}, {res['train_samples']} samples of classes "
                   f"{res['classes']}, held-out accuracy {res['test_acc']:.1%}, {res['seconds']:.0f} s)")



@main.group()
def kv():
    """KV-cache inference on the RAM + flash tiers (built-in decoder or a local transformers model)."""


@kv.command()
@click.option("--model", "model_name", default="builtin-tiny", show_default=True,
              help="builtin-tiny (random weights) | a local transformers model directory (llm extra; "
              "--policy full only)")
@click.option("--policy", default="full", show_default=True, help="full | sink | h2o | cascade | topk")
@click.option("--policy-opt", "policy_opts", multiple=True, metavar="KEY=VALUE",
              help="A policy's own option, repeatable: sink: sinks; h2o: recent; cascade: sinks, levels, beta; "
              "topk: k, group, refresh, sinks, recent (blocks).")
@click.option("--hot-budget", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of KV in hot memory (0: all hot). full: the planner puts the rest in the LMDB tier.")
@click.option("--prompt", default=None, help="The prompt text (bytes are the built-in model's tokens).")
@click.option("--prompt-file", default=None, type=click.Path(dir_okay=False, exists=True))
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--cold-dir", default="", help="LMDB directory for cold layers (default: --store, or a temporary one).")
@click.option("--store", "store_dir", default="", help="Persistent LMDB directory: prompt prefixes are reused across "
              "processes (lossless policy).")
@click.option("--prefix-cap", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bytes of stored prefixes kept (0: no cap); suffixes are evicted before prefixes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--daemon", "via_daemon", is_flag=True, help="Ask the running mirod over its control socket (its "
              "[kv] model and shares apply; --policy and --hot-budget are passed on when given).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
@click.pass_context
def generate(ctx, model_name, policy, policy_opts, hot_budget, prompt, prompt_file, max_new_tokens, cold_dir, store_dir,
             prefix_cap, seed, via_daemon, as_json):
    """Greedy generation through the tiered KV cache."""
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt and --prompt-file")
    text = prompt.encode() if prompt is not None else open(prompt_file, "rb").read()
    if via_daemon:
        if policy_opts:
            raise click.UsageError("--policy-opt applies to in-process generation; the daemon uses the policy's "
                                   "defaults")
        src = ctx.get_parameter_source
        params = {"prompt": text.decode("utf-8", "replace"), "max_new_tokens": max_new_tokens}
        if src("policy") != click.core.ParameterSource.DEFAULT:
            params["policy"] = policy
        if hot_budget:
            params["hot_budget"] = hot_budget
        res = _call(ctx, "kv_generate", **params)
    else:
        from miro_runtime.kv.generate import run_generate
        from miro_runtime.kv.policies import parse_options
        try:
            res = run_generate(model_name, text, max_new_tokens, policy, hot_budget, cold_dir, seed=seed,
                               store_dir=store_dir, prefix_cap=prefix_cap or None,
                               policy_opts=parse_options(policy, policy_opts))
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(res))
    else:
        tps = res["tokens_per_s"]
        click.echo(f"{res['new_tokens']} tokens, {tps:.1f} tokens/s, first token {res['ttft_s'] * 1e3:.0f} ms, "
                   f"KV hot {res['hot_bytes']:,} B / cold {res['cold_bytes']:,} B ({res['policy']})"
                   if tps else f"{res['new_tokens']} tokens")


@kv.command()
@click.argument("action", type=click.Choice(["list", "clear"]))
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
def prefixes(action, store_dir, as_json):
    """List or clear the prompt prefixes kept in a --store directory."""
    from miro_runtime.kv.prefix import PrefixStore
    from miro_runtime.storage import FlashTier, StoreError
    try:
        tier = FlashTier(store_dir)
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from e
    try:
        ps = PrefixStore(tier, "", 0)
        if action == "list":
            rows = ps.entries()
            _out({"prefixes": rows, "bytes": sum(r["bytes"] for r in rows)}, as_json,
                 lambda r: click.echo("\n".join(f"{x['hash'][:16]}  depth {x['depth']}  {x['bytes']:,} B  {x['model']}"
                                      for x in r["prefixes"]) or "no stored prefixes"))
        else:
            _out({"cleared": ps.clear()}, as_json, lambda r: click.echo(f"cleared {r['cleared']} stored prefix chunks"))
    finally:
        tier.close()


if __name__ == "__main__":
    main()
