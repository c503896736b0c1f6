"""`miro service unit/install` (issue 20): a mirod the unit's ProtectHome= or PrivateTmp= would hide is
named with the directive and the fix (install refuses it and writes nothing), the unit has no
placeholder Documentation=, and the config file ExecStart names exists after install, with the
documented defaults, so a real mirod starts on it."""
import configparser
import os
import re
import shutil
import signal
import stat
import subprocess

import pytest
from conftest import MIRO
from daemon_util import Mirod

from miro_runtime.cli import service
from miro_runtime.daemon import unit
from miro_runtime.daemon.config import default_toml

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
TRUE = "/usr/bin/true"  # an executable outside every hidden directory (systemd-analyze verify wants one)


def miro(*args):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=120)


def script(path, interpreter: str):
    """A console script like pip's, whose '#!' names ``interpreter``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{interpreter}\nfrom miro_runtime.daemon.main import main\nmain()\n")
    path.chmod(0o755)
    return str(path)


def parse(text: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False, interpolation=None)  # SystemCallFilter= comes twice
    p.optionxform = str
    p.read_string(text)
    return p


def test_a_mirod_under_home_is_named_with_the_directive_and_the_fix():
    exe = "/home/alice/.venv/bin/mirod"
    problems = unit.check(exe)
    assert f"ExecStart {exe} is under /home, which ProtectHome=yes hides from the service" in problems
    assert f"ExecStart {exe} does not exist" in problems
    fix = unit.fix_for(problems)
    assert "--exec /opt/miro/bin/mirod" in fix and "--protect-home read-only with --user" in fix
    assert any("ProtectHome=tmpfs hides" in p for p in unit.check("/root/venv/bin/mirod", protect_home="tmpfs"))
    for where in ("/run/user/1000/mirod", "/root/mirod"):
        assert any("ProtectHome=yes" in p for p in unit.check(where))
    # read-only leaves /home visible; a nonexistent path is only "does not exist"
    assert unit.check(exe, protect_home="read-only", user="alice") == [f"ExecStart {exe} does not exist"]
    assert unit.check(exe, protect_home="no") == [f"ExecStart {exe} does not exist"]


def test_the_interpreter_a_script_names_is_checked_too(tmp_path):
    assert str(tmp_path).startswith("/tmp/")  # pytest's directories are under /tmp: PrivateTmp= hides them
    exe = script(tmp_path / "venv" / "bin" / "mirod", "/home/alice/.venv/bin/python")
    problems = unit.check(exe)
    assert f"ExecStart {exe} is under /tmp, which PrivateTmp=yes hides from the service" in problems
    assert ("ExecStart's interpreter /home/alice/.venv/bin/python is under /home, which ProtectHome=yes hides from "
            "the service") in problems
    assert "--protect-home" in unit.fix_for(problems)
    # pip's launcher for an interpreter path too long for '#!'
    long_py = "/home/alice/" + "x" * 130 + "/bin/python"
    (tmp_path / "long").write_text(f"#!/bin/sh\n'''exec' \"{long_py}\" \"$0\" \"$@\"\n' '''\nimport sys\n")
    assert any(f"interpreter {long_py} is under /home" in p for p in unit.check(str(tmp_path / "long")))
    # a link is followed: a virtualenv's python in /opt linking to a Python under /root is hidden all the same
    link = tmp_path / "python3"
    link.symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    exe = script(tmp_path / "opt" / "mirod", str(link))
    assert any(f"(a link to {os.path.realpath(link)}) is under /root" in p for p in unit.check(exe))
    # only PrivateTmp= is in the way: the fix does not offer the ProtectHome= options
    exe = script(tmp_path / "plain" / "mirod", TRUE)
    assert unit.check(exe) == [f"ExecStart {exe} is under /tmp, which PrivateTmp=yes hides from the service"]
    assert "--protect-home" not in unit.fix_for(unit.check(exe))


def test_read_only_home_names_a_directory_a_dynamic_user_cannot_enter(tmp_path, monkeypatch):
    home = tmp_path / "home"
    exe = script(home / "alice" / ".venv" / "bin" / "mirod", TRUE)
    os.chmod(home, 0o755)
    os.chmod(home / "alice", 0o700)
    monkeypatch.setattr(unit, "HOME_DIRS", (str(home),))  # a home directory of this test's own
    problems = unit.check(exe, protect_home="read-only")
    assert f"ExecStart {exe} is under {home / 'alice'} (mode 0700), which the unit's DynamicUser= cannot enter" \
        in problems
    assert not any("DynamicUser" in p for p in unit.check(exe, protect_home="read-only", user="alice"))
    os.chmod(home / "alice", 0o711)
    assert not any("DynamicUser" in p for p in unit.check(exe, protect_home="read-only"))


def test_install_refuses_a_hidden_mirod_with_the_fix_and_writes_nothing(tmp_path):
    exe = script(tmp_path / "venv" / "bin" / "mirod", "/home/alice/.venv/bin/python")
    path, cfg = tmp_path / "mirod.service", tmp_path / "etc" / "mirod.toml"
    r = miro("service", "install", "--path", str(path), "--config", str(cfg), "--exec", exe, "--no-reload")
    assert r.returncode == 78, r.stderr  # EX_CONFIG: the unit, as configured, would not start
    line, = r.stderr.splitlines()
    assert line.startswith("miro: service install: ExecStart ") and "PrivateTmp=yes" in line
    assert "ProtectHome=yes" in line and "; install miro-runtime where the service can see it" in line
    assert "--exec /opt/miro/bin/mirod" in line and "Traceback" not in r.stderr
    assert not path.exists() and not cfg.exists()
    # `unit` only prints: the unit on stdout, the same reason as a warning on stderr
    r = miro("service", "unit", "--exec", exe)
    assert r.returncode == 0 and f"ExecStart={exe} --config /etc/miro/mirod.toml" in r.stdout
    assert r.stderr.startswith("miro: warning: service unit: ExecStart ") and "PrivateTmp=yes" in r.stderr
    r = miro("service", "unit", "--exec", TRUE)
    assert r.returncode == 0 and r.stderr == ""


def test_install_cannot_write_is_one_line_not_a_traceback(tmp_path):
    path = tmp_path / "no-such-dir" / "mirod.service"
    r = miro("service", "install", "--path", str(path), "--config", str(tmp_path / "mirod.toml"), "--exec", TRUE,
             "--no-reload")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == (f"miro: service install: cannot write {path}: No such file or directory; pass --path and "
                        "--config where files can be written\n")


def test_install_writes_the_default_config_and_mirod_starts_on_it(tmp_path):
    path, cfg = tmp_path / "mirod.service", tmp_path / "etc" / "miro" / "mirod.toml"
    r = miro("service", "install", "--path", str(path), "--config", str(cfg), "--exec", TRUE, "--no-reload",
             "--group", "sensors")
    assert r.returncode == 0, r.stderr
    assert f"wrote {path}" in r.stdout and f"wrote {cfg}" in r.stdout and "groupadd -r sensors" in r.stdout
    assert cfg.read_text() == default_toml() and stat.S_IMODE(cfg.stat().st_mode) == 0o644
    svc = parse(path.read_text())["Service"]
    assert svc["ExecStart"] == f"{TRUE} --config {cfg}"
    d = Mirod(tmp_path / "s", config=cfg).start()  # what ExecStart runs, on what install wrote
    try:
        assert str(cfg) in d.call("config_show")["sources"]
    finally:
        assert d.kill(signal.SIGTERM) == 0
    # an existing file is the admin's: a second install keeps it
    cfg.write_text("[learning]\nepochs = 2\n")
    r = miro("service", "install", "--path", str(path), "--config", str(cfg), "--exec", TRUE, "--no-reload")
    assert r.returncode == 0 and f"kept {cfg}" in r.stdout and cfg.read_text() == "[learning]\nepochs = 2\n"
    r = miro("service", "uninstall", "--path", str(path), "--no-reload")
    assert r.returncode == 0 and not path.exists() and cfg.exists()


def test_the_unit_has_no_placeholder_and_the_cli_defaults_agree():
    text = unit.unit_file(exec_path=TRUE)
    p = parse(text)
    assert set(p.sections()) == {"Unit", "Service", "Install"}
    assert not re.search(r"example|\.invalid|placeholder|todo", text, re.IGNORECASE)
    docs = p["Unit"].get("Documentation")
    if docs is not None:  # a source checkout: its README; a wheel install has none, and no line
        assert docs.startswith("file:///") and os.path.isfile(docs[len("file://"):])
    assert p["Service"]["ProtectHome"] == "yes" and p["Service"]["PrivateTmp"] == "yes"
    assert parse(unit.unit_file(exec_path=TRUE, protect_home="read-only"))["Service"]["ProtectHome"] == "read-only"
    assert (service.DEFAULT_CONFIG, service.DEFAULT_UNIT_PATH, service.PROTECT_HOME) == \
        (unit.DEFAULT_CONFIG, unit.DEFAULT_UNIT_PATH, unit.PROTECT_HOME)


@needs_analyze
@pytest.mark.parametrize("protect_home,user", [("yes", None), ("read-only", "root")])
def test_systemd_analyze_verifies_the_unit(tmp_path, protect_home, user):
    f = tmp_path / "mirod.service"
    f.write_text(unit.unit_file(exec_path=TRUE, protect_home=protect_home, user=user))
    r = subprocess.run(["systemd-analyze", "verify", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
