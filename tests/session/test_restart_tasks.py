"""Which task is open after a restart comes from the train samples the store holds: a task whose
samples bring no new class (a domain-incremental task) is still a task, and test samples sent ahead
for the next task do not make it the open one."""
import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.session import Session

X = np.arange(16 * 64, dtype=np.uint8).reshape(16, 1, 8, 8)


def session(tmp_path) -> Session:
    s = Session(RunConfig(run_dir=str(tmp_path / "s"), online=False, strategy="er", flash_budget=None))
    s.open()
    return s


def test_a_task_with_no_new_class_is_open_again_after_a_restart(tmp_path):
    s = session(tmp_path)
    s.ingest(0, "train", X, [0, 1] * 8)
    s.end_task(0)
    s.ingest(1, "train", X, [1, 0] * 8)  # the same classes: nothing new for the label map
    s.close()
    r = session(tmp_path)
    try:
        assert r.status()["open_task"] == 1
        assert r.stream.pending_train(1) == 16  # its samples came back from the store
        assert r.end_task(1)["task"] == 1
    finally:
        r.close()


def test_test_samples_sent_ahead_do_not_open_the_next_task_after_a_restart(tmp_path):
    s = session(tmp_path)
    s.ingest(0, "train", X, [0, 1] * 8)
    s.ingest(1, "test", X[:4], [2, 3, 2, 3])  # the next task's test set, sent before its train samples
    s.close()
    r = session(tmp_path)
    try:
        assert r.status()["open_task"] == 0
        assert not r.end_task(0).get("already")
    finally:
        r.close()
