"""The daemon's control commands: each is a client of mirod's control socket (miro_runtime.wire), and
``miro daemon`` runs mirod itself. Importing this module loads neither torch nor numpy nor the engine,
so ``miro status`` answers in a fraction of a second; a command imports what it needs when it runs."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Optional

import click

from miro_runtime.cli.render import accuracy_text, emit, print_table, progress_text, status_lines

# exit codes of the control commands (sysexits.h)
EXIT_NO_DAEMON = 69  # EX_UNAVAILABLE: nothing listens on the socket
EXIT_DAEMON_ERROR = 65  # the daemon refused the request (bad input, conflict)
EXIT_DENIED = 77  # EX_NOPERM: the socket or the method is not for this user
WAIT_S = 3600.0  # `task end --wait`: the longest wait for a task's training (the daemon's own bound)
PROGRESS_EVERY_S = 0.5  # `task end --wait` on a terminal: how often its progress line is redrawn
CLEAR_EOL = "\x1b[K"  # ANSI: clear to the end of the line (a shorter redraw leaves no tail)
EXIT_UNHEALTHY = 70  # EX_SOFTWARE: status answered, but a task failed or the trainer is failing or wedged


def socket_of(ctx) -> str:
    from miro_runtime.wire.client import default_socket
    o = ctx.find_root().obj or {}
    return o["socket"] or default_socket(o["state_dir"])


def request(ctx, method, answer_within: float = 60.0, **params):
    """One request to mirod: its result, or the client's exception (NoDaemon, DaemonError, OSError).
    ``answer_within``: seconds the answer may take (a request that waits on the daemon says so)."""
    from miro_runtime.wire.client import Client
    with Client(socket_of(ctx), timeout=answer_within) as c:
        return c.call(method, **params)


def call(ctx, method, answer_within: float = 60.0, **params):
    """One request to mirod; a clear message and a distinct exit code when it cannot be served."""
    try:
        return request(ctx, method, answer_within, **params)
    except Exception as e:  # noqa: BLE001 -- failed() exits for the client's errors and re-raises a bug
        failed(ctx, method, e)


def failed(ctx, method: str, e: Exception):
    """What a request's failure means to the user: its message and exit code (a bug is re-raised)."""
    from miro_runtime.wire.client import DaemonError, NoDaemon
    from miro_runtime.wire.protocol import PERMISSION_DENIED
    if isinstance(e, NoDaemon):
        fail(ctx, str(e), EXIT_NO_DAEMON)
    if isinstance(e, PermissionError):
        fail(ctx, f"permission denied on {socket_of(ctx)}: this user is not in the socket's group", EXIT_DENIED)
    if isinstance(e, DaemonError):
        why = e.message
        for prefix in (f"{method}: ", f"{method.replace('_', ' ')}: "):  # the daemon may name the method too
            why = why[len(prefix):] if why.startswith(prefix) else why
        fail(ctx, f"{method.replace('_', ' ')}: {why}", EXIT_DENIED if e.code == PERMISSION_DENIED else
             EXIT_DAEMON_ERROR, code=e.code)
    if isinstance(e, (ConnectionError, OSError)):
        fail(ctx, f"lost the daemon on {socket_of(ctx)}: {e}", EXIT_NO_DAEMON)
    raise e


def fail(ctx, message: str, exit_code: int, code=None):
    """The one way a control command fails: a line `miro: <what>: <why>` on stderr, and, for a command
    run with --json, a JSON error object on stdout as well (scripts read stdout); then the exit code."""
    click.echo(f"miro: {message}", err=True)
    if ctx.params.get("as_json"):
        click.echo(json.dumps({"error": {"message": message, "exit_code": exit_code, "code": code}}))
    sys.exit(exit_code)


@click.command()
@click.option("--config", "config_path", default=None, help="TOML configuration file.")
@click.option("--set", "sets", multiple=True, metavar="TABLE.KEY=VALUE", help="Override a config key.")
@click.option("--retrain-from-store", is_flag=True,
              help="The checkpoints are gone on purpose: start over on the samples the store holds.")
@click.pass_context
def daemon(ctx, config_path, sets, retrain_from_store):
    """Run mirod in the foreground (what the systemd unit runs)."""
    from miro_runtime.daemon.main import run_daemon  # here: only `miro daemon` loads the daemon (and torch)
    o = ctx.find_root().obj
    pairs = []
    for item in sets:
        if "=" not in item:
            raise click.UsageError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        pairs.append(tuple(item.split("=", 1)))
    sys.exit(run_daemon(config_path, o["state_dir"], o["socket"], pairs, retrain_from_store))


def _fmt_j(v):
    return "-" if v is None else f"{v:.1f} J"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON (every key always present).")
@click.pass_context
def status(ctx, as_json):
    """What the daemon is doing: tasks (trained, open for samples, training and how far), classes,
    samples (stored, and since this daemon started), memory, flash, swaps, energy, Miro, accuracy per
    task. Exits 70 (after printing) when the trainer is unhealthy: a task failed, a job is failing, or
    it is wedged."""
    def human(s):
        for line in status_lines(s):
            click.echo(line)
    st = call(ctx, "status")
    emit(st, as_json, human)
    if st["health"] != "ok":
        sys.exit(EXIT_UNHEALTHY)


@click.command(name="eval")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def eval_(ctx, as_json):
    """Accuracy matrix, final average accuracy, forgetting, backward transfer (as `miro run --json`)."""
    r = call(ctx, "eval")

    def human(r):
        print_table({**r, "train_samples_per_s": None, "peak_rss_mb": None, "wall_s": None, "config": None},
                    short=True)
        for t in r["per_task"]:
            click.echo(f"  task {t['task']}: {_fmt_j(t['energy_j'])} ({t['energy_provenance']})")
    emit({k: r[k] for k in ("acc_matrix", "final_avg_acc", "forgetting", "bwt", "energy_j", "energy_provenance",
                            "per_task")}, as_json, human)


def _load_arrays(path, need_labels: bool = False):
    """(x, labels or None, {task, split} the file names) of an .npz, read as the daemon reads one
    (daemon/files.py: integer labels only); an unreadable file fails the command with exit 65."""
    from miro_runtime.daemon.files import SampleError, read_npz
    ctx = click.get_current_context()
    try:
        f = read_npz(path, need_labels=need_labels)
    except SampleError as e:
        fail(ctx, f"{ctx.info_name}: {e}; send an .npz with arrays 'x' (images) and 'y' (integer labels)",
             EXIT_DAEMON_ERROR)
    return f.x, f.y, {k: v for k, v in (("task", f.task), ("split", f.split)) if v is not None}


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--task", type=int, default=None, help="Task to ingest into (default: the open task, or the .npz's).")
@click.option("--split", type=click.Choice(["train", "test"]), default=None,
              help="Train or test samples (default: the .npz's split array, else train).")
@click.option("--end", is_flag=True, help="End the task afterwards.")
@click.option("--batch", type=click.IntRange(min=1), default=1024, show_default=True, help="Samples per request.")
@click.option("--server-side", is_flag=True, help="Let the daemon read PATH itself (a path on its machine).")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def ingest(ctx, path, task, split, end, batch, server_side, as_json):
    """Send samples: an .npz (arrays x, y, optional task, split) or an image folder (the folder
    stream's layouts; each task is ended after it). Each request carries a batch id (the file's
    sha256 and the batch's sample range): sending a file again after a kill never stores it twice."""
    import base64

    if server_side or os.path.isdir(path):  # the daemon names an .npz's batch by its content itself
        r = call(ctx, "ingest", path=os.path.abspath(path), **({"task": task} if task is not None else {}),
                 **({"split": split} if split else {}))
    else:
        import numpy as np

        from miro_runtime.daemon.files import file_batch_id, sha256_of
        x, y, extra = _load_arrays(path, need_labels=True)
        digest = sha256_of(path)
        st = call(ctx, "status")
        if task is None:
            task = int(extra["task"]) if "task" in extra else (
                st["open_task"] if st["open_task"] >= 0 and st["open_task"] not in st["ended_tasks"]
                else st["open_task"] + 1)
        split = split or (str(extra["split"]) if "split" in extra else "train")
        acked = dup = 0
        with click.progressbar(length=len(y), label=f"ingest into task {task} ({split})", file=sys.stderr) as bar:
            for i in range(0, len(y), batch):
                xb = np.ascontiguousarray(x[i:i + batch])
                r = call(ctx, "ingest", task=task, split=split, dtype=str(xb.dtype), shape=list(xb.shape),
                         labels=y[i:i + batch], data=base64.b64encode(xb.tobytes()).decode(),
                         batch_id=file_batch_id(digest, i, i + len(xb)))
                acked += r["acked"]
                dup += r["acked"] if r.get("duplicate") else 0  # stored by an earlier send of this file
                bar.update(r["acked"])
        r = {"acked": acked, "task": task, "split": split, "already_stored": dup}
        if end:
            r["task_end"] = call(ctx, "task_end", task=task)
    emit(r, as_json, lambda r: click.echo(f"acknowledged {r['acked']} samples (durable in the flash tier)" + (
        f"; {r['already_stored']} of them were stored by an earlier send" if r.get("already_stored") else "")))


@click.group()
def task():
    """End tasks, list them."""


@task.command(name="end")
@click.argument("task_id", type=int, required=False)
@click.option("--wait", is_flag=True, help="Return once the task is trained and evaluated.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def task_end(ctx, task_id, wait, as_json):
    """End TASK_ID (default: the open task): the daemon trains (epoch mode) and evaluates it. With
    --wait on a terminal, a line on stderr shows how far its training is."""
    params = {"wait": wait, "timeout": WAIT_S}
    if task_id is not None:
        params["task"] = task_id
    show = wait and not as_json and sys.stderr.isatty()
    shown = ProgressLine(socket_of(ctx), task_id) if show else None
    try:
        # the daemon answers within WAIT_S
        r = call(ctx, "task_end", answer_within=WAIT_S + 30 if wait else 60.0, **params)
    finally:
        if shown is not None:
            shown.close()

    def human(r):
        line = f"task {r['task']} ended"
        if r.get("trained"):
            line += f"; accuracy {accuracy_text(r.get('acc'), r.get('avg_acc'))}"
        elif wait:
            line += f"; not trained after {WAIT_S:.0f} s of waiting: see miro status"
        click.echo(line)
    emit(r, as_json, human)


class ProgressLine:
    """`task end --wait` on a terminal: one stderr line, redrawn from `status`'s ``progress`` read on
    a second connection every PROGRESS_EVERY_S while the first waits for the answer. Best effort: a
    status that cannot be read leaves the line as it was (the wait itself reports failures)."""

    def __init__(self, sock: str, task: Optional[int]):
        self.sock, self.task, self.drawn = sock, task, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.thread.start()

    def _run(self):
        from miro_runtime.wire.client import Client, DaemonError
        try:
            with Client(self.sock, timeout=PROGRESS_EVERY_S * 20) as c:
                while not self.stop.is_set():
                    st = c.call("status")
                    self.task = st["open_task"] if self.task is None else self.task  # what the request ends
                    p = st.get("progress")
                    if p and p["task"] == self.task:
                        click.echo(f"\r{progress_text(p)}{CLEAR_EOL}", err=True, nl=False)
                        self.drawn = True
                    self.stop.wait(PROGRESS_EVERY_S)
        except (OSError, DaemonError):
            return

    def close(self):
        self.stop.set()
        self.thread.join(PROGRESS_EVERY_S * 20)
        if self.drawn:
            click.echo(f"\r{CLEAR_EOL}", err=True, nl=False)  # the answer follows on stdout


@task.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def task_list(ctx, as_json):
    """Every task: its classes, state, test samples, accuracy and energy."""
    def human(r):
        for t in r["tasks"]:
            acc = "-" if t["avg_acc"] is None else f"{100 * t['avg_acc']:.1f}%"
            click.echo(f"task {t['task']:<3} {t['state']:<8} classes {t['classes']}  test {t['test_samples']}  "
                       f"avg acc {acc}  energy {_fmt_j(t['energy_j'])}")
    emit(call(ctx, "task_list"), as_json, human)


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("-k", default=3, show_default=True, help="How many of the likeliest labels to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
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
    r = call(ctx, "predict", k=k, dtype=str(x.dtype), shape=list(x.shape), data=base64.b64encode(x.tobytes()).decode())

    def human(r):
        for i, (lab, top, p) in enumerate(zip(r["labels"], r["topk"], r["probs"])):
            click.echo(f"{i:>4}: {lab}   top-{len(top)} " + ", ".join(f"{a} ({100 * b:.1f}%)" for a, b in zip(top, p)))
    emit(r, as_json, human)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def profile(ctx, as_json):
    """Run a Miro profile round now, on the open task's samples."""
    emit(call(ctx, "profile"), as_json, lambda r: click.echo(f"task {r['task']}: rule {r['rule']} chose {r['winner']} "
                                                              f"({r['profiling_energy_j']:.2f} J of profiling)"))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def checkpoint(ctx, as_json):
    """Write a checkpoint now (or at the next step boundary while a task trains)."""
    emit(call(ctx, "checkpoint"), as_json, lambda r: click.echo(json.dumps(r)))
