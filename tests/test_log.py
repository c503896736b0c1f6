"""The structured log: levels and components per line, size rotation, journald priorities only where
journald reads them, long stderr lines cut visibly."""
import ast
import json
import logging
import os
import pty

from conftest import REPO
from miro_runtime.log import COMPONENTS, KIND_COMPONENT, EventLog, SyslogPrefixFormatter, to_journal


def test_json_lines_rotate_by_size_and_keep_backups(tmp_path):
    path = tmp_path / "mirod.jsonl"
    log = EventLog(str(path), max_bytes=2000, backups=2, component="daemon")
    for i in range(200):
        log.event("checkpoint", task=i % 3, steps=i)
    log.event("peer_refused", peer={"uid": 7})
    log.event("tick", level="debug", component="trainer")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["mirod.jsonl", "mirod.jsonl.1", "mirod.jsonl.2"]  # older ones dropped
    assert all(p.stat().st_size <= 2000 + 200 for p in tmp_path.iterdir())
    last = [json.loads(x) for x in path.read_text().splitlines()]
    assert last[-2]["event"] == "peer_refused" and last[-2]["level"] == "warning"
    assert last[-1]["component"] == "trainer" and last[-1]["level"] == "debug"
    older = [json.loads(x) for x in (tmp_path / "mirod.jsonl.1").read_text().splitlines()]
    assert older[-1]["steps"] + 1 == next(r["steps"] for r in last if r["event"] == "checkpoint")


def test_level_filter_and_syslog_prefixes(tmp_path):
    log = EventLog(str(tmp_path / "l.jsonl"), level="warning")
    log.event("checkpoint")
    log.event("error", error="boom")
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["error"]
    f = SyslogPrefixFormatter("%(name)s: %(message)s", journal=True)
    mk = lambda lvl: logging.LogRecord("miro", lvl, __file__, 1, "m", None, None)
    assert [f.format(mk(lv))[:3] for lv in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)] == \
        ["<3>", "<4>", "<6>", "<7>"]


def emitted_kinds() -> list:
    """(kind, file, tagged) of every ``X.event("kind", ...)`` call in the package's source (and
    ``X.log("kind", ...)``: kv/serving.py's callback); tagged: the call names its component itself."""
    out = []
    for top in ("miro_runtime", "kv", "storage", "profilers"):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(d, name)
                with open(path) as fh:
                    tree = ast.parse(fh.read())
                for n in ast.walk(tree):
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
                            and n.func.attr in ("event", "log") and n.args and isinstance(n.args[0], ast.Constant) \
                            and isinstance(n.args[0].value, str):
                        out.append((n.args[0].value, os.path.relpath(path, REPO),
                                    any(k.arg == "component" for k in n.keywords)))
    return out


def test_every_event_the_package_emits_names_its_component():
    kinds = emitted_kinds()
    assert len({k for k, _, _ in kinds}) > 30  # the scan found the producers
    untagged = [(k, f) for k, f, tagged in kinds if not tagged and k not in KIND_COMPONENT]
    assert not untagged, f"add these kinds to miro_runtime/log.py's KIND_COMPONENT: {untagged}"
    assert set(KIND_COMPONENT.values()) <= set(COMPONENTS)
    stale = set(KIND_COMPONENT) - {k for k, _, _ in kinds}
    assert not stale, f"no code emits these kinds any more; drop them from KIND_COMPONENT: {stale}"


def test_the_component_is_the_producers_not_the_logs_default(tmp_path):
    log = EventLog(str(tmp_path / "l.jsonl"), component="daemon")  # the one log the daemon hands down
    recs = [log.event("task_trained", task=0), log.event("task_end", task=0), log.event("miro_decision", task=0),
            log.event("inbox_failed", path="x"), log.event("error", component="trainer", error="boom"),
            log.event("started")]
    log.close()
    assert [r["component"] for r in recs] == ["trainer", "engine", "miro", "inbox", "trainer", "daemon"]
    written = [json.loads(x)["component"] for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert written == [r["component"] for r in recs]


def test_a_long_stderr_line_is_cut_visibly_and_the_json_log_keeps_it_whole(tmp_path, caplog):
    path = tmp_path / "l.jsonl"
    log = EventLog(str(path), component="daemon")
    long = "x" * 1000
    with caplog.at_level(logging.INFO, logger="miro"):
        log.event("config_set", key="k", value=long)
        log.event("config_set", key="k", value="short")
    log.close()
    cut, whole = [r.getMessage() for r in caplog.records]
    assert "... (+" in cut and f"chars; whole in {path})" in cut and len(cut) < 700
    shown = int(cut.split("... (+")[1].split(" chars")[0])
    assert shown == len(json.dumps({"key": "k", "value": long})) - 400
    assert whole.endswith('{"key": "k", "value": "short"}')
    assert json.loads(path.read_text().splitlines()[0])["value"] == long


def test_priority_prefixes_only_where_journald_reads_them(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    rec = logging.LogRecord("miro", logging.INFO, __file__, 1, "daemon started", None, None)
    master, slave = pty.openpty()
    r, w = os.pipe()
    try:
        with open(slave, "w", closefd=False) as tty, open(w, "w", closefd=False) as pipe:
            assert not to_journal(tty) and to_journal(pipe)
            assert SyslogPrefixFormatter("%(name)s: %(message)s", stream=tty).format(rec) == "miro: daemon started"
            assert SyslogPrefixFormatter("%(name)s: %(message)s", stream=pipe).format(rec) == \
                "<6>miro: daemon started"
            st = os.fstat(slave)  # systemd names the journal's stream: believed even on a character device
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            assert to_journal(tty)
            monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited from a unit, naming another stream
            assert not to_journal(tty)
    finally:
        for fd in (master, slave, r, w):
            os.close(fd)

