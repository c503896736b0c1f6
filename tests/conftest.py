import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# the `miro` console script beside this interpreter (a wheel or editable install), else the module
MIRO = [os.path.join(os.path.dirname(os.path.realpath(PY)), "miro")]
if not os.path.exists(MIRO[0]):
    MIRO = [PY, "-m", "miro_runtime.cli"]


def fill_for(sample_id: int, shape=(1, 8, 8)) -> np.ndarray:
    """A sample whose every byte is derived from its id: a torn read shows up as mixed bytes."""
    return np.full(shape, sample_id % 251, dtype=np.uint8)


@pytest.fixture(scope="session", autouse=True)
def _no_mirod_outlives_the_session():
    """A daemon test that fails before its own kill leaves its mirod running; none outlives pytest."""
    yield
    import daemon_util
    daemon_util.kill_leftovers()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def wait_for_event(events_path, pred, timeout: float = 120.0, poll: float = 0.02):
    """The first line of a run's events.jsonl satisfying ``pred`` (polled until ``timeout``), or None."""
    import json
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events_path.exists():
            for line in events_path.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if pred(e):
                    return e
        time.sleep(poll)
    return None
