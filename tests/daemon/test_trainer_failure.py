"""A real mirod whose training of one task keeps failing (a test-only strategy injected through
sitecustomize): each attempt is logged once, the task is marked failed, `task end --wait` says so at
once, `task list`, `status` (exit 70) and the metrics show it, and the next task trains."""
import json
import os
import signal
import subprocess
import time

import numpy as np
from conftest import MIRO
from daemon_util import Mirod

INJECT = '''
import os
if os.environ.get("MIRO_TEST_FAIL_TASK"):
    from miro_runtime.engine import strategies
    from miro_runtime.session import trainer
    FAIL = int(os.environ["MIRO_TEST_FAIL_TASK"])

    class FailsOnOneTask(strategies.ER):
        def observe(self, x, y):
            if self.task == FAIL:
                raise RuntimeError(f"injected failure in task {FAIL}")
            return super().observe(x, y)
    strategies.STRATEGIES["er"] = FailsOnOneTask
    trainer.TRAIN_RETRIES, trainer.RETRY_BACKOFF_S = 1, 0.05
'''


def miro(*args, timeout=120):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=timeout)


def test_a_failing_task_is_reported_and_the_daemon_goes_on(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)
    prom = tmp_path / "miro.prom"
    path = os.pathsep.join(p for p in (str(tmp_path / "inject"), os.environ.get("PYTHONPATH")) if p)
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=1", "learning.strategy=er",
              f"daemon.metrics_file={prom}", "daemon.metrics_every_s=0.3",
              env={"PYTHONPATH": path, "MIRO_TEST_FAIL_TASK": "1"}).start()
    S = ["--socket", d.sock]
    try:
        rng = np.random.default_rng(0)
        for t in range(3):
            x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
            y = rng.choice([2 * t, 2 * t + 1], 60)
            np.savez(tmp_path / f"t{t}.npz", x=x, y=y)
            assert miro(*S, "ingest", str(tmp_path / f"t{t}.npz"), "--task", str(t)).returncode == 0
            t0 = time.monotonic()
            r = miro(*S, "task", "end", str(t), "--wait", "--json")
            if t == 1:  # promptly, with the cause, not a timeout
                assert r.returncode == 65 and time.monotonic() - t0 < 30, r.stderr
                assert "task 1 ended, but its training failed" in r.stderr and "injected failure" in r.stderr
                assert "Traceback" not in r.stderr
                r = miro(*S, "status", "--json")
                assert r.returncode == 70, r.stderr  # the status is still printed
                st = json.loads(r.stdout)
                assert st["health"] == "error" and st["failed_tasks"] == [1]
                assert "injected failure" in st["last_error"]["error"]
                r = miro(*S, "status")
                assert r.returncode == 70 and "health" in r.stdout and "failed tasks [1]" in r.stdout
            else:
                assert r.returncode == 0 and json.loads(r.stdout)["trained"], r.stderr
        tasks = json.loads(miro(*S, "task", "list", "--json").stdout)["tasks"]
        assert [t["state"] for t in tasks] == ["trained", "failed", "trained"]
        errors = [e for e in d.logs() if e["event"] == "error" and e.get("component") == "trainer"]
        assert [(e["task"], e["attempt"]) for e in errors] == [(1, 1), (1, 2)]  # once per attempt, bounded
        assert [e["task"] for e in d.logs() if e["event"] == "task_failed"] == [1]
        assert "Traceback" not in d.stderr()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "miro_failed_tasks 1.0" not in (prom.exists() and prom.read_text() or ""):
            time.sleep(0.1)
        text = prom.read_text()
        assert "miro_failed_tasks 1.0" in text and "miro_trainer_errors_total 2.0" in text
        assert "miro_trainer_healthy 0.0" in text
    finally:
        if d.alive():
            d.kill(signal.SIGTERM)
