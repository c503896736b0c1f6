"""Where the meters and the monitor read sysfs: ``/sys``, or a recorded tree laid out the same way
under ``$MIRO_SYSFS_ROOT`` (a board's capture when a meter misbehaves there, the fixture trees of
the tests). Resolved when a meter or monitor opens, so the variable applies to a whole process
(`miro run`, mirod) without any other setting."""

from __future__ import annotations

import os

SYSFS_ROOT_ENV = "MIRO_SYSFS_ROOT"


def sysfs(path: str) -> str:
    """``path`` (absolute, under /sys) as this process reads it."""
    root = os.environ.get(SYSFS_ROOT_ENV)
    return os.path.join(root, path.lstrip("/")) if root else path
