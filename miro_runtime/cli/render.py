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


NONE = "-"  # what a person reads for a value the daemon does not have (never Python's None)
LABELS_SHOWN = 20  # class labels listed by `miro status` before "and N more"


def _v(v, none: str = NONE) -> str:
    return none if v is None else str(v)


def _pct(v) -> str:
    return NONE if v is None else f"{100 * v:.1f}%"


def _mib(v) -> str:
    return NONE if v is None else f"{v / 2**20:.1f} MiB"


def _joules(v) -> str:
    return NONE if v is None else f"{v:.1f} J"


def _duration(s) -> str:
    if s is None:
        return NONE
    s = int(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _tasks(ts) -> str:
    return ", ".join(str(t) for t in ts)


def progress_text(p: dict) -> str:
    """One line for Session.status's ``progress``: 'task 2: 40% (epoch 2 of 5, 120 of 300 steps)'."""
    if p["unit"] == "steps":
        how = f"epoch {_v(p.get('epoch'))} of {_v(p.get('epochs'))}, {p['done']} of {p['total']} steps"
    else:
        how = f"{p['done']} of {p['total']} stored samples trained"
    waits = {"ended": "; ended, waits for the trainer", "ingesting": "; open for samples, trains as they arrive"}
    return f"task {p['task']}: {100 * p['fraction']:.0f}% ({how}){waits.get(p.get('state'), '')}"


def status_lines(s: dict) -> list:
    """`miro status` for a person: the daemon's status object (Session.status plus the daemon's keys)
    in -> labelled lines out. Pure: a test feeds it any status, a restarted daemon's included. What
    counts since this daemon started says so; what the store holds says "stored"."""
    rows = [("state", s["state"] + (f"  (paused: {s['paused']})" if s.get("paused") else "")),
            ("health", _health(s)),
            ("uptime", f"{_duration(s.get('uptime_s'))}  (pid {_v((s.get('daemon') or {}).get('pid'))})"),
            ("tasks", _task_words(s)),
            ("training", _training_words(s)),
            ("learner", f"strategy {_v(s.get('strategy'))}, {_v(s.get('mode'))} mode"),
            ("classes seen", _classes(s)),
            ("samples", _samples(s))]
    if s.get("memory"):
        rows.append(("RAM memory", f"{_v(s['memory']['size'])} / {_v(s['memory']['capacity'])} samples"))
    if s.get("flash"):
        f = s["flash"]
        rows.append(("flash", f"{_v(f.get('records'))} samples ({_mib(f.get('bytes'))}), budget "
                              f"{_v(f.get('budget_records'), 'unbounded')}"))
    if s.get("swap"):
        w = s["swap"]
        rows.append(("swaps", f"{_v(w.get('completed'))} done, {_v(w.get('dropped'))} dropped"))
    if s.get("energy"):
        rows.append(("energy", _energy(s["energy"])))
    if s.get("miro"):
        m = s["miro"]
        d = m.get("last_decision")
        rows.append(("miro", f"{'on' if m.get('enabled') else 'off'}: {_knobs(m.get('knobs'))}" +
                     (f"; last decision: task {_v(d.get('task'))} chose {_knobs(d.get('winner'))}" if d else "")))
    if s.get("kv"):
        k = s["kv"]
        note = f" ({k['model_note']})" if k.get("model_note") else ""
        rows.append(("kv", f"{'on' if k.get('enabled') else 'off'}: {_v(k.get('model'))}{note}, policy "
                           f"{_v(k.get('policy'))}, RAM share {_mib(k.get('ram_bytes'))}, flash share "
                           f"{_mib(k.get('flash_bytes'))} ({_mib(k.get('flash_used_bytes') or 0)} used, "
                           f"{k.get('prefix_chunks') or 0} prefix chunks), {_v(k.get('requests'))} requests"))
        if k.get("serving") or k.get("slo_tpot_ms") or k.get("slo_tbt_ms"):
            rows.append(("kv serving", kv_serving_text(k)))
    if s.get("fleet") and s["fleet"].get("enabled"):
        rows.append(("fleet", fleet_text(s["fleet"])))
    rows.append(("budget", budget_text(s.get("budget"))))
    rows.append(("accuracy", accuracy_text(s.get("last_acc"), s.get("last_avg_acc"))))
    return [f"{k:<16}{v}" for k, v in rows]


def kv_serving_text(k: dict) -> str:
    """The KV service's concurrent requests in one line: the queue, the default targets, attainment, deferrals."""
    sv = k.get("serving") or {}
    q = sv.get("queue") or []
    states = {}
    for r in q:
        states[r["state"]] = states.get(r["state"], 0) + 1
    queue = ", ".join(f"{n} {st}" for st, n in states.items()) or "empty"
    if k.get("waiting"):
        queue += f", {k['waiting']} not yet taken"
    targets = ", ".join(f"{name} {k[key]:g} ms" for name, key in (("TPOT", "slo_tpot_ms"), ("TBT", "slo_tbt_ms"))
                        if k.get(key)) or "no default targets"
    att = sv.get("attainment") or {}
    met = ", ".join(f"{name} {100 * att[key]:.0f}%" for name, key in (("TPOT", "tpot"), ("TBT", "tbt"))
                    if att.get(key) is not None) or "none measured yet"
    return (f"queue {queue}; {targets}; attainment {met} over {sv.get('served', 0)} requests; "
            f"{sv.get('deferrals', 0)} deferrals, {sv.get('resumes', 0)} resumes, {sv.get('plans', 0)} plans")


def fleet_text(f: dict) -> str:
    """Session status's ``fleet`` in one line: the SuperLink, the SuperNode, rounds joined and refused, bytes."""
    sn = f.get("supernode") or {}
    last = f.get("last_round")
    restarts = f" (restarts {sn['restarts']})" if sn.get("restarts") else ""
    line = (f"{f.get('node_name')} -> {f.get('superlink')} ({'TLS' if f.get('tls') else 'insecure'}"
            f"{', node key' if f.get('node_auth') else ''}); SuperNode {sn.get('state', '-')}{restarts}, "
            + (f"connected as node {sn.get('node_id')}" if f.get("connected") else "not connected")
            + f"; rounds {f['rounds'].get('train', 0)} trained, {f.get('refusals', 0)} refused")
    if last:
        acc = last.get("acc")
        line += f"; last: round {last['round']} {last['kind']}" + (f", accuracy {100 * acc:.1f}%" if acc is not None
                                                                   else "")
    nxt = f.get("next_round")
    if nxt:
        line += f"; next: round {nxt['round']} of {nxt['of']}"
    return line + f"; {_mib(f.get('bytes_received'))} in, {_mib(f.get('bytes_sent'))} out"


def _budget_words(task_j, power_w, bucket) -> str:
    """A budget's setting in words: 'none', '5.0 J per task', '2.0 W average (bucket 120.0 J)'."""
    if task_j is not None:
        return f"{_j(task_j)} per task"
    if power_w is not None:
        return f"{power_w:g} W average (bucket {bucket})"
    return "none"


def _j(v) -> str:
    """Joules as a budget's figures need them: a request's few millijoules are not shown as 0.0 J."""
    return NONE if v is None else f"{v:.1f} J" if abs(v) >= 1 or v == 0 else f"{v:.3f} J"


def _left(v) -> str:
    return f"{_j(v)} left" if v is None or v >= 0 else f"{_j(-v)} over"


def budget_text(b) -> str:
    """Session.status's ``budget`` in one line: the budget, the task's spending, remainder and forecast,
    the joules spent by kind, the guard's trips, a change waiting for the next step."""
    if b is None:
        return "none (miro budget set --energy J or --power W sets one)"
    line = _budget_words(b.get("task_j"), b.get("power_w"), _j(b.get("bucket_j")))
    if b.get("task") is not None:
        line += (f"; task {b['task']}: {_j(b.get('task_spent_j'))} spent, {_left(b.get('remaining_j'))}, "
                 f"forecast {_j(b.get('forecast_j'))}")
    spent = b.get("spent_j") or {}
    line += f"; spent {_j(sum(spent.values()))}"
    kinds = [f"{k} {_j(v)}" for k, v in spent.items() if v]
    line += f" ({', '.join(kinds)})" if kinds else ""
    trips = b.get("guard_trips") or []
    line += f"; guard stopped {len(trips)} task{'s' if len(trips) != 1 else ''} ({_tasks(trips)})" if trips else ""
    p = b.get("pending")
    if p:
        bucket = f"{_v(p.get('bucket_s'))} s"
        line += f"; from the next step: {_budget_words(p.get('task_j'), p.get('power_w'), bucket)}"
    return line


def _health(s: dict) -> str:
    err = s.get("last_error")
    return (s["health"] + (f"  (failed tasks {s['failed_tasks']})" if s.get("failed_tasks") else "") +
            (f"; last error: task {_v(err.get('task'))}: {_v(err.get('error'))}" if s["health"] != "ok" and err
             else ""))


def _knobs(key) -> str:
    """A knobs key (control/knobs.py: 'mem=16,flash=None,...') in words: no flash budget is unbounded,
    a strategy knob of None is off."""
    if key is None:
        return NONE
    pairs = [kv.partition("=") for kv in str(key).split(",")]
    return ",".join(f"{k}={('unbounded' if k == 'flash' else 'off') if v == 'None' else v}" for k, _, v in pairs)


def _task_words(s: dict) -> str:
    """Which tasks are trained (or failed), which ended and waits, which is open for samples."""
    failed = s.get("failed_tasks") or []
    done = s.get("tasks_trained") or 0
    trained = [t for t in range(done) if t not in failed]
    parts = [f"{len(trained)} trained ({_tasks(trained)})" if trained else "none trained yet"]
    if failed:
        parts.append(f"{len(failed)} failed ({_tasks(failed)})")
    p = s.get("progress") or {}
    for t in [t for t in s.get("ended_tasks") or [] if t >= done]:
        parts.append(f"task {t} ended, " + ("training" if (p.get("task"), p.get("state")) == (t, "training")
                                            else "waiting to train"))
    o = s.get("open_task", -1)
    if o >= 0 and o not in (s.get("ended_tasks") or []):
        parts.append(f"task {o} open for samples")
    else:
        parts.append(f"no task open: the next train samples open task {o + 1}")
    return "; ".join(parts)


def _training_words(s: dict) -> str:
    p = s.get("progress")
    if p:
        return progress_text(p)
    return "waiting for the first samples" if s.get("state") == "waiting for data" else "idle"


def _classes(s: dict) -> str:
    labels = s.get("class_labels") or []
    more = f" and {len(labels) - LABELS_SHOWN} more" if len(labels) > LABELS_SHOWN else ""
    return f"{s.get('classes_seen') or 0}" + (f"  (labels {_tasks(labels[:LABELS_SHOWN])}{more})" if labels else "")


def _samples(s: dict) -> str:
    """Stored (what the store holds, across restarts) and since start (this process's counters)."""
    stored, c = s.get("stored") or {}, s.get("counters") or {}
    line = (f"{stored.get('train', 0)} train / {stored.get('test', 0)} test stored "
            f"({c.get('ingested_train', 0)} train, {c.get('ingested_test', 0)} test since start)")
    if s.get("mode") == "online":
        line += f", {c.get('online_pending', 0)} pending online"
        if c.get("online_untrained"):
            line += f", {c['online_untrained']} skipped untrained (online backlog full)"
    return line


def _energy(e: dict) -> str:
    line = _joules(e.get("total_j")) + (f"  ({e['provenance']})" if e.get("provenance") else "")
    if e.get("current_task_j"):
        line += f"; {_joules(e['current_task_j'])} of it on the task in training"
    return line


def accuracy_text(acc, avg) -> str:
    """'task 0 91.2%, task 1 88.0% (after task 1, average 89.6%)': the row after the last trained task."""
    if not acc:
        return "none yet (a task is evaluated once it has trained)"
    per = ", ".join(f"task {t} {_pct(a) if a is not None else 'no test samples'}" for t, a in enumerate(acc))
    return f"{per} (after task {len(acc) - 1}" + (f", average {_pct(avg)})" if avg is not None else ")")


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
