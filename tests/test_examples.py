"""Every example script runs to completion as a user would run it."""
import glob
import os
import subprocess

import pytest

from conftest import PY, REPO

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    r = subprocess.run([PY, path, str(tmp_path / "state")], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip()
