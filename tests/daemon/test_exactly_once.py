"""Exactly-once ingest (issue 20): a batch id is committed with its batch, so a daemon killed between
the commit and the acknowledgement (MIRO_FAULT=after_ingest_commit, a test-only hook) answers the
client's resend with the original acknowledgement and ``duplicate: true``, and the store holds the
batch once. Without a batch id the same resend is stored again: the id is what makes it exactly-once.
Also: labels are integers or refused by name (the wire, and `miro ingest` on an .npz), and
`miro ingest` names its batches by the file's content, so sending a file twice stores it once."""
import base64
import json
import signal
import subprocess

import numpy as np
import pytest
from conftest import MIRO
from daemon_util import Mirod, samples

from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import DaemonError

FIELDS = ("acked", "task", "split", "first_id", "stored", "evicted", "new_classes")


def miro(*args):
    return subprocess.run(MIRO + list(args), capture_output=True, text=True, timeout=120)


def test_a_kill_between_commit_and_ack_then_a_resend_stores_the_batch_once(tmp_path):
    state = tmp_path / "s"
    x, labels, _ = samples(0, 16)
    d = Mirod(state, "learning.strategy=er", env={"MIRO_FAULT": "after_ingest_commit"}).start()
    with d.client() as c, pytest.raises((ConnectionError, OSError)):  # committed, then killed: no answer
        c.ingest(0, "train", x, labels, batch_id="cam-7/batch-0")
    assert d.proc.wait(60) == -signal.SIGKILL
    d.err.close()

    d = Mirod(state, "learning.strategy=er").start()  # the same state, no fault
    try:
        with d.client() as c:
            again = c.ingest(0, "train", x, labels, batch_id="cam-7/batch-0")
            assert again["duplicate"] is True and again["acked"] == 16 and again["first_id"] == 0
            assert again["task"] == 0 and again["split"] == "train" and again["new_classes"] is True
            s = c.call("status")
            assert s["flash"]["records"] == 16 and s["counters"]["ingested_train"] == 0  # stored once, not now
            # an answered batch: its resend repeats the original answer's fields, and stores nothing
            x1, labels1, _ = samples(16, 8)
            first = c.ingest(0, "train", x1, labels1, batch_id="cam-7/batch-1")
            assert not first.get("duplicate") and first["first_id"] == 16
            second = c.ingest(0, "train", x1, labels1, batch_id="cam-7/batch-1")
            assert second["duplicate"] and {k: second[k] for k in FIELDS} == {k: first[k] for k in FIELDS}
            assert c.call("status")["flash"]["records"] == 24
            # without a batch id, the same resend is stored again (at least once): the id made it exactly once
            plain = c.ingest(0, "train", x, labels)
            assert not plain.get("duplicate") and plain["first_id"] == 24
            assert c.call("status")["flash"]["records"] == 40
        assert any(e["event"] == "ingest_duplicate" and e.get("batch_id") == "cam-7/batch-0" for e in d.logs())
    finally:
        d.kill(signal.SIGTERM)


def test_batch_ids_and_labels_are_checked_by_name(tmp_path):
    d = Mirod(tmp_path / "s", "learning.strategy=er").start()
    x = np.zeros((2, 1, 8, 8), np.uint8)
    base = {"task": 0, "split": "train", "dtype": "uint8", "shape": [2, 1, 8, 8],
            "data": base64.b64encode(x.tobytes()).decode(), "labels": [1, 2]}
    try:
        with d.client() as c:
            for bad, why in (("b" * 129, "batch_id"), (5, "batch_id"), ("", "batch_id"),
                             ("é" * 65, "128 bytes")):  # 65 characters, 130 bytes
                r = c.request("ingest", {**base, "batch_id": bad})
                assert r["error"]["code"] == P.INVALID_PARAMS and why in r["error"]["message"], r
            r = c.request("ingest", {**base, "labels": [0.5, 1.2]})  # never truncated to 0 and 1
            assert r["error"]["code"] == P.INVALID_PARAMS and "labels must be integers" in r["error"]["message"]
            assert "0.5" in r["error"]["message"]
            with pytest.raises(DaemonError) as e:  # the client sends labels as they are
                c.ingest(0, "train", x, np.array([0.5, 1.2]))
            assert e.value.code == P.INVALID_PARAMS and "0.5" in e.value.message
            assert c.call("status")["flash"] is None  # nothing was stored
            assert c.ingest(0, "train", x, [1, 2], batch_id="é" * 64)["acked"] == 2  # 128 bytes: allowed
    finally:
        d.kill(signal.SIGTERM)


def test_miro_ingest_sends_a_file_once_and_refuses_float_or_string_labels(tmp_path):
    d = Mirod(tmp_path / "s", "learning.strategy=er").start()
    S = ["--socket", d.sock]
    x, labels, _ = samples(0, 20)
    np.savez(tmp_path / "f.npz", x=x, y=np.array(labels))
    np.savez(tmp_path / "float.npz", x=x, y=np.array(labels) + 0.5)
    np.savez(tmp_path / "str.npz", x=x, y=np.array([str(v) for v in labels]))
    try:
        r = miro(*S, "ingest", str(tmp_path / "f.npz"), "--task", "0", "--batch", "8", "--json")
        assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["already_stored"] == 0, r.stderr
        # sent again (a kill cut the first send short, say): every batch is a duplicate, nothing stored twice
        r = miro(*S, "ingest", str(tmp_path / "f.npz"), "--task", "0", "--batch", "8", "--json")
        out = json.loads(r.stdout.splitlines()[-1])
        assert r.returncode == 0 and out["acked"] == 20 and out["already_stored"] == 20, r.stderr
        assert d.call("status")["flash"]["records"] == 20
        for name, kind in (("float.npz", "float"), ("str.npz", "string")):
            r = miro(*S, "ingest", str(tmp_path / name), "--task", "0")
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 65 and len(lines) == 1, r.stderr
            assert name in lines[0] and "array 'y'" in lines[0] and f"{kind} labels" in lines[0], lines
        (tmp_path / "text.npz").write_text("not an npz")
        r = miro(*S, "ingest", str(tmp_path / "text.npz"))
        assert r.returncode == 65 and "not a readable .npz" in r.stderr and "Traceback" not in r.stderr
        assert miro(*S, "ingest", str(tmp_path / "f.npz"), "--batch", "0").returncode == 2
        assert d.call("status")["flash"]["records"] == 20
    finally:
        d.kill(signal.SIGTERM)


def test_the_store_checks_batch_records():
    from miro_runtime.storage.meta import _check_type
    _check_type("user/batch/cam-7:0-8", json.dumps({"acked": 8, "task": 0, "first_id": 3}))
    for key, value in (("user/batch/x", "{}"), ("user/batch/x", "[8]"), ("user/batch/x", "8"),
                       ("user/batch/" + "b" * 129, '{"acked": 1}'), ("user/batch/", '{"acked": 1}')):
        with pytest.raises(ValueError, match="meta record"):
            _check_type(key, value)
