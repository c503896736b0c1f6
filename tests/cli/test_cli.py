"""`miro` as a user runs it: real subprocesses, real signals."""
import json
import signal
import subprocess

from conftest import MIRO, wait_for_event


def miro(*args, **kw):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)


def test_run_json_has_the_promised_fields(tmp_path):
    r = miro("run", "--stream", "split-digits", "--strategy", "carm", "--memory", "20", "--flash-budget", "2000",
             "--swap-ratio", "0.5", "--epochs", "1", "--seed", "0", "--json", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("final_avg_acc", "forgetting", "bwt", "acc_matrix", "train_samples_per_s", "peak_rss_mb", "wall_s",
              "config"):
        assert k in s, k
    assert s["config"]["memory"] == 20 and s["config"]["swap_ratio"] == 0.5
    assert s["stream"]["tasks"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_miro_reacts_to_this_machines_ram_under_a_floor(tmp_path):
    # a floor above any machine's RAM: the real monitor's reading is under it from the first step
    r = miro("run", "--miro", "--miro-rule", "acc-per-joule", "--miro-ram-floor-mb", "1e12", "--json",
             "--run-dir", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    react = [d for d in s["miro_decisions"] if d.get("mid_task")]
    assert len(react) == 1 and "ram" in react[0]["trigger"] and react[0]["resources"]["available_ram_mb"] > 0
    assert all(t["memory"]["capacity"] < 40 for t in s["per_task"])
    assert s["config"]["threads"] == 1 and s["config"]["miro_ram_floor_mb"] == 1e12


def test_readable_output_and_inspect(tmp_path):
    r = miro("run", "--strategy", "er", "--epochs", "1", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "Accuracy (%) on task j's classes" in r.stdout and "final average accuracy" in r.stdout
    assert "task 4 done" in r.stderr
    r = miro("inspect", str(tmp_path / "r"), "--json")
    assert r.returncode == 0, r.stderr
    ns = json.loads(r.stdout)["namespaces"]["samples"]
    assert ns["records"] > 1000 and ns["capacity"] == 2000


def test_bad_flags_are_clear_errors(tmp_path):
    from click.testing import CliRunner

    from miro_runtime.cli.main import main

    def run(*args):  # in-process: the CLI's own code and output, without a torch import per case
        r = CliRunner().invoke(main, list(args))
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception  # no unhandled error
        return r.exit_code, r.output
    code, out = run("run", "--swap-ratio", "2", "--run-dir", str(tmp_path / "a"))
    assert code != 0 and "swap ratio must lie in [0, 1], got 2.0" in out
    code, out = run("run", "--stream", "mnist", "--run-dir", str(tmp_path / "b"))
    assert code != 0 and "--data-dir" in out
    code, out = run("run", "--miro-battery-floor", "-1", "--run-dir", str(tmp_path / "c"))
    assert code != 0 and "miro_battery_floor must be >= 0, got -1.0" in out
    code, out = run("run", "--threads", "-2", "--run-dir", str(tmp_path / "d"))
    assert code != 0 and "threads must be >= 0" in out
    code, out = run("run", "--resume", "--run-dir", str(tmp_path / "none"))
    assert code != 0 and "no run to resume" in out
    r = miro("inspect", str(tmp_path / "none"))  # one real process: what a user's shell sees
    assert r.returncode != 0 and "no flash store" in r.stderr and "Traceback" not in r.stderr


def test_sigkill_then_resume_is_the_run_that_never_stopped(tmp_path):
    # carm-sync: async carm's swap groups depend on timing, so only the synchronous variant can be
    # held to the bit (every random stream continues from the checkpoint; test_engine has the why).
    # This is also carm-sync's case of test_kill_resume (README: er, der and carm-sync resume to the bit).
    args = ["run", "--strategy", "carm-sync", "--tasks", "3", "--epochs", "2", "--checkpoint-every", "10", "--json"]
    full = miro(*args, "--run-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    full = json.loads(full.stdout.strip().splitlines()[-1])

    run_dir = tmp_path / "killed"
    child = subprocess.Popen(MIRO + args + ["--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    events = run_dir / "events.jsonl"
    killed_at = wait_for_event(events,  # kill mid-task, after a mid-task checkpoint
                               lambda e: e["event"] == "checkpoint" and e["task"] >= 2 and e["batch"] > 0,
                               poll=0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert killed_at is not None and child.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()

    resumed = miro("run", "--resume", "--run-dir", str(run_dir), "--json")
    assert resumed.returncode == 0, resumed.stderr
    res = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert len(res["acc_matrix"]) == 3 and all(v is not None for v in res["acc_matrix"][2])
    kinds = [json.loads(line) for line in events.read_text().splitlines()]
    resume_ev = [e for e in kinds if e["event"] == "resume"][0]
    assert resume_ev["found_checkpoint"] and resume_ev["task"] >= 2
    # the task it resumed in reports its whole cost: what was metered before the restart, plus after
    rec = res["per_task"][resume_ev["task"]]
    before = rec["before_restart"]
    assert before["restarts"] == 1 and before["samples"] > 0 and before["wall_s"] > 0
    assert rec["energy_j"] > before["energy_j"] > 0 and rec["train_samples"] > before["samples"]
    assert all("before_restart" not in r for i, r in enumerate(res["per_task"]) if i != resume_ev["task"])
    # and the run's wall time spans both processes (tasks 0-1 ran in the killed one)
    assert res["wall_s"] >= sum(r["wall_s"] for r in res["per_task"])

    # the work between the checkpoint and the kill was redone exactly as it first ran
    assert res["acc_matrix"] == full["acc_matrix"], (res["final_avg_acc"], full["final_avg_acc"])
    assert res["steps"] == full["steps"]
