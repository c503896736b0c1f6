"""The inbox claims test_daemon.py's inbox test did not cover: an image folder dropped into the inbox
is ingested (its tasks ended) and moved to done/; and an .npz's identity survives a restart, so a
file that a kill left in the inbox after its samples were committed is not ingested again by the
next daemon (the state a SIGKILL between the commit and the move leaves, made on purpose: the same
file, name, size and mtime, back in the inbox after the restart)."""
import os
import shutil
import signal
import time

import numpy as np
from daemon_util import Mirod, samples


def wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_an_image_folder_in_the_inbox_is_ingested_and_moved_to_done(tmp_path):
    from PIL import Image
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    staging = tmp_path / "cam-day1"
    rng = np.random.default_rng(0)
    for c in ("2", "4"):  # one task of two classes
        (staging / "task0" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(staging / "task0" / c / f"{i}.png")
    d = Mirod(tmp_path / "s", f"daemon.inbox_dir={inbox}", "daemon.inbox_scan_s=0.2").start()
    try:
        os.replace(staging, inbox / "cam-day1")  # written elsewhere, renamed in
        assert wait_for(lambda: (inbox / "done" / "cam-day1").is_dir())
        assert not (inbox / "cam-day1").exists() and not list((inbox / "failed").iterdir())
        tasks = d.call("task_list")["tasks"]
        assert [t["classes"] for t in tasks] == [[2, 4]] and tasks[0]["state"] in ("ended", "trained")
        counters = d.call("status")["counters"]  # no test folder: 20% of each class is held out for testing
        assert counters["ingested_train"] == 16 and counters["ingested_test"] == 4
        ev = [e for e in d.logs() if e["event"] == "inbox_ingested"]
        assert len(ev) == 1 and ev[0]["result"]["tasks"] == [0]
    finally:
        d.kill(signal.SIGTERM)


def test_an_npz_committed_before_a_kill_is_not_ingested_again_after_the_restart(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = tmp_path / "s"
    sets = (f"daemon.inbox_dir={inbox}", "daemon.inbox_scan_s=0.2")
    d = Mirod(state, *sets).start()
    x, labels, _ = samples(0, 24)
    np.savez(tmp_path / "staging.npz", x=x, y=np.array(labels), task=np.array(0))
    os.replace(tmp_path / "staging.npz", inbox / "cam-0007.npz")
    assert wait_for(lambda: (inbox / "done" / "cam-0007.npz").exists())
    assert d.call("status")["counters"]["ingested_train"] == 24
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    # what a kill between the commit and the move leaves: the committed file still in the inbox
    shutil.copy2(inbox / "done" / "cam-0007.npz", tmp_path / "back.npz")  # copy2 keeps the mtime
    os.replace(tmp_path / "back.npz", inbox / "cam-0007.npz")
    d = Mirod(state, *sets).start()
    try:
        assert wait_for(lambda: not (inbox / "cam-0007.npz").exists())
        assert (inbox / "done" / "cam-0007.npz").exists()
        assert d.call("status")["flash"]["records"] == 24  # the store's own count: stored once, across the restart
        assert any(e["event"] == "inbox_ingested" and e["result"].get("already_ingested") for e in d.logs())
    finally:
        d.kill(signal.SIGTERM)


def test_an_entry_still_growing_waits_until_its_size_holds_still_across_two_scans(tmp_path):
    """A producer writing straight into the inbox (which README advises against): an image folder that
    gains files, then an .npz that gains bytes, faster than the scan interval are left alone while they
    grow -- nothing taken half-written, nothing failed -- and ingested whole once they hold still."""
    from PIL import Image
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = Mirod(tmp_path / "s", f"daemon.inbox_dir={inbox}", "daemon.inbox_scan_s=0.3").start()
    rng = np.random.default_rng(0)
    x, labels, _ = samples(0, 24)
    np.savez(tmp_path / "whole.npz", x=x, y=np.array(labels), task=np.array(1))
    blob = (tmp_path / "whole.npz").read_bytes()
    try:
        folder = inbox / "cam-grow" / "task0"
        for i in range(20):  # 20 x 0.1 s of writes: every scan sees a change
            for c in ("2", "4"):
                (folder / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / c / f"{i}.png")
            time.sleep(0.1)
            assert (inbox / "cam-grow").is_dir()  # not taken while it grows
        assert wait_for(lambda: (inbox / "done" / "cam-grow").is_dir())
        npz = inbox / "cam-grow.npz"
        with open(npz, "wb") as fh:
            for i in range(20):
                fh.write(blob[i * len(blob) // 20:(i + 1) * len(blob) // 20])
                fh.flush()
                time.sleep(0.1)
                assert npz.exists()  # not taken while it grows
        assert wait_for(lambda: (inbox / "done" / "cam-grow.npz").exists())
        assert not list((inbox / "failed").iterdir())  # nothing was read half-written
        ev = {os.path.basename(e["path"]): e["result"] for e in d.logs() if e["event"] == "inbox_ingested"}
        assert ev["cam-grow"]["acked"] == 40 and ev["cam-grow.npz"]["acked"] == 24  # every file, every byte
    finally:
        d.kill(signal.SIGTERM)
