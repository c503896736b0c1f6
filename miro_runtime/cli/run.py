"""The commands that work in-process, no daemon needed: ``miro run`` (a whole experiment), ``miro inspect``
and ``miro store verify|salvage`` (a flash tier, read-only on the source), ``miro rep pretrain`` (a ViT
for the prompt methods). The engine, torch and lmdb are imported inside the commands only."""

from __future__ import annotations

import json
import os
import sys

import click

from miro_runtime.cli.options import RunCommand, config_from_options, run_options
from miro_runtime.cli.render import Progress, emit, print_table


@click.command(cls=RunCommand)
@run_options
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
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


def _state_path(path: str) -> str:
    """A run or daemon state directory holds the store in state/; a store directory is itself."""
    return os.path.join(path, "state") if os.path.isdir(os.path.join(path, "state")) else path


@click.command()
@click.argument("state_dir", type=click.Path(file_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@click.pass_context
def inspect(ctx, state_dir, as_json):
    """Show what a flash tier holds: a run dir, a store dir, or (no argument) the daemon's state dir
    from --state-dir / MIRO_STATE_DIR. Safe while a writer is running: opens read-only. Runs the
    checks `miro store verify` runs (metadata, named databases, class index, manifest, every record's
    crc) and exits 1, saying what it found, on a store that verify would call damaged."""
    from miro_runtime.storage import FlashTier, StoreError

    from miro_runtime.wire.client import default_state_dir
    state_dir = state_dir or (ctx.find_root().obj or {}).get("state_dir") or default_state_dir()
    try:
        with FlashTier(_state_path(state_dir), readonly=True) as f:  # opening runs the metadata checks
            st = f.stats()
            st["damage"] = [p for ns in st["namespaces"] for p in _record_problems(f, ns)]
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(st))
    else:
        click.echo(f"{st['path']}  (schema {st['schema_version']}, map {st['map_size'] / 2**20:.0f} MiB)")
        for ns, s in st["namespaces"].items():
            click.echo(f"  {ns}: {s['records']} records of {s['dtype']}{s['shape']}, {s['bytes'] / 2**20:.2f} MiB, "
                       f"capacity {s['capacity']}, {s['policy']}")
            click.echo(f"    per class: {s['class_counts']}")
    if st["damage"]:
        shown = "; ".join(st["damage"][:5]) + (f"; and {len(st['damage']) - 5} more" if len(st["damage"]) > 5 else "")
        click.echo(f"Error: the store is damaged: {shown}. `miro store verify {st['path']}` lists every damaged "
                   f"record; `miro store salvage {st['path']} NEW_DIR` copies every readable one", err=True)
        ctx.exit(1)


def _record_problems(f, ns: str, chunk: int = 4096) -> list:
    """Every stored record of ``ns`` read back through the store's own reader (safe beside a writer):
    crc and header, and the label against the class its index entry names."""
    from miro_runtime.storage import StoreError
    out = []
    for cls in range(len(f.class_counts(ns))):
        ids = f.class_ids(ns, cls).tolist()
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            try:
                recs = f.get_samples(ns, part)
            except StoreError:  # find which ones, one at a time
                recs = []
                for sid in part:
                    try:
                        recs += f.get_samples(ns, [sid])
                    except StoreError as e:
                        out.append(str(e))
                        recs.append(False)
            for sid, r in zip(part, recs):
                if r is None:
                    out.append(f"record {ns}/{sid}: listed in the class index, not stored")
                elif r is not False and (r.label != cls or r.sample_id != sid):
                    out.append(f"record {ns}/{sid}: holds label {r.label}, id {r.sample_id}; indexed as class {cls}")
    return out


@click.group()
def store():
    """Check or rescue a flash tier (read-only on the source; safe while a writer runs)."""


@store.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path, as_json):
    """Every record's crc and header, the class index against the records, counts against meta.
    Exit 0: intact; 1: damage found; 2: the store cannot be opened at all."""
    from miro_runtime.storage.integrity import verify as run_verify
    report = run_verify(_state_path(path))

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
    emit(report, as_json, human)
    sys.exit(0 if report["ok"] else (2 if not report.get("openable", True) else 1))


@store.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def salvage(src, dst, as_json):
    """Copy every readable record of SRC's store into a fresh store at DST and say what was lost.
    When SRC is a run directory, DST becomes one too (config, checkpoints and metrics copied), so
    `miro run --resume --run-dir DST` continues on what survived."""
    import shutil

    from miro_runtime.storage import StoreError
    from miro_runtime.storage.salvage import salvage as run_salvage
    is_run = os.path.isdir(os.path.join(src, "state"))
    if os.path.exists(dst) and os.listdir(dst):
        raise click.ClickException(f"{dst} exists and is not empty; salvage writes into a new directory")
    # built aside and renamed into place: a salvage killed half-way leaves no half-store at DST
    part = dst.rstrip("/") + ".partial"
    shutil.rmtree(part, ignore_errors=True)
    try:
        report = run_salvage(_state_path(src), os.path.join(part, "state") if is_run else part)
    except StoreError as e:
        shutil.rmtree(part, ignore_errors=True)
        raise click.ClickException(str(e)) from e
    if is_run:
        copied = []
        for name in sorted(os.listdir(src)):
            p = os.path.join(src, name)
            if os.path.isfile(p) and not name.startswith("mirod.") and not name.endswith(".sock"):
                shutil.copy2(p, os.path.join(part, name))
                copied.append(name)
        report["run_files_copied"] = copied
    os.replace(part, dst)
    report["dst"] = os.path.abspath(os.path.join(dst, "state") if is_run else dst)

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
    emit(report, as_json, human)


@click.group()
def rep():
    """REP: rehearsal-free prompt learning on a frozen ViT (swift selection, AToM, ALD)."""


@rep.command()
@click.option("--stream", default="split-digits", show_default=True, help="Any `miro run` stream.")
@click.option("--classes", required=True, help="The base classes to pretrain on: 0-4 or 0,2,4.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where the state dict goes.")
@click.option("--size", default="micro", show_default=True, help="micro | mini | tiny | small | base")
@click.option("--image-size", default=0, show_default=True, help="Input side in pixels (0: max(16, the stream's)).")
@click.option("--patch-size", default=0, show_default=True,
              help="Patch side (0: the divisor of the image side closest to an eighth of it).")
@click.option("--per-class", default=0, show_default=True,
              help="Train on at most this many images per class, the same ones whatever --seed (0: all).")
@click.option("--epochs", default=30, show_default=True, help="Passes over the base classes' samples.")
@click.option("--batch-size", default=64, show_default=True, help="Samples per training step.")
@click.option("--lr", default=5e-4, show_default=True, help="AdamW peak rate (one-cycle); deeper ViTs want less.")
@click.option("--seed", default=0, show_default=True, help="Random seed (initial weights, batch order).")
@click.option("--data-dir", default=None, help="Local dataset directory (torchvision or folder streams).")
@click.option("--threads", default=0, show_default=True, help="Torch threads (0: torch's default).")
@click.option("--layer-drop", default=0.0, show_default=True,
              help="Skip layer l of L with probability LAYER_DROP*l/(L-1) per batch (LayerDrop): a backbone "
                   "that tolerates REP's ALD. 0: off.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last stdout line.")
def pretrain(stream, classes, out, size, image_size, patch_size, per_class, epochs, batch_size, lr, seed, data_dir,
             threads, layer_drop, as_json):
    """Pretrain a small ViT on base classes, for a --backbone when no pretrained weights are at hand."""
    from miro_runtime.config import parse_classes
    from miro_runtime.engine.rep.pretrain import pretrain as run_pretrain
    from miro_runtime.engine.streams import StreamError, limit_per_class, make_stream, select_classes
    try:
        ids = parse_classes(classes)
        st = select_classes(make_stream(stream, None, seed, data_dir), ids, 1)
        if per_class:
            st = limit_per_class(st, per_class)
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
