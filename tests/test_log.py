"""The structured log: levels and components per line, size rotation, journald priorities."""
import json
import logging

from miro_runtime.log import EventLog, SyslogPrefixFormatter


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
    f = SyslogPrefixFormatter("%(name)s: %(message)s")
    mk = lambda lvl: logging.LogRecord("miro", lvl, __file__, 1, "m", None, None)
    assert [f.format(mk(lv))[:3] for lv in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)] == \
        ["<3>", "<4>", "<6>", "<7>"]
