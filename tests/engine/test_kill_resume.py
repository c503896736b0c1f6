"""README: "a resumed er, der or carm-sync run is the uninterrupted run to the bit". Here der is
SIGKILLed mid-task, in a real `miro run` process, right after a mid-task checkpoint, and resumed with
`miro run --resume`; its accuracy matrix and step count equal an uninterrupted run's, in the same test
and on the same machine."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

MIRO = [sys.executable, "-m", "miro_runtime.cli"]
# 3 tasks: the kill lands in the last one, so the resumed run still has a task boundary and a task to finish
ARGS = ["run", "--stream", "split-digits", "--tasks", "3", "--epochs", "2", "--checkpoint-every", "25", "--json"]


def run(run_dir, strategy, *extra):
    r = subprocess.run(MIRO + ARGS + ["--strategy", strategy, "--run-dir", str(run_dir), *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def checkpoints(events_path):
    out = []
    if os.path.exists(events_path):
        with open(events_path) as fh:
            for line in fh:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if e.get("event") == "checkpoint":
                    out.append(e)
    return out


# carm-sync's case is tests/cli/test_cli.py::test_sigkill_then_resume_is_the_run_that_never_stopped (the
# same kill and resume, with the restarted task's cost accounting besides); er, whose state is a subset of
# der's (no stored logits), is resumed from a mid-task checkpoint in-process in tests/engine/test_engine.py
@pytest.mark.parametrize("strategy", ["der"])
def test_sigkill_mid_task_then_resume_equals_the_uninterrupted_run(tmp_path, strategy):
    whole = run(tmp_path / "whole", strategy)
    d = tmp_path / "killed"
    proc = subprocess.Popen(MIRO + ARGS + ["--strategy", strategy, "--run-dir", str(d)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # a checkpoint inside task 2 (epoch or batch past its start): the kill lands mid-task
    while not any(c["task"] == 2 and (c["epoch"] or c["batch"]) for c in checkpoints(d / "events.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a task-2 checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    resumed = run(d, strategy, "--resume")
    assert resumed["acc_matrix"] == whole["acc_matrix"]
    assert resumed["steps"] == whole["steps"]
