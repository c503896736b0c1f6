"""The control CLI as a user runs it: real `miro` subprocesses against a real mirod."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from daemon_util import Mirod
from conftest import MIRO

from miro_runtime.daemon.config import ConfigError, default_toml, load
from miro_runtime.engine.streams import split_digits


def miro(*args, env=None, timeout=120):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_no_daemon_is_a_clear_message_and_exit_69(tmp_path):
    for cmd in (["status"], ["eval", "--json"], ["task", "list"], ["logs"], ["checkpoint"]):
        r = miro("--state-dir", str(tmp_path), *cmd)
        assert r.returncode == 69, (cmd, r.stderr)
        assert "no daemon answers on" in r.stderr and "Traceback" not in r.stderr
    r = miro("status", env={"MIRO_SOCKET": str(tmp_path / "x.sock")})
    assert r.returncode == 69 and str(tmp_path / "x.sock") in r.stderr


def test_control_commands_do_not_import_torch(tmp_path):
    code = ("import sys; from miro_runtime.cli.main import main\n"
            "try:\n    main(['--state-dir', sys.argv[1], 'status'])\nexcept SystemExit as e:\n    code = e.code\n"
            "assert 'torch' not in sys.modules and 'miro_runtime.engine' not in sys.modules, 'torch imported'\n"
            "print('exit', code)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "exit 69" in r.stdout, r.stderr


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("clid")
    d = Mirod(base / "s", "learning.online=false", "learning.epochs=2", "learning.strategy=er").start()
    yield d, base
    if d.alive():
        d.kill(signal.SIGTERM)


def test_ingest_task_eval_predict_logs_config_through_the_cli(daemon):
    d, base = daemon
    S = ["--socket", d.sock]
    st = split_digits(5, 0)
    for t in range(2):
        np.savez(base / f"t{t}.npz", x=st.train[t][0], y=st.train[t][1])
        np.savez(base / f"t{t}test.npz", x=st.test[t][0], y=st.test[t][1], split=np.array("test"))
        r = miro(*S, "ingest", str(base / f"t{t}.npz"), "--task", str(t), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["acked"] == len(st.train[t][1])
        assert miro(*S, "ingest", str(base / f"t{t}test.npz"), "--task", str(t)).returncode == 0
        r = miro(*S, "task", "end", str(t), "--wait", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["trained"], r.stderr
    r = miro(*S, "eval", "--json")
    ev = json.loads(r.stdout)
    assert set(ev) >= {"acc_matrix", "final_avg_acc", "forgetting", "bwt"} and len(ev["acc_matrix"]) == 2
    r = miro(*S, "eval")
    assert "Accuracy (%) on task j's classes" in r.stdout and "final average accuracy" in r.stdout
    r = miro(*S, "status", "--json")
    s = json.loads(r.stdout)
    for k in ("state", "current_task", "classes_seen", "memory", "flash", "energy", "miro", "last_acc", "uptime_s"):
        assert k in s, k
    assert s["energy"]["provenance"].startswith("estimated")
    r = miro(*S, "status")
    assert "classes seen" in r.stdout and "RAM memory" in r.stdout and "energy" in r.stdout
    tl = json.loads(miro(*S, "task", "list", "--json").stdout)["tasks"]
    assert [t["state"] for t in tl] == ["trained", "trained"]
    np.savez(base / "q.npz", x=st.test[1][0][:5])
    pr = json.loads(miro(*S, "predict", str(base / "q.npz"), "--json").stdout)
    assert len(pr["labels"]) == 5
    r = miro(*S, "logs", "--json", "--component", "engine", "--level", "info", "-n", "500")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines and all(x["component"] == "engine" and x["level"] in ("info", "warning", "error") for x in lines)
    assert any(x["event"] == "task_end" for x in lines)
    r = miro(*S, "logs", "--json", "--task", "1", "--since", "1h", "-n", "500")
    task1 = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and task1, r.stderr  # task 1 was ingested, ended and trained: it has events
    assert all(x.get("task") == 1 for x in task1) and any(x["event"] == "task_end" for x in task1), task1
    r = miro(*S, "config", "set", "learning.epochs", "3")
    assert r.returncode == 0 and "applied now" in r.stdout
    r = miro(*S, "config", "set", "learning.memory", "abc")
    assert r.returncode == 65 and "learning.memory" in r.stderr and "an integer" in r.stderr
    r = miro(*S, "config", "show", "--json")
    assert json.loads(r.stdout)["config"]["learning"]["epochs"] == 3
    r = miro("inspect", d.state_dir, "--json")  # the daemon's state dir, read-only while it writes
    assert r.returncode == 0 and json.loads(r.stdout)["namespaces"]["samples"]["records"] > 500
    r = miro("inspect", "--json", env={"MIRO_STATE_DIR": d.state_dir})  # found the way the control commands are
    assert r.returncode == 0 and json.loads(r.stdout)["namespaces"]["test"]["records"] > 100


def test_config_file_env_and_errors_name_the_key(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("[learning]\nmemory = 40\nstrategy = \"der\"\n[session]\nmax_classes = 50\n")
    c = load(str(f), str(tmp_path), env={"MIROD_LEARNING_EPOCHS": "3"})
    assert (c.learning.memory, c.learning.strategy, c.session.max_classes, c.learning.epochs) == (40, "der", 50, 3)
    for text, words in (("[learning]\nmemory = \"lots\"\n", ["learning.memory", "an integer"]),
                        ("[learning]\nswap_ratio = 2.0\n", ["swap ratio must lie in [0, 1]"]),
                        ("[learning]\nbogus = 1\n", ["unknown key 'learning.bogus'", "memory"]),
                        ("[daemon]\nsocket_mode = \"rwx\"\n", ["daemon.socket_mode"]),
                        ("[learning]\nsync_mode = \"fast\"\n", ["learning.sync_mode", "nosync"]),
                        ("[learning\n", ["not valid TOML"])):
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            load(str(f), str(tmp_path), env={})
        for w in words:
            assert w in str(e.value), (text, str(e.value))
    with pytest.raises(ConfigError) as e:
        load(None, str(tmp_path), env={"MIROD_SESSION_SNAPSHOT_EVERY": "0"})
    assert "session.snapshot_every" in str(e.value)
    assert "max_classes = 256" in default_toml() and "# (live)" in default_toml()
    r = miro("config", "show", "--defaults")
    assert r.returncode == 0 and "[learning]" in r.stdout and "strategy = \"carm\"" in r.stdout


def test_bad_daemon_config_exits_with_ex_config(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[learning]\nepochs = 0\n")
    r = subprocess.run([sys.executable, "-m", "miro_runtime.daemon", "--config", str(f), "--state-dir",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and "epochs" in r.stderr and "Traceback" not in r.stderr


def test_service_unit_prints(tmp_path):
    r = miro("service", "unit", "--group", "sensors")
    assert r.returncode == 0 and "Type=notify" in r.stdout and "Group=sensors" in r.stdout
    r = miro("service", "install", "--path", str(tmp_path / "mirod.service"), "--config", str(tmp_path / "mirod.toml"),
             "--exec", "/usr/bin/true", "--no-reload")
    assert r.returncode == 0 and (tmp_path / "mirod.service").exists()
    r = miro("service", "uninstall", "--path", str(tmp_path / "mirod.service"), "--no-reload")
    assert r.returncode == 0 and not (tmp_path / "mirod.service").exists()


def test_miro_profile_now_and_miro_decisions_at_task_ends(tmp_path):
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=2", "learning.miro=true",
              "learning.miro_rule=acc-per-joule", "learning.strategy=carm-sync").start()
    try:
        S = ["--socket", d.sock]
        r = miro(*S, "profile")
        assert r.returncode == 65 and "after the first task" in r.stderr
        st = split_digits(5, 0)
        with d.client() as c:
            c.ingest(0, "train", *st.train[0])
            c.ingest(0, "test", *st.test[0])
            c.call("task_end", task=0, wait=True)
            c.ingest(1, "train", *st.train[1])
        r = miro(*S, "profile", "--json", timeout=300)
        assert r.returncode == 0, r.stderr
        dec = json.loads(r.stdout)
        assert dec["task"] == 1 and dec["rule"] == "acc-per-joule" and dec["winner"].startswith("mem=")
        s = json.loads(miro(*S, "status", "--json").stdout)
        assert s["miro"]["knobs"] == dec["winner"] and s["miro"]["last_decision"]["task"] == 1
        decisions = [e for e in d.logs() if e["event"] == "miro_decision"]
        assert [e["task"] for e in decisions] == [0, 1] and all("candidates" in e for e in decisions)
    finally:
        d.kill(signal.SIGTERM)
