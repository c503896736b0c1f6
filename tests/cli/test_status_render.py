"""`miro status` a person can read after a restart, and `miro task end --wait` showing progress on a
terminal (issue 20): counters labelled since-start against stored, no Python None, which task is
open / training / trained said in words, accuracies labelled by task. The rendering is a pure
function (fed status dicts here); a real daemon checks the labels across a restart, and a real CLI
under a pty checks the progress line, which stays off when stderr is not a terminal or with --json."""
import json
import os
import pty
import select
import signal
import subprocess
import time

from conftest import MIRO
from daemon_util import Mirod, samples

from miro_runtime.cli.render import progress_text, status_lines

# a restarted daemon in epoch mode: 2 tasks trained, task 2 open, nothing ingested since the restart
RESTARTED = {
    "state": "idle", "paused": None, "uptime_s": 4.2, "run_dir": "/s/run", "open_task": 2, "ended_tasks": [0, 1],
    "tasks_trained": 2, "current_task": 2, "position": {"task": 2, "epoch": 0, "batch": 0}, "mode": "epochs",
    "strategy": "er", "classes_seen": 6, "class_labels": [0, 1, 2, 3, 4, 5],
    "counters": {"ingested_train": 30, "ingested_test": 0, "ingest_batches": 1, "predictions": 0,
                 "online_pending": 0, "online_untrained": 0},
    "memory": {"size": 16, "capacity": 16}, "swap": None, "steps": 0,
    "flash": {"records": 120, "budget_records": None, "test_records": 40, "bytes": 7680},
    "energy": {"tasks_j": None, "current_task_j": None, "total_j": None, "provenance": None},
    "miro": {"enabled": False, "rule": None, "knobs": "mem=16,flash=None,swap=0.5,epochs=1", "last_decision": None},
    "last_acc": [0.912, None], "last_avg_acc": 0.912, "health": "ok", "failed_tasks": [], "last_error": None,
    "trainer_errors": 0, "progress": None, "stored": {"train": 120, "test": 40}, "budget": None,
    "kv": {"enabled": False, "model": "builtin", "policy": "lru", "ram_bytes": 1 << 20, "flash_bytes": 1 << 22,
           "flash_used_bytes": None, "prefix_chunks": None, "requests": 0},
    "daemon": {"pid": 4242, "uptime_s": 4.2},
}
# a daemon that has never seen a sample: every optional part None
FRESH = {**RESTARTED, "state": "waiting for data", "open_task": -1, "ended_tasks": [], "tasks_trained": 0,
         "classes_seen": 0, "class_labels": [], "memory": None, "flash": None, "energy": None, "miro": None,
         "last_acc": None, "last_avg_acc": None, "stored": {"train": 0, "test": 0}, "kv": None,
         "counters": {**RESTARTED["counters"], "ingested_train": 0}}
FRESH.pop("daemon")


def row(lines, label):
    hit = [ln[16:] for ln in lines if ln[:16].strip() == label]
    assert len(hit) == 1, (label, lines)
    return hit[0]


def test_a_restarted_daemon_reads_without_none_or_contradictions():
    lines = status_lines(RESTARTED)
    text = "\n".join(lines)
    assert "None" not in text, text
    assert row(lines, "samples") == "120 train / 40 test stored (30 train, 0 test since start)"
    assert row(lines, "tasks") == "2 trained (0, 1); task 2 open for samples"
    assert row(lines, "training") == "idle"
    assert row(lines, "accuracy") == "task 0 91.2%, task 1 no test samples (after task 1, average 91.2%)"
    assert row(lines, "flash").endswith("budget unbounded") and row(lines, "energy") == "-"
    assert row(lines, "uptime") == "4 s  (pid 4242)" and row(lines, "classes seen") == "6  (labels 0, 1, 2, 3, 4, 5)"
    for label in ("state", "health", "learner", "RAM memory", "miro", "kv"):
        row(lines, label)
    noted = status_lines({**RESTARTED, "kv": {**RESTARTED["kv"], "model_note": "random-init weights"}})
    assert row(noted, "kv").startswith("off: builtin (random-init weights), policy lru")


def test_a_fresh_daemon_and_every_missing_part_read_as_words():
    lines = status_lines(FRESH)
    text = "\n".join(lines)
    assert "None" not in text, text
    assert row(lines, "tasks") == "none trained yet; no task open: the next train samples open task 0"
    assert row(lines, "training") == "waiting for the first samples"
    assert row(lines, "accuracy").startswith("none yet") and "pid -" in row(lines, "uptime")
    online = {**RESTARTED, "mode": "online", "swap": {"completed": None, "dropped": None},
              "counters": {**RESTARTED["counters"], "online_pending": 8, "online_untrained": 3},
              "miro": {"enabled": True, "rule": None, "knobs": None, "last_decision": {"task": 1, "winner": None}},
              "health": "error", "failed_tasks": [1], "last_error": {"task": 1, "error": None},
              "energy": {"total_j": 3.25, "current_task_j": 0.5, "provenance": "estimated"},
              "progress": {"task": 2, "state": "training", "done": 24, "total": 32, "unit": "samples",
                           "fraction": 0.75, "epoch": None, "epochs": None}}
    lines = status_lines(online)
    assert "None" not in "\n".join(lines), lines
    assert row(lines, "samples").endswith(", 8 pending online, 3 skipped untrained (online backlog full)")
    assert row(lines, "tasks") == "1 trained (0); 1 failed (1); task 2 open for samples"
    assert row(lines, "training") == "task 2: 75% (24 of 32 stored samples trained)"
    assert "failed tasks [1]" in row(lines, "health") and row(lines, "energy").startswith("3.2 J  (estimated)")


# an energy budget per task: task 2 trains, 40% through; the guard stopped task 1
BUDGET = {"mode": "task", "task_j": 50.0, "power_w": None, "bucket_j": None,
          "spent_j": {"train": 80.0, "profile": 4.5, "eval": 2.0, "predict": 0.004, "kv": 0.0},
          "guard_trips": [1], "task": 2, "task_spent_j": 20.0, "remaining_j": 30.0, "forecast_j": 50.0, "pending": None}


def test_the_budget_row_says_the_budget_the_task_spending_and_forecast_and_each_kind():
    lines = status_lines({**RESTARTED, "budget": BUDGET})
    assert row(lines, "budget") == ("50.0 J per task; task 2: 20.0 J spent, 30.0 J left, forecast 50.0 J; spent 86.5 J "
                                    "(train 80.0 J, profile 4.5 J, eval 2.0 J, predict 0.004 J); guard stopped 1 task "
                                    "(1)")
    assert row(status_lines(RESTARTED), "budget").startswith("none (miro budget set --energy J")
    over = {**BUDGET, "remaining_j": -1.5, "forecast_j": None, "guard_trips": [1, 2],
            "pending": {"task_j": None, "power_w": 2.5, "bucket_s": 30.0}}
    assert row(status_lines({**RESTARTED, "budget": over}), "budget") == (
        "50.0 J per task; task 2: 20.0 J spent, 1.5 J over, forecast -; spent 86.5 J (train 80.0 J, profile 4.5 J, "
        "eval 2.0 J, predict 0.004 J); guard stopped 2 tasks (1, 2); from the next step: 2.5 W average (bucket "
        "30.0 s)")
    # a power budget before the first sample: nothing spent, no task yet
    fresh = {**BUDGET, "mode": "power", "task_j": None, "power_w": 2.0, "bucket_j": 120.0, "guard_trips": [],
             "spent_j": dict.fromkeys(BUDGET["spent_j"], 0.0), "task": None, "task_spent_j": None,
             "remaining_j": None, "forecast_j": None}
    lines = status_lines({**FRESH, "budget": fresh})
    assert row(lines, "budget") == "2 W average (bucket 120.0 J); spent 0.0 J" and "None" not in "\n".join(lines)


def test_progress_text_names_the_task_epoch_and_steps():
    p = {"task": 2, "state": "training", "done": 120, "total": 300, "unit": "steps", "fraction": 0.4,
         "epoch": 3, "epochs": 5}
    assert progress_text(p) == "task 2: 40% (epoch 3 of 5, 120 of 300 steps)"
    assert progress_text({**p, "state": "ended", "done": 0, "fraction": 0.0, "epoch": 1}) == (
        "task 2: 0% (epoch 1 of 5, 0 of 300 steps); ended, waits for the trainer")
    lines = status_lines({**RESTARTED, "ended_tasks": [0, 1, 2], "progress": p})
    assert row(lines, "tasks") == "2 trained (0, 1); task 2 ended, training; no task open: the next train samples " \
                                  "open task 3"
    assert row(lines, "training") == "task 2: 40% (epoch 3 of 5, 120 of 300 steps)"


def miro(*args, **kw):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=300, **kw)


def test_status_labels_stored_against_since_start_across_a_restart(tmp_path):
    sets = ("learning.online=false", "learning.epochs=1", "learning.strategy=er", "learning.flash_budget=none")
    d = Mirod(tmp_path / "s", *sets).start()
    try:
        with d.client() as c:
            c.ingest(0, "train", *samples(0, 48)[:2])
            c.ingest(0, "test", *samples(48, 16)[:2])
            c.call("task_end", task=0, wait=True)
            c.ingest(1, "train", *samples(64, 20)[:2])
        assert d.kill(signal.SIGTERM) == 0
        d = Mirod(tmp_path / "s", *sets).start()
        with d.client() as c:
            c.ingest(1, "train", *samples(84, 10)[:2])
        r = miro("--socket", d.sock, "status")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "None" not in r.stdout, r.stdout
        assert row(lines, "samples") == "78 train / 16 test stored (10 train, 0 test since start)"
        assert row(lines, "tasks") == "1 trained (0); task 1 open for samples"
        assert row(lines, "training") == "idle"
        assert row(lines, "accuracy").startswith("task 0 ") and "(after task 0, average " in row(lines, "accuracy")
        st = json.loads(miro("--socket", d.sock, "status", "--json").stdout)
        assert st["stored"] == {"train": 78, "test": 16} and st["counters"]["ingested_train"] == 10
        assert st["progress"] is None  # task 1 is open: epoch mode trains it once it ends
    finally:
        if d.alive():
            d.kill(signal.SIGTERM)


def run_on_a_pty(argv, timeout=300):
    """``argv`` with stderr on a terminal (stdout a pipe): (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    tty, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            tty += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    out = p.stdout.read().decode()
    return p.wait(60), out, tty.decode(errors="replace")


def test_task_end_wait_shows_progress_on_a_terminal_only(tmp_path):
    # enough steps (40 samples / batch 2 x 60 epochs = 1200, seconds here) for the 0.5 s redraw to catch
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=60", "learning.batch_size=2",
              "learning.strategy=er").start()
    S = ["--socket", d.sock]
    try:
        with d.client() as c:
            c.ingest(0, "train", *samples(0, 40)[:2])
        rc, out, tty = run_on_a_pty(MIRO + S + ["task", "end", "--wait"])
        assert rc == 0, (out, tty)
        assert "task 0: " in tty and "of 1200 steps)" in tty and "(epoch " in tty, tty
        assert "\x1b[K" in tty and "Traceback" not in tty
        assert out.startswith("task 0 ended; accuracy task 0 ") and "None" not in out, out
        with d.client() as c:  # what follows needs no redraw: short tasks
            c.call("config_set", key="learning.epochs", value=2)
        for t, extra in ((1, []), (2, ["--json"])):  # as long: stderr a pipe; --json on a terminal: quiet
            with d.client() as c:
                c.ingest(t, "train", *samples(40 * t, 40)[:2])
            if extra:
                rc, out, tty = run_on_a_pty(MIRO + S + ["task", "end", "--wait", *extra])
                assert rc == 0 and tty == "" and json.loads(out)["trained"], (out, tty)
            else:
                r = miro(*S, "task", "end", "--wait")
                assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("task 1 ended; accuracy"), r
    finally:
        if d.alive():
            d.kill(signal.SIGTERM)
