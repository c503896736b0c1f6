"""The systemd unit for mirod: Type=notify with a watchdog, the directories systemd makes for it
(StateDirectory, RuntimeDirectory, LogsDirectory; mirod reads them from $STATE_DIRECTORY etc.),
and the hardening zeusd's unit shows, tightened to what a learner on a Unix socket needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Optional


def unit_file(user: Optional[str] = None, group: str = "miro", config: str = "/etc/miro/mirod.toml",
              exec_path: Optional[str] = None) -> str:
    exe = exec_path or shutil.which("mirod") or os.path.join(os.path.dirname(sys.executable), "mirod")
    who = f"User={user}\n" if user else "DynamicUser=yes\n"
    return f"""[Unit]
Description=miro-runtime: on-device continual learning daemon (CarM + Miro)
Documentation=https://example.invalid/miro-runtime
After=local-fs.target

[Service]
Type=notify
NotifyAccess=main
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
ProtectHome=yes
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


def install_unit(path: str, reload: bool = True, **kw) -> list:
    text = unit_file(**kw)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    out = [f"wrote {path}"]
    if reload and shutil.which("systemctl"):
        r = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
        out.append("systemctl daemon-reload: " + ("ok" if r.returncode == 0 else r.stderr.strip()))
    out.append("next: create the group (groupadd -r miro), add users who may read status to it, put a config at "
               "/etc/miro/mirod.toml (`miro config show --defaults`), then `systemctl enable --now mirod`")
    return out


def uninstall_unit(path: str, reload: bool = True) -> list:
    if not os.path.exists(path):
        return [f"no unit at {path}"]
    os.remove(path)
    out = [f"removed {path} (state in /var/lib/miro is kept)"]
    if reload and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
        out.append("systemctl daemon-reload: done")
    return out
