"""Session.ingest in-process (no daemon): a batch id makes a resend a duplicate that stores nothing,
across a reopen of the state directory; labels are integers or refused by name, never truncated."""
import numpy as np
import pytest

from miro_runtime.config import RunConfig
from miro_runtime.session import Session, SessionError


def test_a_batch_id_is_stored_once_across_a_reopen_and_float_labels_are_refused(tmp_path):
    cfg = dict(run_dir=str(tmp_path / "s"), online=False, strategy="er", flash_budget=None)
    x = np.arange(6 * 64, dtype=np.uint8).reshape(6, 1, 8, 8)
    s = Session(RunConfig(**cfg))
    s.open()
    for labels in ([0.5, 1.2, 0, 1, 2, 3], np.array([0.0, 1, 2, 3, 4, 5]), [True] * 6, ["1"] * 6, [-1] * 6):
        with pytest.raises(SessionError, match="labels must be integers"):
            s.ingest(0, "train", x, labels)
    assert s.learner is None  # nothing stored, not even the model chosen
    first = s.ingest(0, "train", x, np.arange(6, dtype=np.uint8), batch_id="b0")
    again = s.ingest(0, "train", x, np.arange(6), batch_id="b0")
    assert not first.get("duplicate") and again["duplicate"] and again["first_id"] == first["first_id"] == 0
    with pytest.raises(SessionError, match="batch_id"):
        s.ingest(0, "train", x, list(range(6)), batch_id="\ud800")  # JSON can carry a lone surrogate
    s.close()

    r = Session(RunConfig(**cfg))
    r.open()
    try:
        assert r.ingest(0, "train", x, list(range(6)), batch_id="b0")["duplicate"]
        assert r.ingest(0, "train", x, list(range(6)))["first_id"] == 6  # no id: stored again
        assert int(r.learner.flash.class_counts("samples").sum()) == 12
    finally:
        r.close()


def test_a_duplicate_answers_what_the_first_send_stored_and_evicted(tmp_path):
    # a flash budget of 8 records: the second batch evicts, so stored/evicted differ from acked
    s = Session(RunConfig(run_dir=str(tmp_path / "s"), online=False, strategy="er", flash_budget=8))
    s.open()
    try:
        x = np.arange(6 * 64, dtype=np.uint8).reshape(6, 1, 8, 8)
        s.ingest(0, "train", x, [0, 1, 0, 1, 0, 1], batch_id="a")
        first = s.ingest(0, "train", x, [0, 1, 0, 1, 0, 1], batch_id="b")
        again = s.ingest(0, "train", x, [0, 1, 0, 1, 0, 1], batch_id="b")
        assert first["evicted"] > 0 or first["stored"] < first["acked"]  # the budget did bite
        assert again["duplicate"] and {k: again[k] for k in ("first_id", "stored", "evicted")} == \
            {k: first[k] for k in ("first_id", "stored", "evicted")}
        assert int(s.learner.flash.class_counts("samples").sum()) == 8
    finally:
        s.close()
