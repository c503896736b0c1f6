"""`miro demo` / `make run`: the daemon as a user meets it. Start mirod on a temporary state
directory, stream the split-digits tasks through its socket as an external client would, print
the accuracy matrix, the energy of each task and a few predictions, then stop it with SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import click

from miro_runtime.daemon.spawn import start_daemon  # noqa: F401  (benches and examples import it from here)


def run_demo(tasks: int = 5, epochs: int = 3, keep: bool = False) -> int:
    from miro_runtime.wire.client import Client
    from miro_runtime.engine.streams import split_digits
    state = tempfile.mkdtemp(prefix="miro-demo-")
    os.makedirs(state, exist_ok=True)
    click.echo(f"starting mirod on {state} (strategy carm, {epochs} epochs per task, RAM memory 20, every sample "
               f"on flash)", err=True)
    proc, sock = start_daemon(os.path.join(state, "state"), "learning.online=false", f"learning.epochs={epochs}",
                              "learning.strategy=carm", "learning.memory=20")
    try:
        stream = split_digits(tasks, 0)
        with Client(sock) as c:
            for t in range(tasks):
                x, y = stream.train[t]
                with click.progressbar(length=len(y), label=f"task {t}: streaming classes "
                                       f"{sorted(set(y.tolist()))}", file=sys.stderr) as bar:
                    for i in range(0, len(y), 64):  # as a camera app would: small batches as they come
                        r = c.ingest(t, "train", x[i:i + 64], y[i:i + 64])
                        bar.update(r["acked"])
                c.ingest(t, "test", *stream.test[t])
                r = c.call("task_end", task=t, wait=True)
                click.echo(f"  task {t} trained: accuracy per task {[round(100 * a, 1) for a in r['acc']]}, "
                           f"{r['energy_j']:.2f} J", err=True)
            ev = c.call("eval")
            st = c.call("status")
            xs, ys = stream.test[0]
            pick = [0, len(ys) // 3, 2 * len(ys) // 3]
            pr = c.predict(xs[pick], k=2)
        from miro_runtime.cli.render import print_table
        print_table({**ev, "train_samples_per_s": None, "peak_rss_mb": None, "wall_s": None, "config": None},
                    short=True)
        click.echo("\nEnergy per task:")
        for rec in ev["per_task"]:
            click.echo(f"  task {rec['task']}: {rec['energy_j']:.2f} J over {rec['train_samples']} training samples")
        click.echo(f"  ({ev['energy_provenance']})")
        click.echo("\nPredictions from the daemon's latest snapshot:")
        for j, i in enumerate(pick):
            click.echo(f"  test image {i}: true {int(ys[i])}, predicted {pr['labels'][j]} "
                       f"(p={pr['probs'][j][0]:.2f})")
        click.echo(f"\nflash: {st['flash']['records']} samples; RAM memory {st['memory']['size']}/"
                   f"{st['memory']['capacity']}; swaps {st.get('swap', {}).get('completed')}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -9
        click.echo(f"mirod stopped (exit {rc})", err=True)
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
        else:
            click.echo(f"state kept in {state}", err=True)
    return 0 if rc == 0 else 1
