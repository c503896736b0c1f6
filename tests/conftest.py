import os
import sys

# Two workers share two cores: a second intra-op thread in each (and in every mirod they start, which
# inherits this) only oversubscribes them, and its spin-waits are CPU time the other worker needed. The
# engine trains on one thread already; this covers the rest (the frozen encoders, the KV decoders). Set
# before numpy and torch are imported: both read it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


# The suite runs on 2 workers with --dist loadfile, which hands out whole files in collection order (with
# --no-loadscope-reorder, set in the Makefile: without it pytest-xdist >= 3.5 hands out the files with the most
# tests first, and the one-test files that run longest -- Flower, SIGKILL and resume -- came last, one worker
# running them alone for the last ~40 s). A long file handed out last runs alone at the end, so these files (the
# longest, measured on this project's 2-core machine, longest first) go first and everything else keeps its
# order. Only the order changes: every test still runs, on whichever worker takes its file.
LONGEST_FIRST = ("daemon/test_daemon.py", "engine/test_rep.py", "kv/test_smollm2.py", "fleet/test_fleet_kill.py",
                 "session/test_damage.py", "cli/test_cli.py", "fleet/test_fleet_tls.py", "engine/test_engine.py",
                 "cli/test_kv_cli.py", "engine/test_latent.py", "session/test_meta_damage.py", "daemon/test_inbox.py",
                 "daemon/test_latent_daemon.py", "engine/test_kill_resume.py", "cli/test_status_render.py",
                 "kv/test_kv_cache.py", "cli/test_cli_daemon.py", "daemon/test_exactly_once.py",
                 "daemon/test_daemon_kv.py", "daemon/test_budget_daemon.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        rel = os.path.relpath(str(item.path), os.path.join(REPO, "tests")).replace(os.sep, "/")
        return rank.get(rel, len(rank))
    items.sort(key=key)  # stable: the rest, and the tests inside each file, keep their order
