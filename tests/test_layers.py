"""The package's shape, checked on every change: the layer contracts of .importlinter hold, no module
takes part in an import cycle, no class of miro_runtime/ outgrows one concern, and the control
commands load neither torch nor numpy (measured with `python -X importtime`, as a user's shell would
pay for it)."""
import ast
import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MAX_CLASS_LINES = 400
LINKED = ("storage", "profilers", "kv")  # top-level folders that package_dir installs inside miro_runtime


def test_lint_imports_keeps_every_contract():
    exe = os.path.join(BIN, "lint-imports")
    r = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "Layers" in r.stdout


def _module_graph() -> dict:
    sys.path.insert(0, REPO)  # the tree as lint-imports reads it
    try:
        import grimp
        g = grimp.build_graph("miro_runtime", exclude_type_checking_imports=True)  # annotations never run
    finally:
        sys.path.remove(REPO)
    return {m: {t for t in g.find_modules_directly_imported_by(m) if t in g.modules} for m in g.modules}


def cycles(adj: dict) -> list:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    # the check below could not fail if this did not
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_project():
    adj = _module_graph()
    assert len(adj) > 80 and "miro_runtime.storage.flash" in adj  # the linked folders are read too
    assert cycles(adj) == []


def test_no_class_above_one_concern():
    big = []
    for path in glob.glob(os.path.join(REPO, "miro_runtime", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, os.path.join(REPO, "miro_runtime"))
        if rel.split(os.sep)[0] in LINKED:
            continue  # storage/, profilers/, kv/ are their own folders, not miro_runtime/'s
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                big.append(f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not big, big


def _imported(cmd: list) -> set:
    r = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, timeout=120)
    names = set()
    for line in r.stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert names, r.stderr[-2000:]
    return names


def _imported_by_miro(state_dir, argv: list) -> set:
    """What `miro ARGV` imports; no daemon listens, so the command fails fast, after importing all it
    would import to talk to one."""
    code = ("import sys; from miro_runtime.cli.main import main; "
            f"sys.argv = ['miro', '--state-dir', {str(state_dir)!r}] + {argv!r}\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    return _imported(["-c", code])


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["task", "list"]])
def test_control_commands_import_neither_torch_nor_numpy(tmp_path, argv):
    names = _imported_by_miro(tmp_path, argv)
    assert "miro_runtime.cli.main" in names and "click" in names
    heavy = {n for n in names if n.split(".")[0] in ("torch", "numpy", "lmdb")}
    assert not heavy, sorted(heavy)[:10]


def test_a_control_command_loads_no_other_commands_module(tmp_path):
    # commands are imported on first use (cli/main.py's COMMANDS): `miro status` needs control.py (and
    # what it imports), not run's options, kv, fleet, logs or the unit writer
    from miro_runtime.cli.main import COMMANDS
    names = _imported_by_miro(tmp_path, ["status"])
    assert "miro_runtime.cli.control" in names
    others = {f"miro_runtime.cli.{module}" for module, _ in COMMANDS.values()} - {"miro_runtime.cli.control"}
    assert len(others) >= 7 and not names & others, sorted(names & others)


def test_importtime_check_sees_a_heavy_import():
    # the parser above reads importtime's table, so a command that does load numpy is caught
    assert "numpy" in _imported(["-c", "import numpy"])


def test_tests_mirror_the_package():
    # each layer of miro_runtime/ (the linked folders included) has its tests in tests/<layer>/
    layers = sorted(d for d in os.listdir(os.path.join(REPO, "miro_runtime"))
                    if os.path.isfile(os.path.join(REPO, "miro_runtime", d, "__init__.py")))
    assert {"engine", "control", "session", "daemon", "cli", "storage", "kv"} <= set(layers)
    missing = [d for d in layers if not glob.glob(os.path.join(REPO, "tests", d, "test_*.py"))]
    assert not missing, f"layers with no tests/<layer>/test_*.py: {missing}"
