"""TaskLedger alone: task states, where samples go, refusals, durable ends and the restart rebuild.
No daemon, no torch, no numpy: a dict stands in for the flash tier's meta."""
import subprocess
import sys

import pytest

from miro_runtime.session.errors import SessionError
from miro_runtime.session.ledger import ENDED_KEY, TaskLedger, TaskState


class Meta:
    """The flash meta as the ledger sees it: every commit, in order."""

    def __init__(self):
        self.commits = []

    def set_meta(self, key, value):
        self.commits.append((key, value))


def ledger_with_meta():
    led, meta = TaskLedger(), Meta()
    led.attach(meta)
    return led, meta


def ingest_train(led, task):
    """What the session does around a train batch: admit, then open once the batch is stored."""
    implicit = led.admit_train(task)
    led.opened(task)
    return implicit


def refused(fn, *args) -> str:
    with pytest.raises(SessionError) as e:
        fn(*args)
    assert e.value.kind == "conflict"
    return str(e.value)


def test_a_fresh_ledger_has_no_open_task():
    led = TaskLedger()
    assert led.open_task == -1 and led.ended == [] and led.trained == 0
    assert led.state(0) == TaskState.NEW


def test_the_first_train_sample_opens_task_0_and_nothing_is_committed():
    led, meta = ledger_with_meta()
    assert ingest_train(led, 0) is None
    assert led.open_task == 0 and led.state(0) == TaskState.INGESTING and led.state(1) == TaskState.NEW
    assert meta.commits == []


def test_end_commits_the_ended_list_before_it_returns():
    led, meta = ledger_with_meta()
    ingest_train(led, 0)
    assert led.end(0) is True
    assert meta.commits == [(ENDED_KEY, "[0]")]
    assert led.state(0) == TaskState.ENDED and led.is_ended(0)
    assert led.end(0) is False  # already ended: acknowledged again, nothing committed
    assert meta.commits == [(ENDED_KEY, "[0]")]


def test_train_samples_after_an_end_go_to_the_next_task():
    led, meta = ledger_with_meta()
    ingest_train(led, 0)
    led.end(0)
    assert refused(led.admit_train, 0) == "task 0 has ended; train samples go to task 1 (a new task)"
    assert ingest_train(led, 1) is None  # the open task had ended: nothing ends implicitly
    assert led.open_task == 1 and meta.commits == [(ENDED_KEY, "[0]")]


def test_samples_for_the_next_task_end_the_open_one_implicitly():
    led, meta = ledger_with_meta()
    ingest_train(led, 0)
    assert led.admit_train(1) == 0
    assert meta.commits == [(ENDED_KEY, "[0]")] and led.ended == [0]
    assert led.open_task == 0  # opened only once the batch is stored (a refused label map leaves it)
    led.opened(1)
    assert led.open_task == 1 and led.state(0) == TaskState.ENDED and led.state(1) == TaskState.INGESTING
    assert led.admit_train(2) == 1 and meta.commits[-1] == (ENDED_KEY, "[0, 1]")


def test_refusals_name_the_task_samples_may_go_to():
    led, meta = ledger_with_meta()
    ingest_train(led, 0)
    assert refused(led.admit_train, 2) == "tasks are numbered in order: the next task is 1, got 2"
    assert refused(led.end, 1) == "task 1 is not the open task (0); ingest its samples first"
    ingest_train(led, 1)
    ingest_train(led, 2)
    assert refused(led.admit_train, 0) == "task 0 has ended; train samples go to task 3"
    assert meta.commits == [(ENDED_KEY, "[0]"), (ENDED_KEY, "[0, 1]")]  # refusals commit nothing


def test_test_samples_go_up_to_the_task_after_the_open_one():
    led = TaskLedger()
    led.admit_test(0)
    led.admit_test(1)  # before any train sample: tasks 0 and 1
    assert refused(led.admit_test, 2) == "test samples for task 2: tasks so far end at -1; number tasks in order"
    ingest_train(led, 0)
    led.admit_test(1)
    assert led.open_task == 0  # test samples open nothing
    assert refused(led.admit_test, 2) == "test samples for task 2: tasks so far end at 0; number tasks in order"


def test_a_task_trains_then_is_trained():
    led, _ = ledger_with_meta()
    ingest_train(led, 0)
    led.end(0)
    led.begin(0)
    assert led.state(0) == TaskState.TRAINING
    led.finish(0)
    assert led.trained == 1 and led.state(0) == TaskState.TRAINED
    assert not led.interrupted


def test_online_a_task_trains_while_it_ingests():
    led, _ = ledger_with_meta()
    ingest_train(led, 0)
    led.begin(0)
    assert led.state(0) == TaskState.TRAINING and led.admit_train(0) is None
    assert led.end(0) is True and led.state(0) == TaskState.TRAINING and led.is_ended(0)


def test_a_shutdown_mid_task_is_recorded():
    led = TaskLedger()
    led.begin(0)
    led.interrupt()
    assert led.interrupted


@pytest.mark.parametrize("ended, trained, n_tasks, open_task", [
    (None, 0, 0, -1),  # nothing stored
    (None, 0, 1, 0),  # task 0 ingesting
    ("[0]", 1, 1, 0),  # task 0 ended and trained, no sample of task 1 yet
    ("[0]", 1, 2, 1),  # task 1 ingesting
    ("[0, 1]", 1, 2, 1),  # task 1 ended, its training cut short
])
def test_a_restart_rebuilds_the_ledger_from_the_stored_ended_list(ended, trained, n_tasks, open_task):
    led = TaskLedger()
    led.restore(ended, trained, n_tasks)
    assert led.open_task == open_task and led.trained == trained
    assert led.ended == ([] if ended is None else [int(t) for t in ended.strip("[]").split(",")])


def test_after_a_restart_the_ended_task_trains_again_and_the_next_opens():
    led, meta = ledger_with_meta()
    led.restore("[0, 1]", 1, 2)
    assert [led.state(t) for t in range(3)] == [TaskState.TRAINED, TaskState.ENDED, TaskState.NEW]
    assert led.end(1) is False
    assert ingest_train(led, 2) is None and meta.commits == []
    assert led.end(2) is True and meta.commits == [(ENDED_KEY, "[0, 1, 2]")]


def test_the_ledger_imports_neither_numpy_nor_torch():
    code = ("import sys, miro_runtime.session.ledger, miro_runtime.session.config; "
            "bad = [m for m in ('numpy', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_task_below_the_open_one_takes_no_samples():
    # a restart after test samples of the task after the open one: that task is the last the stream knows
    led = TaskLedger()
    led.restore(None, 0, 2)
    assert led.open_task == 1 and led.state(0) == TaskState.ENDED and not led.is_ended(0)
    assert refused(led.end, 0) == "task 0 is not the open task (1); ended"
    assert refused(led.admit_train, 0) == "task 0 has ended; train samples go to task 2"


def test_next_task_is_the_open_one_until_it_ends():
    led, meta = TaskLedger(), Meta()
    led.attach(meta)
    assert led.next_task() == 0  # nothing open yet
    led.admit_train(0)
    led.opened(0)
    assert led.next_task() == 0
    led.end(0)
    assert led.next_task() == 1


def test_ending_a_task_before_any_is_open_is_a_refusal_not_a_crash():
    led = TaskLedger()  # a fresh state directory: no store attached yet
    for t in (-1, 0, 3):
        assert "no task is open yet" in refused(led.end, t)
