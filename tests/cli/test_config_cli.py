"""`miro config` as a user runs it against a real mirod (issue 20): `show` prints valid TOML (the
daemon's own values, read back with tomllib), `show KEY` one value, `set KEY=VALUE` and `set KEY VALUE`
with negative numbers, `none` for unset, byte sizes with units, and `unset KEY`."""
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import MIRO
from daemon_util import Mirod

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def miro(d, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MIRO_SOCKET", "MIRO_STATE_DIR")}
    return subprocess.run(MIRO + list(args) + ["--state-dir", d.state_dir], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def daemon(tmp_path):
    f = tmp_path / "mirod.toml"
    f.write_text("[learning]\nepochs = 4\nmemory = 30\nmethod = {k = 3}\n")
    d = Mirod(tmp_path / "s", "kv.flash_bytes=128MiB", config=f).start()  # a unit in mirod --set too
    yield d
    if d.alive():
        assert d.kill(signal.SIGTERM) == 0


def test_config_show_is_toml_with_the_daemons_values(daemon):
    r = miro(daemon, "config", "show")
    assert r.returncode == 0, r.stderr
    shown = tomllib.loads(r.stdout)
    want = daemon.call("config_show")["config"]
    assert shown == {t: {k: v for k, v in keys.items() if v is not None} for t, keys in want.items()}
    assert want["learning"]["flash_budget"] is None and "# flash_budget = none (unset)" in r.stdout
    assert "None" not in r.stdout and "null" not in r.stdout and "epochs = 4 # (live)" in r.stdout
    assert want["kv"]["flash_bytes"] == 128 << 20
    one = miro(daemon, "config", "show", "learning.epochs")
    assert one.returncode == 0 and one.stdout == "learning.epochs = 4\n" and tomllib.loads(one.stdout) == \
        {"learning": {"epochs": 4}}
    one = miro(daemon, "config", "show", "learning.method", "--json")
    assert json.loads(one.stdout) == {"learning.method": {"k": 3}}
    bad = miro(daemon, "config", "show", "learning.nope")
    assert bad.returncode == 65 and "unknown key 'learning.nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_config_set_takes_key_equals_value_negatives_none_and_units(daemon):
    r = miro(daemon, "config", "set", "learning.epochs=3")
    assert r.returncode == 0 and r.stdout.startswith("learning.epochs = 3  (applied now;"), r.stdout + r.stderr
    r = miro(daemon, "config", "set", "learning.epochs", "2", "--json")
    assert json.loads(r.stdout)["value"] == 2 and daemon.call("config_show")["config"]["learning"]["epochs"] == 2
    for argv in (["learning.lr", "-0.1"], ["learning.lr=-0.1"]):  # a value, not an option: the config refuses it
        r = miro(daemon, "config", "set", *argv)
        assert r.returncode == 65 and "learning rate must be > 0, got -0.1" in r.stderr, (argv, r.stderr)
        assert "no such option" not in r.stderr.lower()
    r = miro(daemon, "config", "set", "learning.flash_budget", "none")
    assert r.returncode == 0 and r.stdout.startswith("# learning.flash_budget = none (unset)"), r.stdout
    assert "None" not in open(os.path.join(daemon.state_dir, "overrides.toml")).read()
    r = miro(daemon, "config", "set", "kv.ram_bytes=64MiB", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["value"] == 64 << 20
    assert daemon.call("config_show")["config"]["kv"]["ram_bytes"] == 64 << 20
    r = miro(daemon, "config", "set", "kv.flash_bytes", "10MiX")
    assert r.returncode == 65 and "kv.flash_bytes" in r.stderr and "unknown unit 'MiX'" in r.stderr, r.stderr
    assert miro(daemon, "config", "set", "learning.epochs").returncode == 2  # no value: a usage error


def test_config_unset_restores_the_file_value_live_or_after_a_restart(daemon):
    ov = os.path.join(daemon.state_dir, "overrides.toml")
    assert miro(daemon, "config", "set", "learning.epochs=2").returncode == 0
    assert miro(daemon, "config", "set", "learning.memory=40").returncode == 0  # not live: after a restart
    r = miro(daemon, "config", "unset", "learning.epochs", "--json")
    out = json.loads(r.stdout)
    assert out["removed"] and out["value"] == 4 and out["applied_live"] and not out["restart_needed"]
    assert daemon.call("config_show")["config"]["learning"]["epochs"] == 4
    with open(ov, "rb") as fh:
        assert tomllib.load(fh) == {"learning": {"memory": 40}}
    daemon.kill(signal.SIGTERM)
    daemon.start()
    assert daemon.call("config_show")["config"]["learning"]["memory"] == 40
    r = miro(daemon, "config", "unset", "learning.memory")
    assert r.returncode == 0 and "learning.memory = 30" in r.stdout and "after a restart" in r.stdout, r.stdout
    with open(ov, "rb") as fh:
        assert tomllib.load(fh) == {}
    r = miro(daemon, "config", "unset", "learning.memory", "--json")
    assert json.loads(r.stdout)["removed"] is False
    r = miro(daemon, "config", "unset", "kv.nope")
    assert r.returncode == 65 and "unknown key 'kv.nope'" in r.stderr


def test_config_reload_answers_in_toml_and_a_bad_file_is_a_refusal(daemon, tmp_path):
    f = tmp_path / "mirod.toml"
    f.write_text("[learning]\nepochs = 6\nmemory = 31\nmethod = {k = 3}\n")
    r = miro(daemon, "config", "reload")
    assert r.returncode == 0, r.stderr
    assert "# applied now: 1\nlearning.epochs = 6\n" in r.stdout and "learning.memory = 31" in r.stdout, r.stdout
    assert "{'" not in r.stdout and "None" not in r.stdout
    f.write_text('[learning]\nepochs = 0\nmemory = "x"\n')
    r = miro(daemon, "config", "reload", "--json")
    assert r.returncode == 65 and "learning.memory" in r.stderr and "epochs must be >= 1" in r.stderr, r.stderr
    assert json.loads(r.stdout)["error"]["exit_code"] == 65
    assert daemon.call("config_show")["config"]["learning"]["epochs"] == 6
