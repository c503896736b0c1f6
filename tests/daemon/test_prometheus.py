"""mirod's Prometheus textfile, scraped from a real daemon (issue 20): the names follow Prometheus's
naming conventions, every metric has HELP and TYPE, every counter ends in _total and nothing else
does, and a counter keeps its value across a restart (it never goes back)."""
import os
import re
import signal
import time

import numpy as np
from daemon_util import Mirod
from prometheus_client.parser import text_string_to_metric_families

from miro_runtime.daemon.prometheus import COUNTERS_FILE

# https://prometheus.io/docs/practices/naming/: the application prefix, snake case, no reserved suffix
NAME = re.compile(r"miro_[a-z][a-z0-9]*(_[a-z0-9]+)*")
LABEL = re.compile(r"[a-z]{1,8}")  # short label names
LABEL_VALUE_MAX = 16  # short, bounded label values (no free text such as a meter's provenance)
# non-base units the conventions rule out (seconds, bytes, joules and ratios are the base ones)
NOT_BASE_UNIT = re.compile(r"_(ms|us|ns|milliseconds|microseconds|minutes|hours|kb|mb|gb|kib|mib|gib|kilobytes|"
                           r"megabytes|percent|j|kj|wh|kwh|watts|celsius)(_total)?$")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")


def parse(text: str) -> tuple:
    """({name: type}, {name: help}, {name: [(labels text, value)]}) of a textfile, line by line."""
    types, helps, samples = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[len("# HELP "):].partition(" ")
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            types[name] = kind
        else:
            m = SAMPLE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            samples.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return types, helps, samples


def check_conventions(text: str):
    list(text_string_to_metric_families(text))  # the client library's own parser reads it
    types, helps, samples = parse(text)
    for name, values in samples.items():
        assert name in types and name in helps and helps[name], f"{name}: no TYPE or HELP line"
        assert NAME.fullmatch(name), f"{name}: not a conventional name"
        assert not NOT_BASE_UNIT.search(name), f"{name}: not in a base unit"
        if types[name] == "counter":
            assert name.endswith("_total"), f"counter {name} does not end in _total"
        else:
            assert types[name] == "gauge" and not name.endswith("_total"), f"{types[name]} {name} ends in _total"
        for labels, _ in values:
            for k, v in re.findall(r'(\w+)="([^"]*)"', labels):
                assert LABEL.fullmatch(k) and len(v) <= LABEL_VALUE_MAX, f"{name}: long label {k}={v!r}"
    return types, samples


def value(samples: dict, name: str, labels: str = "") -> float:
    return dict(samples[name])[labels]


def _requests(text: str) -> float:
    """miro_requests_total in an export's text (0 when absent)."""
    m = re.search(r"^miro_requests_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_for_export(prom, pred, timeout=30.0) -> str:
    """The textfile once it satisfies ``pred`` (its text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = prom.read_text() if prom.exists() else ""
        if text and pred(text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"the metrics file never got there: {text[-2000:]}")


def test_metrics_follow_the_conventions_and_counters_survive_a_restart(tmp_path):
    prom = tmp_path / "miro.prom"
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=1", "learning.strategy=er",
              f"daemon.metrics_file={prom}", "daemon.metrics_every_s=0.2").start()
    try:
        rng = np.random.default_rng(0)
        with d.client() as c:
            c.ingest(0, "train", rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8), rng.choice([0, 1], 60).tolist())
            c.call("task_end", task=0, wait=True)
            for _ in range(5):
                c.call("status")
        # an export is periodic: one taken between task_end's answer and the status calls shows the task
        # trained and only the first requests, so wait for one that also counts the status calls
        text = wait_for_export(prom, lambda t: "miro_tasks_trained_total 1.0" in t and "miro_flash_samples" in t
                               and _requests(t) >= 7)
        types, before = check_conventions(text)
        for name in ("miro_tasks_trained_total", "miro_samples_ingested_total", "miro_requests_total",
                     "miro_trainer_errors_total", "miro_energy_joules_total"):
            assert types[name] == "counter"
        for name in ("miro_up", "miro_failed_tasks", "miro_trainer_healthy", "miro_flash_samples",
                     "miro_training_steps"):
            assert types[name] == "gauge"
        assert value(before, "miro_samples_ingested_total", '{split="train"}') == 60
        assert value(before, "miro_trainer_errors_total") == 0
        assert value(before, "miro_requests_total") >= 7  # ingest, task_end, 5 x status (and the pings)
        assert re.fullmatch(r'\{source="(measured|estimated|mixed)"\}', before["miro_energy_joules_total"][0][0])
        assert (tmp_path / "s" / COUNTERS_FILE).exists()
        assert d.kill(signal.SIGTERM) == 0
        prom.unlink()
        d.start()  # a new process on the same state directory: its in-memory counts start at 0
        text = wait_for_export(prom, lambda t: "miro_requests_total" in t)
        _, after = check_conventions(text)
        # kept: nothing was ingested or trained since, and the requests only add up
        assert value(after, "miro_samples_ingested_total", '{split="train"}') == 60
        assert value(after, "miro_tasks_trained_total") == 1
        assert value(after, "miro_energy_joules_total", before["miro_energy_joules_total"][0][0]) == \
            value(before, "miro_energy_joules_total", before["miro_energy_joules_total"][0][0])
        assert value(after, "miro_requests_total") >= value(before, "miro_requests_total")
        assert value(after, "miro_trainer_errors_total") == 0
    finally:
        if d.alive():
            d.kill(signal.SIGTERM)


def test_an_unreadable_counters_file_starts_over_and_says_so(tmp_path):
    prom, state = tmp_path / "miro.prom", tmp_path / "s"
    os.makedirs(state)
    (state / COUNTERS_FILE).write_text("{not json")
    d = Mirod(state, f"daemon.metrics_file={prom}", "daemon.metrics_every_s=0.2").start()
    try:
        check_conventions(wait_for_export(prom, lambda t: "miro_requests_total" in t))
        assert any(e["event"] == "metrics_counters_reset" and COUNTERS_FILE in e["error"] for e in d.logs())
    finally:
        d.kill(signal.SIGTERM)


def test_kv_figures_are_exported(tmp_path):
    """Needs process.py to hand the KV service's status to the export (kv_status=self.kv.status)."""
    prom = tmp_path / "miro.prom"
    d = Mirod(tmp_path / "s", f"daemon.metrics_file={prom}", "daemon.metrics_every_s=0.2").start()
    try:
        with d.client() as c:
            c.call("kv_generate", prompt="hello there", max_new_tokens=4)
        text = wait_for_export(prom, lambda t: "miro_kv_tokens_generated_total 4.0" in t)
        types, samples = check_conventions(text)
        assert value(samples, "miro_kv_requests_total") == 1 and types["miro_kv_requests_total"] == "counter"
        assert value(samples, "miro_kv_last_hot_bytes") > 0
        assert set(dict(samples["miro_kv_flash_bytes"])) == {'{kind="prefix"}', '{kind="cold"}'}
        assert "miro_kv_prefix_chunks" in samples and "miro_kv_ram_share_bytes" in samples
    finally:
        d.kill(signal.SIGTERM)
