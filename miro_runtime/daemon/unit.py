"""The systemd unit for mirod: Type=notify with a watchdog, the directories systemd makes for it
(StateDirectory, RuntimeDirectory, LogsDirectory; mirod reads them from $STATE_DIRECTORY etc.),
and the hardening zeusd's unit shows, tightened to what a learner on a Unix socket needs.

That hardening hides parts of the file system from the service: ProtectHome= hides /home, /root and
/run/user, PrivateTmp= gives it an empty /tmp and /var/tmp. A mirod installed there (a virtualenv in a
home directory, or one whose Python is pyenv's or uv's under ~) cannot start under the unit, so
``check`` finds every file mirod needs at start that the unit would hide, and ``install`` refuses
such a unit with the fix instead of writing one that fails with status 203/EXEC."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from typing import Optional

from miro_runtime.daemon.config import default_toml

DEFAULT_CONFIG = "/etc/miro/mirod.toml"
DEFAULT_UNIT_PATH = "/etc/systemd/system/mirod.service"
UNIT_MODE = 0o644  # what systemctl and the admin's tools expect of a unit file
# ProtectHome= values (systemd.exec(5)): yes and tmpfs hide the home directories (tmpfs mounts an empty,
# read-only file system over them); read-only leaves them visible, read-only; no leaves them alone
PROTECT_HOME = ("yes", "tmpfs", "read-only", "no")
HIDING_HOME = ("yes", "tmpfs")
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")  # PrivateTmp=yes: the service sees empty ones of its own
# pip's launcher for an interpreter path too long for '#!': a /bin/sh line, then '''exec' "<python>" "$0" "$@"
LONG_SHEBANG = re.compile(r"""^'''exec' "?([^"\s]+)""", re.MULTILINE)
SHEBANG_READ_BYTES = 1024


class UnitProblem(Exception):
    """A unit that would not start as it is: the message says why, ``fix`` what to do."""

    def __init__(self, why: str, fix: str):
        super().__init__(why)
        self.why, self.fix = why, fix


def default_exec() -> str:
    """This installation's mirod: the one beside the running interpreter (its virtualenv), else PATH's."""
    here = os.path.join(os.path.dirname(sys.executable), "mirod")
    return here if os.path.exists(here) else shutil.which("mirod") or here


def documentation() -> Optional[str]:
    """Documentation=: the README of the checkout this package runs from (a source or editable install),
    as a file: URL; None when it is not there (a wheel installs no README), and the unit has no such line."""
    import miro_runtime
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(miro_runtime.__file__))), "README.md")
    return f"file://{readme}" if os.path.isfile(readme) else None


def unit_file(user: Optional[str] = None, group: str = "miro", config: str = DEFAULT_CONFIG,
              exec_path: Optional[str] = None, protect_home: str = "yes") -> str:
    exe = exec_path or default_exec()
    who = f"User={user}\n" if user else "DynamicUser=yes\n"
    docs = documentation()
    docs_line = f"Documentation={docs}\n" if docs else ""
    return f"""[Unit]
Description=miro-runtime: on-device continual learning daemon (CarM + Miro)
{docs_line}After=local-fs.target

[Service]
Type=notify
NotifyAccess=main
# mirod refuses a --config file that does not exist: `miro service install` writes the documented
# defaults there when it is absent (the same text as `miro config show --defaults`)
ExecStart={exe} --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
WatchdogSec=30
TimeoutStopSec=30
{who}Group={group}
SupplementaryGroups={group}
StateDirectory=miro
RuntimeDirectory=miro
LogsDirectory=miro
StateDirectoryMode=0750
RuntimeDirectoryMode=0750
UMask=0007
Environment=PYTHONUNBUFFERED=1

# hardening: a learner that talks only over a Unix socket and writes only its own directories
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
PrivateUsers=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=no
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
IPAddressDeny=any
DevicePolicy=closed
KeyringMode=private

[Install]
WantedBy=multi-user.target
"""


def _interpreter(exe: str) -> Optional[str]:
    """The interpreter a script's '#!' line (or pip's long-path launcher) names; None for a binary,
    an unreadable file, or '#!/usr/bin/env python' (PATH decides, not the file)."""
    try:
        with open(exe, "rb") as fh:
            head = fh.read(SHEBANG_READ_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    if not head.startswith("#!"):
        return None
    first = head[2:].split("\n", 1)[0].split()
    if first and first[0] in ("/bin/sh", "/usr/bin/sh"):
        m = LONG_SHEBANG.search(head)
        return m.group(1) if m else None
    return first[0] if first and os.path.basename(first[0]) != "env" else None


def needed_files(exe: str, this_install: bool) -> list:
    """(label, path) of each file mirod needs to start: ExecStart, the interpreter it names and the file
    that resolves to (a virtualenv's python is a link to pyenv's, uv's or the system's); with this
    installation's package directory when ExecStart is this installation's mirod (an editable install
    runs its checkout's source). The label names the file as a message shows it."""
    def with_link(what: str, path: str) -> list:
        real = os.path.realpath(path)
        return [(f"{what} {path}", path)] + ([(f"{what} {path} (a link to {real})", real)] if real != path else [])
    out = with_link("ExecStart", exe)
    interp = _interpreter(exe)
    if interp:
        out += with_link("ExecStart's interpreter", interp)
    if this_install:
        import miro_runtime
        pkg = os.path.dirname(os.path.realpath(miro_runtime.__file__))
        out.append((f"the miro_runtime package {pkg}", pkg))
    return out


def _under(path: str, roots) -> Optional[str]:
    return next((r for r in roots if path == r or path.startswith(r + "/")), None)


def _closed_to_others(path: str, root: str) -> Optional[str]:
    """The first directory from ``root`` down to ``path`` that users other than its owner and group
    cannot enter (no o+x): a DynamicUser= is such an other user."""
    d, chain = os.path.dirname(path), []
    while _under(d, (root,)):
        chain.append(d)
        d = os.path.dirname(d)
    for d in reversed(chain):  # from the top: the first closed one is the one to name
        try:
            mode = os.stat(d).st_mode
        except OSError:
            return None  # not there: the existence check names the file
        if not mode & stat.S_IXOTH:
            return f"{d} (mode {stat.S_IMODE(mode):04o})"
    return None


def check(exe: Optional[str] = None, protect_home: str = "yes", user: Optional[str] = None) -> list:
    """Why the unit would not start mirod: one line per file it needs that the unit hides or closes
    (empty when nothing is in the way)."""
    this_install = exe is None
    exe = exe or default_exec()
    problems = [] if os.path.exists(exe) else [f"ExecStart {exe} does not exist"]
    for label, path in needed_files(exe, this_install):
        home, tmp = _under(path, HOME_DIRS), _under(path, TMP_DIRS)
        if home and protect_home in HIDING_HOME:
            problems.append(f"{label} is under {home}, which ProtectHome={protect_home} hides from the service")
        elif home and protect_home == "read-only" and user is None:
            closed = _closed_to_others(path, home)
            if closed:
                problems.append(f"{label} is under {closed}, which the unit's DynamicUser= cannot enter")
        if tmp:
            problems.append(f"{label} is under {tmp}, which PrivateTmp=yes hides from the service")
    return problems


def fix_for(problems: list) -> str:
    """What to do about ``check``'s problems: install where the unit sees it; for the home directories
    only, the options that relax ProtectHome= instead."""
    fix = ("install miro-runtime where the service can see it, with a Python that is not under /home, /root, "
           "/run/user or /tmp either (e.g. python3 -m venv /opt/miro && /opt/miro/bin/pip install <miro-runtime>) "
           "and pass --exec /opt/miro/bin/mirod")
    if any("ProtectHome=" in p or "DynamicUser=" in p for p in problems):
        fix += ", or pass --protect-home read-only with --user <a user who may read those files>"
    return fix


def write_default_config(path: str) -> Optional[str]:
    """The documented defaults (``default_toml``) at ``path`` when no file is there, so the unit's
    ExecStart --config names a file that exists (mirod refuses a missing one: a typo in a path must not
    start a daemon on defaults by surprise). An existing file is the admin's and is left alone."""
    if os.path.exists(path):
        return None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    _write(path, default_toml(), 0o644)  # no secrets in it, and the service's DynamicUser= must read it
    return path


def _write(path: str, text: str, mode: int):
    """``text`` at ``path`` through a temp file and a rename; an OSError names ``path`` (not the temp file)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(e.errno, e.strerror, path) from None  # OSError picks the subclass: PermissionError stays one


def install_unit(path: str, reload: bool = True, user: Optional[str] = None, group: str = "miro",
                 config: str = DEFAULT_CONFIG, exec_path: Optional[str] = None, protect_home: str = "yes") -> list:
    """Write the unit (and the default config when there is none), or raise UnitProblem when it would
    not start; an OSError when a file cannot be written. The lines to show the user."""
    problems = check(exec_path, protect_home, user)
    if problems:
        raise UnitProblem(", and ".join(problems), fix_for(problems))
    text = unit_file(user=user, group=group, config=config, exec_path=exec_path, protect_home=protect_home)
    wrote_config = write_default_config(config)
    _write(path, text, UNIT_MODE)
    out = [f"wrote {path}"]
    out.append(f"wrote {config}: the default configuration, every key documented" if wrote_config else
               f"kept {config} (already there)")
    if reload and shutil.which("systemctl"):
        r = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
        out.append("systemctl daemon-reload: " + ("ok" if r.returncode == 0 else r.stderr.strip()))
    out.append(f"next: create the group (groupadd -r {group}), add users who may read status to it, then "
               "`systemctl enable --now mirod`")
    return out


def uninstall_unit(path: str, reload: bool = True) -> list:
    if not os.path.exists(path):
        return [f"no unit at {path}"]
    os.remove(path)
    out = [f"removed {path} (state in /var/lib/miro and the config file are kept)"]
    if reload and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
        out.append("systemctl daemon-reload: done")
    return out
