"""mirod on a state directory whose store metadata was altered (issue 26): it refuses to start with
EXIT_STATE and the store's message, and leaves data.mdb as it was (bytes and mtime)."""
import os
import shutil
import signal
import subprocess

from daemon_util import PY, Mirod
from lmdb_pages import databases, flip

from miro_runtime.daemon.process import EXIT_STATE
from miro_runtime.engine.streams import split_digits


def test_altered_metadata_is_a_refusal_that_writes_nothing(tmp_path):
    state = tmp_path / "s"
    d = Mirod(state, "learning.online=false", "learning.epochs=1", "learning.strategy=er").start()
    st = split_digits(5, 0)
    with d.client() as c:
        c.ingest(0, "train", st.train[0][0][:64], st.train[0][1][:64])
        c.call("task_end", task=0, wait=True)
    assert d.kill(signal.SIGTERM) == 0
    dbs = databases(str(state / "state" / "data.mdb"))
    labels = next(n for n in dbs["meta"][1] if n.key == b"user/live/labels")  # the client's label map
    spots = {"the label map's value": (labels.value_at + labels.value_size - 2, 1),
             "the label map's key": (labels.key_at + 6, 0),
             "the name 'samples.data' in LMDB's table": (dbs["samples.data"][0].key_at + 3, 2)}  # -> samtles
    for what, (off, bit) in spots.items():
        case = tmp_path / what.replace(" ", "_").replace("'", "")
        shutil.copytree(state, case)
        mdb = case / "state" / "data.mdb"
        flip(str(mdb), off, bit)
        before, mtime = mdb.read_bytes(), mdb.stat().st_mtime_ns
        r = subprocess.run([PY, "-m", "miro_runtime.daemon", "--state-dir", str(case),
                            "--socket", str(case / "m.sock")], capture_output=True, text=True, timeout=120)
        assert r.returncode == EXIT_STATE, (what, r.returncode, r.stderr[-2000:])
        assert "metadata is damaged" in r.stderr and "miro store verify" in r.stderr and "Traceback" not in r.stderr, \
            (what, r.stderr[-2000:])
        assert mdb.read_bytes() == before and mdb.stat().st_mtime_ns == mtime, f"{what}: data.mdb was modified"
        assert not os.path.exists(case / "m.sock")
