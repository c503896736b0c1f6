"""Every example script runs to completion as a user would run it: exit 0 and the output it prints
only once it got to the end; a failure halfway is a non-zero exit with its traceback."""
import glob
import os
import re
import subprocess

import pytest

from conftest import PY, REPO

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*.py")))
# what each example prints on the way and at its very end: a run that stops early misses the last lines
FINISHED = {
    "ingest_and_read.py": [r"^stored per class: \[", r"^read back ids \[", r"^swap counters: ",
                           r"^state directory: .+/state$"],
    "stream_to_daemon.py": [r"^task 0: acc per task \[", r"^task 4: acc per task \[(0\.\d+|1\.0), ",
                            r"^final average accuracy (0\.\d+|1\.0)$"],
}
ENV = {k: v for k, v in os.environ.items() if k != "MIRO_SOCKET"}  # the example starts its own daemon


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    name = os.path.basename(path)
    assert name in FINISHED, f"say in FINISHED what {name} prints once it has run to its end"
    r = subprocess.run([PY, path, str(tmp_path / "state")], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    for pattern in FINISHED[name]:
        assert any(re.search(pattern, line) for line in lines), (pattern, r.stdout[-3000:], r.stderr[-3000:])
    assert re.search(FINISHED[name][-1], lines[-1]), f"not the last line: {lines[-1]!r}"
    r = subprocess.run([PY, path, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=ENV)
    assert r.returncode == 0 and r.stdout.startswith("usage: ") and "STATE_DIR" in r.stdout.upper(), r.stderr
    assert os.listdir(tmp_path) == ["state"], "--help was taken for a state directory"
