"""The energy budget through a real mirod (issue 21): `budget_set` over the socket is adopted by the
trainer within a step and its guard ends the task early (the task's record says so, the log has the
guard's line); a read-only peer may read the budget but not set it; `status` shows the budget, what
was spent by kind (predict and KV requests included), renders it for a person and exports it to
Prometheus; `miro config set learning.energy_budget_j` and `miro budget set` persist across a
restart. The estimate meter (process CPU time) meters every window, so the joules are real and
nonzero wherever work was done."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from conftest import MIRO
from daemon_util import Mirod, client_for_other_users, samples, socket_dir
from test_prometheus import check_conventions, value

from miro_runtime.cli.render import status_lines
from miro_runtime.daemon.prometheus import exposition, families
from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import DaemonError

NOBODY = 65534
EPOCH_MODE = ("learning.online=false", "learning.strategy=er", "learning.energy_source=estimate")
MANY_EPOCHS = 400  # far more training than the test waits for: only the guard ends the task in time
WAIT_S = 50


def miro(d, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MIRO_SOCKET", "MIRO_STATE_DIR")}
    return subprocess.run(MIRO + list(args) + ["--socket", d.sock], capture_output=True, text=True, timeout=120,
                          env=env)


def row(lines, label):
    hit = [ln[16:] for ln in lines if ln[:16].strip() == label]
    assert len(hit) == 1, (label, lines)
    return hit[0]


def test_a_budget_set_over_the_socket_stops_the_training_task_within_a_step(tmp_path):
    d = Mirod(tmp_path / "s", *EPOCH_MODE, f"learning.epochs={MANY_EPOCHS}").start()
    try:
        with d.client() as c:
            c.ingest(0, "train", *samples(0, 64)[:2])
            c.ingest(0, "test", *samples(64, 16)[:2])
            assert c.call("status")["budget"] is None  # no budget set: the key is there, empty
        ended = {}
        waiter = threading.Thread(target=lambda: ended.update(d.call("task_end", task=0, wait=True, timeout=WAIT_S)))
        waiter.start()
        with d.client() as c:
            t0 = time.monotonic()
            while (c.call("status")["progress"] or {}).get("done", 0) < 5:  # training, a few steps in
                assert time.monotonic() - t0 < WAIT_S, "task 0 never started training"
                time.sleep(0.02)
            res = c.call("budget_set", energy_j=1e-3)  # already spent: the next step is refused
            assert res["set"] == {"learning.energy_budget_j": 1e-3, "learning.power_budget_w": None}
            assert res["applies"] == "from the next training step"
        waiter.join(WAIT_S + 10)
        assert ended.get("trained") is True, ended
        rec = ended["budget"]
        assert rec["guard_tripped"] is True and rec["mode"] == "task" and rec["task_j"] == 1e-3, rec
        assert rec["spent_j"]["train"] > 1e-3
        with d.client() as c:
            listed = c.call("task_list")["tasks"][0]
            st = c.call("status")
        assert listed["budget"]["guard_tripped"] is True
        assert st["budget"]["guard_trips"] == [0] and st["budget"]["task_j"] == 1e-3
        assert st["steps"] < MANY_EPOCHS * 4  # 64 samples are 4 steps an epoch: it stopped far short
        logs = d.logs()
        guard = [e for e in logs if e["event"] == "budget_guard"]
        assert len(guard) == 1 and guard[0]["task"] == 0 and guard[0]["remaining_j"] <= 0, guard
        changed = next(e for e in logs if e["event"] == "budget_changed")
        assert changed["new"]["task_j"] == 1e-3 and changed["old"]["task_j"] is None
        asked = next(e for e in logs if e["event"] == "budget_set")
        assert asked["component"] == "daemon" and asked["energy_budget_j"] == 1e-3
        # what budget_set wrote, SIGHUP reads back as it is: nothing changes, nothing needs a restart
        with d.client() as c:
            assert c.call("config_reload") == {"applied": {}, "restart_needed": {}}
            with pytest.raises(DaemonError) as bad:
                c.call("budget_set", energy_j=5, power_w=2)
            assert bad.value.code == P.INVALID_PARAMS and "give one of energy_j" in bad.value.message
            with pytest.raises(DaemonError) as bad:
                c.call("budget_set", energy=5)  # a misspelt parameter is named, not ignored
            assert bad.value.code == P.INVALID_PARAMS and "energy" in bad.value.message
    finally:
        d.kill(signal.SIGTERM)


CALL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from miro_runtime.wire.client import Client, DaemonError
out = {}
for m, params in (("budget_set", {"energy_j": 5.0}), ("budget_show", {})):
    with Client(sys.argv[2]) as c:
        try:
            out[m] = c.call(m, **params)
        except DaemonError as e:
            out[m] = [e.code, e.message]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as a second uid")
def test_a_read_only_peer_may_read_the_budget_but_not_set_it(tmp_path):
    sdir = socket_dir()
    sock = os.path.join(sdir, "mirod.sock")
    d = Mirod(tmp_path / "s", f"daemon.socket_group={NOBODY}", "learning.power_budget_w=2", sock=sock).start()
    try:
        py, pkg_root = client_for_other_users(sdir)
        r = subprocess.run([py, "-c", CALL, pkg_root, sock], capture_output=True, text=True, timeout=120,
                           user=NOBODY, group=NOBODY, cwd=sdir)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        code, message = out["budget_set"]
        assert code == P.PERMISSION_DENIED and f"uid {NOBODY}" in message and "budget_set" in message
        shown = out["budget_show"]
        assert shown["config"]["learning.power_budget_w"] == 2.0 and shown["budget"]["mode"] == "power"
        assert d.call("config_show")["config"]["learning"]["energy_budget_j"] is None  # nothing was set
        assert [e["method"] for e in d.logs() if e["event"] == "peer_refused"] == ["budget_set"]
    finally:
        d.kill(signal.SIGTERM)
        shutil.rmtree(sdir, ignore_errors=True)


def test_status_shows_the_budget_and_what_each_kind_of_work_spent(tmp_path):
    d = Mirod(tmp_path / "s", *EPOCH_MODE, "learning.epochs=1", "learning.energy_budget_j=1000").start()
    try:
        with d.client() as c:
            c.ingest(0, "train", *samples(0, 48)[:2])
            c.ingest(0, "test", *samples(48, 16)[:2])
            c.call("task_end", task=0, wait=True)
            c.ingest(1, "train", *samples(64, 16)[:2])  # task 1 open: requests are booked on it
            before = c.call("status")["budget"]
            c.predict(samples(0, 32)[0])
            after = c.call("status")["budget"]
            c.call("kv_generate", prompt="the budget counts every joule", max_new_tokens=4)
            kv = c.call("status")["budget"]
        assert before["spent_j"]["predict"] == 0 and after["spent_j"]["predict"] > 0, after
        assert after["spent_j"]["kv"] == 0 and kv["spent_j"]["kv"] > 0, kv
        assert after["spent_j"]["train"] > 0 and after["spent_j"]["eval"] > 0
        assert after["task"] == 1 and after["task_spent_j"] == pytest.approx(after["spent_j"]["predict"], abs=1e-5)
        assert kv["task_spent_j"] == pytest.approx(kv["spent_j"]["predict"] + kv["spent_j"]["kv"], abs=1e-5)
        after = kv
        assert after["remaining_j"] == pytest.approx(1000 - after["task_spent_j"])
        assert after["guard_trips"] == [] and after["pending"] is None and after["forecast_j"] is None
        r = miro(d, "status")
        assert r.returncode == 0, r.stderr
        line = row(r.stdout.splitlines(), "budget")
        assert line.startswith("1000.0 J per task; task 1: ") and "forecast -" in line, line
        assert all(f"{k} " in line for k in ("train", "eval", "predict", "kv")) and "None" not in r.stdout
        st = json.loads(miro(d, "status", "--json").stdout)
        assert line == row(status_lines(st), "budget")
        # the Prometheus export of the same status: conventional names, the budget's figures
        types, exported = check_conventions(exposition(families(st, 1.0, {})))
        assert value(exported, "miro_energy_budget_joules", '{mode="task"}') == 1000.0
        assert value(exported, "miro_energy_budget_remaining_joules", '{mode="task"}') == st["budget"]["remaining_j"]
        assert value(exported, "miro_budget_guard_trips_total") == 0 and types["miro_budget_guard_trips_total"] == \
            "counter"
        assert value(exported, "miro_energy_budget_spent_joules", '{kind="predict"}') == after["spent_j"]["predict"]
        shown = miro(d, "budget", "show")
        assert shown.returncode == 0 and shown.stdout.startswith("1000.0 J per task; task 1: "), shown.stderr
        # a change while no task trains waits for the next step, and says so
        r = miro(d, "budget", "set", "--power", "3", "--bucket-s", "10")
        assert r.returncode == 0 and "from the next step: 3 W average (bucket 10.0 s)" in r.stdout, r.stdout
        r = miro(d, "budget", "set", "--energy", "5", "--none")
        assert r.returncode == 2 and "give one of --energy J" in r.stderr
    finally:
        d.kill(signal.SIGTERM)


def test_a_budget_set_by_config_set_or_budget_set_survives_a_restart(tmp_path):
    d = Mirod(tmp_path / "s").start()
    try:
        r = miro(d, "config", "set", "learning.energy_budget_j=5")
        assert r.returncode == 0 and "(applied now;" in r.stdout, r.stdout + r.stderr
        assert miro(d, "config", "show", "learning.energy_budget_j").stdout == "learning.energy_budget_j = 5.0\n"
        assert d.call("status")["budget"]["task_j"] == 5.0
        r = miro(d, "config", "set", "learning.power_budget_w=2")  # not both: refused, nothing kept
        assert r.returncode == 65 and "not both" in r.stderr, r.stderr
        assert d.kill(signal.SIGTERM) == 0
        d = Mirod(tmp_path / "s").start()
        assert miro(d, "config", "show", "learning.energy_budget_j").stdout == "learning.energy_budget_j = 5.0\n"
        assert d.call("status")["budget"]["task_j"] == 5.0
        r = miro(d, "budget", "set", "--power", "2", "--json")  # from an energy to a power budget in one change
        assert r.returncode == 0 and json.loads(r.stdout)["set"]["learning.energy_budget_j"] is None, r.stderr
        assert d.kill(signal.SIGTERM) == 0
        d = Mirod(tmp_path / "s").start()
        cfg = d.call("config_show")["config"]["learning"]
        assert (cfg["energy_budget_j"], cfg["power_budget_w"]) == (None, 2.0)
        shown = json.loads(miro(d, "budget", "show", "--json").stdout)
        assert shown["budget"]["mode"] == "power" and shown["budget"]["bucket_j"] == 120.0
        assert miro(d, "budget", "set", "--none").returncode == 0 and d.call("status")["budget"] is None
    finally:
        if d.alive():
            d.kill(signal.SIGTERM)
