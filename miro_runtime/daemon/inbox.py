"""The inbox: mirod ingests what producers drop into ``daemon.inbox_dir``, ``*.npz`` files and
image folders, once their size held still across two scans (a producer should write elsewhere and
rename in). Done ones move to done/, bad ones to failed/ with a ``.reason.txt`` beside them. An
.npz file is one batch whose batch id is its content (sha256 and sample range, files.file_batch_id),
committed with its samples, so a kill between storing it and moving it never ingests it twice (nor
does the same file dropped in again, under any name); an image folder is several commits and may
be, after a kill.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable, Optional

from miro_runtime.daemon.config import DaemonConfig
from miro_runtime.daemon.server import protocol_error
from miro_runtime.log import EventLog

DONE, FAILED = "done", "failed"  # where a file goes once ingested, or refused


class Inbox:
    """Scans the inbox every ``daemon.inbox_scan_s`` (live) and hands settled entries to ``ingest``
    (blocking, run in ``pool``: ``ingest(path)``, which names an .npz's batch by its content)."""

    def __init__(self, cfg: DaemonConfig, log_: EventLog, pool, ingest: Callable[..., dict]):
        self.cfg, self.log, self.pool, self.ingest = cfg, log_, pool, ingest

    async def run(self):
        d = self.cfg.daemon
        if not d.inbox_dir:
            return
        import aiofiles.os
        inbox = os.path.abspath(d.inbox_dir)
        for sub in (DONE, FAILED):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        seen: dict = {}  # name -> its signature at the last scan
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(d.inbox_scan_s)
            try:
                names = sorted(await aiofiles.os.listdir(inbox))
            except OSError as e:
                self.log.event("inbox_failed", component="inbox", error=str(e))
                continue
            for name in names:
                p = os.path.join(inbox, name)
                if name.startswith(".") or name in (DONE, FAILED) or \
                        not (name.endswith(".npz") or os.path.isdir(p)):
                    continue
                sig = await loop.run_in_executor(self.pool, signature, p)
                if sig is None or seen.get(name) != sig:  # still being written, new, or gone: look again
                    seen[name] = sig
                    continue
                seen.pop(name, None)
                await self._take(inbox, name)

    async def _take(self, inbox: str, name: str):
        import aiofiles
        import aiofiles.os
        p = os.path.join(inbox, name)
        try:  # an .npz is ingested exactly once: its batch id (its content) is committed with its samples
            res = await asyncio.get_running_loop().run_in_executor(self.pool, self.ingest, p)
            if res.get("duplicate"):  # committed before a kill cut the move short: nothing stored now
                res = {**res, "already_ingested": True}
            dest = os.path.join(inbox, DONE, name)
            self.log.event("inbox_ingested", component="inbox", path=p, result=res)
        except Exception as e:
            err = protocol_error(e)  # what a client would have been told; a bug keeps its type's name
            why = err.message if err is not None else f"{type(e).__name__}: {e}"
            dest = os.path.join(inbox, FAILED, name)
            self.log.event("inbox_failed", component="inbox", path=p, error=why)
            async with aiofiles.open(dest + ".reason.txt", "w") as fh:
                await fh.write(why + "\n")
        await aiofiles.os.replace(p, dest)


def signature(path: str) -> Optional[tuple]:
    """What changes while a producer writes: (files, bytes) of a folder, (size, mtime) of a file."""
    if os.path.isdir(path):
        tot, n = 0, 0
        for root, _, files in os.walk(path):
            for f in files:
                try:
                    tot += os.path.getsize(os.path.join(root, f))
                    n += 1
                except OSError:
                    pass
        return (n, tot)
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return None
