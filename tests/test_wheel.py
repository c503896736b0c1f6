"""A board installs the wheel, not the checkout: the wheel holds every module of the source tree
(package_dir maps storage/, profilers/, kv/ into miro_runtime.*) and `miro --help` runs from it."""
import glob
import os
import subprocess
import sys
import zipfile

from conftest import REPO

TREES = {"miro_runtime": "miro_runtime", "storage": "miro_runtime/storage", "profilers": "miro_runtime/profilers",
         "kv": "miro_runtime/kv"}


def source_modules() -> set:
    out = set()
    for src, dst in TREES.items():
        for path in glob.glob(os.path.join(REPO, src, "**", "*.py"), recursive=True):
            out.add(dst + "/" + os.path.relpath(path, os.path.join(REPO, src)).replace(os.sep, "/"))
    return out


def test_wheel_holds_every_module_and_miro_help_runs_from_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), REPO], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = glob.glob(str(tmp_path / "dist" / "miro_runtime-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    missing = source_modules() - names
    assert not missing, f"modules of the source tree missing from the wheel: {sorted(missing)}"
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(whl).read(entry[0]).decode()
    assert "miro = miro_runtime.cli.main:main" in text and "mirod = miro_runtime.daemon.main:main" in text

    # installed from the wheel alone (outside the checkout, so the editable install cannot answer)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), whl],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import sys, miro_runtime, miro_runtime.engine.strategies, miro_runtime.storage, miro_runtime.kv; "
            "assert miro_runtime.__file__.startswith(sys.argv[1]), miro_runtime.__file__; "
            "from miro_runtime.cli.main import main; sys.argv = ['miro', '--help']; main()")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120,
                       env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "daemon" in r.stdout and "status" in r.stdout and "run" in r.stdout
