"""Session in-process: a restart gets back exactly the stored samples of the tasks not yet trained."""
import threading
import time

import numpy as np

from miro_runtime.config import RunConfig
from miro_runtime.session import Session


def test_restart_recovers_exactly_the_untrained_tasks_samples(tmp_path):
    cfg = dict(run_dir=str(tmp_path / "s"), online=False, epochs=1, strategy="er", flash_budget=None)
    rng = np.random.default_rng(0)
    x0, y0 = rng.integers(0, 256, (4500, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 4500)
    x1, y1 = rng.integers(0, 256, (9000, 1, 8, 8), dtype=np.uint8), rng.integers(3, 6, 9000)
    s = Session(RunConfig(**cfg))
    s.open()
    th = threading.Thread(target=s.run_trainer)
    th.start()
    s.ingest(0, "train", x0, y0.tolist())
    s.end_task(0)
    deadline = time.monotonic() + 120
    while s.done < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s.done == 1
    for i in range(0, 9000, 1000):  # task 1 stays open: more than two 4096-id chunks of it are pending
        s.ingest(1, "train", x1[i:i + 1000], y1[i:i + 1000].tolist())
    s.stop()
    th.join(60)
    s.close()

    r = Session(RunConfig(**cfg))
    r.open()
    try:
        x, y, ids = r.stream.train_arrays(1)
        assert r.done == 1 and r.open_task == 1 and len(y) == 9000
        assert np.array_equal(x, x1) and [r.stream.inv[c] for c in y.tolist()] == y1.tolist()
        assert len(r.stream.train_arrays(0)[1]) == 0  # the trained task's samples are not read back
    finally:
        r.close()
