"""The CLI conventions people bring from systemctl and journalctl (issue: the first hour of a new user):
global flags after the subcommand, -h everywhere, `mirod --version`, exit codes in --help, a JSON
error object from --json commands, `miro logs` reading the log files when no daemon runs (with
journalctl's level spellings), and Ctrl-C ending `miro logs -f` quietly with exit 0."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from daemon_util import Mirod

MIRO = [sys.executable, "-m", "miro_runtime.cli"]


def miro(*args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if k not in ("MIRO_SOCKET", "MIRO_STATE_DIR")}
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=timeout, env={**e, **(env or {})})


@pytest.mark.parametrize("argv", [["status", "--state-dir", "{d}"], ["--state-dir", "{d}", "status"],
                                  ["status", "--state-dir={d}", "-v"], ["task", "list", "--state-dir", "{d}"],
                                  ["status", "--socket", "{d}/mirod.sock"]])
def test_global_flags_work_before_or_after_the_subcommand(tmp_path, argv):
    r = miro(*[a.format(d=tmp_path) for a in argv])
    assert r.returncode == 69, r.stderr  # not 2 (a usage error): the flag was taken, and no daemon is there
    assert f"no daemon answers on {tmp_path}/mirod.sock" in r.stderr


def test_help_everywhere_versions_and_exit_codes():
    top = miro("-h")
    assert top.returncode == 0 and "Usage: miro" in top.stdout and "69 no daemon answers" in top.stdout
    for argv in (["status", "-h"], ["task", "end", "-h"], ["logs", "-h"], ["config", "set", "-h"], ["run", "-h"]):
        r = miro(*argv)
        assert r.returncode == 0 and "Usage:" in r.stdout, (argv, r.stderr)
    v = subprocess.run([sys.executable, "-m", "miro_runtime.daemon", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("mirod (miro-runtime) ")


def test_json_commands_print_a_json_error_when_they_fail(tmp_path):
    r = miro("status", "--json", "--state-dir", str(tmp_path))
    assert r.returncode == 69
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 69 and "no daemon answers" in err["message"]
    assert r.stderr.startswith("miro: no daemon answers")  # and one line for a person


def test_logs_reads_the_files_when_no_daemon_runs(tmp_path):
    state = tmp_path / "s"
    d = Mirod(state).start()
    d.call("config_set", key="learning.epochs", value=3)
    assert d.kill(signal.SIGTERM) == 0
    logs_dir = state / "logs"
    (logs_dir / "mirod.jsonl.1").write_text(json.dumps({"ts": 1.0, "level": "warning", "component": "daemon",
                                                        "event": "older_rotated"}) + "\nnot json, cut by a kill\n")
    r = miro("logs", "--state-dir", str(state), "--json", "-n", "500")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    assert events[0] == "older_rotated" and "config_set" in events and events[-1] == "stopped"
    assert "no daemon is running; reading" in r.stderr
    warn = miro("logs", "--state-dir", str(state), "--json", "--level", "warn")
    assert [json.loads(line)["event"] for line in warn.stdout.splitlines()] == ["older_rotated"]
    none = miro("logs", "--state-dir", str(tmp_path / "never"))
    assert none.returncode == 69 and "no log file" in none.stderr


def _how_it_stands(pid: int) -> dict:
    """The process's signal masks, threads and kernel wait channel (/proc), for a hang's failure message."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            status = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
        with open(f"/proc/{pid}/wchan") as fh:
            wchan = fh.read()
        return {"state": status.get("State"), "SigBlk": status.get("SigBlk"), "SigIgn": status.get("SigIgn"),
                "SigCgt": status.get("SigCgt"), "threads": len(os.listdir(f"/proc/{pid}/task")), "wchan": wchan}
    except OSError as e:
        return {"gone": str(e)}


def test_ctrl_c_ends_logs_follow_quietly(tmp_path):
    d = Mirod(tmp_path / "s").start()
    try:
        p = subprocess.Popen(MIRO + ["logs", "-f", "--socket", d.sock], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the first answer is printed and it polls
        seen = _how_it_stands(p.pid)  # read before the signal: what a hang, if one comes, started from
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # one such hang was seen (once, under -n 2); say where it stood
            after = _how_it_stands(p.pid)
            p.kill()
            pytest.fail(f"`miro logs -f` did not end on SIGINT within 30 s; before: {seen}; after: {after}")
        assert p.returncode == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert "started" in out
    finally:
        d.kill(signal.SIGTERM)
