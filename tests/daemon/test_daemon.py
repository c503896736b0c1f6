"""mirod as clients meet it: a real daemon process on a real Unix socket, real signals."""
import base64
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
from daemon_util import PY, Mirod, client_for_other_users, samples, socket_dir

from miro_runtime.wire import protocol as P
from miro_runtime.wire.client import Client, DaemonError
from miro_runtime.storage import FlashTier
from miro_runtime.engine.streams import split_digits



def raw_request(sock_path, payload: bytes, header=None, read=True, timeout=10):
    """Send bytes as one frame (or a custom header); return the decoded response, or None on close."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    for _ in range(100):
        try:
            s.connect(sock_path)
            break
        except BlockingIOError:  # backlog full for a moment: retry as a real client would
            time.sleep(0.01)
    try:
        s.sendall((struct.pack(">I", len(payload)) if header is None else header) + payload)
        if not read:
            return None
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        return json.loads(body)
    finally:
        s.close()


def test_ingest_train_predict_eval_and_errors(tmp_path):
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=2", "learning.strategy=er").start()
    try:
        st = split_digits(5, 0)
        with d.client() as c:
            with pytest.raises(DaemonError) as e:
                c.predict(st.test[0][0][:2])
            assert e.value.code == P.NOT_READY
            for t in range(2):
                x, y = st.train[t]
                r = c.ingest(t, "train", x, y * 10 + 7)  # any client labels: mapped in arrival order
                assert r["acked"] == len(y) and r["stored"] == len(y)
                c.ingest(t, "test", *st.test[t][:1], labels=st.test[t][1] * 10 + 7)
                done = c.call("task_end", task=t, wait=True)
                assert done["trained"] and len(done["acc"]) == t + 1
            ev = c.call("eval")
            assert len(ev["acc_matrix"]) == 2 and ev["final_avg_acc"] > 0.6
            assert set(ev) >= {"acc_matrix", "final_avg_acc", "forgetting", "bwt"}
            pr = c.predict(st.test[0][0][:20], k=2)
            assert len(pr["labels"]) == 20 and all(len(p) == 2 for p in pr["probs"])
            assert np.mean(np.array(pr["labels"]) == st.test[0][1][:20] * 10 + 7) > 0.8
            # conflicts and bad params are errors, never a dead daemon
            for params, code in [({"task": 0, "split": "train"}, P.CONFLICT),  # task 0 has ended
                                 ({"task": 5, "split": "train"}, P.CONFLICT),  # out of order
                                 ({"task": 2, "split": "valid"}, P.INVALID_PARAMS)]:
                x = np.zeros((2, 1, 8, 8), np.uint8)
                resp = c.request("ingest", {**params, "labels": [1, 2], "dtype": "uint8", "shape": [2, 1, 8, 8],
                                            "data": base64.b64encode(x.tobytes()).decode()})
                assert resp["error"]["code"] == code, resp
            bad_shape = c.request("ingest", {"task": 2, "split": "train", "labels": [1], "dtype": "uint8",
                                             "shape": [1, 1, 9, 9], "data": base64.b64encode(bytes(81)).decode()})
            assert bad_shape["error"]["code"] == P.INVALID_PARAMS and "[1, 8, 8]" in bad_shape["error"]["message"]
            tl = c.call("task_list")["tasks"]
            assert [t["state"] for t in tl] == ["trained", "trained"] and tl[0]["classes"] == [7, 17]
            s = c.call("status")
            assert s["classes_seen"] == 4 and s["tasks_trained"] == 2 and s["memory"]["capacity"] == 20
            assert s["energy"]["provenance"].startswith("estimated") and s["energy"]["total_j"] > 0
    finally:
        assert d.kill(signal.SIGTERM) == 0


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory):
    d = Mirod(tmp_path_factory.mktemp("fuzz") / "s", "daemon.max_message_bytes=65536",
              "learning.strategy=er").start()
    x, labels, _ = samples(0, 64)
    d.call("ingest", task=0, split="train", labels=labels, dtype="uint8", shape=list(x.shape),
           data=base64.b64encode(x.tobytes()).decode())
    yield d
    if d.alive():
        d.kill(signal.SIGTERM)


def _check_alive_and_intact(d):
    s = d.call("status")
    assert s["counters"]["ingested_train"] == 64 and s["flash"]["records"] == 64


def test_thousands_of_malformed_frames_never_kill_the_daemon(fuzz_daemon):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    d = fuzz_daemon
    json_values = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) |
                               hs.text(max_size=20), lambda ch: hs.lists(ch, max_size=4) |
                               hs.dictionaries(hs.text(max_size=8), ch, max_size=4), max_leaves=12)
    methods = hs.sampled_from(["ingest", "predict", "status", "task_end", "eval", "logs", "config_set",
                               "checkpoint", "nope", ""]) | hs.text(max_size=10)
    params = hs.fixed_dictionaries({}, optional={
        "task": hs.integers(-3, 5) | hs.text(max_size=3) | hs.none(), "split": hs.sampled_from(["train", "test", 1]),
        "labels": hs.lists(hs.integers(-2, 300) | hs.text(max_size=2), max_size=5),
        "dtype": hs.sampled_from(["uint8", "float32", "object", "int64", ""]),
        "shape": hs.lists(hs.integers(-1, 9), max_size=5), "data": hs.text(max_size=30) | hs.binary(max_size=30).map(
            lambda b: base64.b64encode(b).decode()), "k": hs.integers(-1, 5), "key": hs.text(max_size=20),
        "value": json_values, "level": hs.text(max_size=6), "limit": hs.integers(-5, 5) | hs.text(max_size=2)})
    requests = hs.fixed_dictionaries({"id": hs.integers() | hs.text(max_size=5) | hs.none(), "method": methods,
                                      "params": params | json_values})
    frames = (requests.map(lambda r: json.dumps(r).encode()) | json_values.map(lambda v: json.dumps(v).encode()) |
              hs.binary(max_size=200))
    count = {"n": 0}

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(frames)
    def one(body):
        count["n"] += 1
        resp = raw_request(d.sock, body)
        assert resp is not None and set(resp) >= {"id"} and ("result" in resp or "error" in resp)
        if "error" in resp:
            assert isinstance(resp["error"]["code"], int) and resp["error"]["message"]
    one()

    # truncated frames (a header promising more than comes, then close) and oversized ones
    rng = random.Random(0)
    for _ in range(300):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 50)))
        raw_request(d.sock, body, header=struct.pack(">I", len(body) + rng.randint(1, 1000)), read=False)
        count["n"] += 1
    deadline = time.monotonic() + 20  # the burst may exceed max_connections (a busy error); it drains, no leak
    while time.monotonic() < deadline:
        try:
            if d.call("status")["daemon"]["open_connections"] == 1:
                break
        except DaemonError as e:
            assert e.code == P.BUSY
        time.sleep(0.05)
    assert d.call("status")["daemon"]["open_connections"] == 1
    for n in (65537, 1 << 24, (1 << 32) - 1):
        resp = raw_request(d.sock, b"", header=struct.pack(">I", n))
        assert resp["error"]["code"] == P.TOO_LARGE and "max_message_bytes" in resp["error"]["message"]
        count["n"] += 1
    for head in (b"", b"\x00", b"\x00\x00\x01"):  # a header cut short
        raw_request(d.sock, b"", header=head, read=False)
    assert count["n"] >= 1800
    assert d.alive()
    _check_alive_and_intact(d)


def test_idle_connections_are_closed(tmp_path):
    d = Mirod(tmp_path / "s", "daemon.idle_timeout_s=0.5").start()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(d.sock)
        time.sleep(1.0)
        assert s.recv(1) == b""  # closed by the daemon
        s.close()
        assert d.call("ping")["pong"]
    finally:
        d.kill(signal.SIGTERM)


def last_checkpoint_steps(d) -> int:
    """The step count of the last checkpoint the daemons on ``d``'s state dir have logged (0: none).
    The learner logs a checkpoint only after its file is fsynced and renamed into place."""
    return ([0] + [e["steps"] for e in d.logs() if e["event"] == "checkpoint"])[-1]


def test_sigkill_at_random_moments_loses_no_acknowledged_sample(tmp_path):
    """Five SIGKILLs while a client ingests and the daemon trains online: after every restart the
    store opens, training goes on from the last checkpoint, and every acknowledged sample is there."""
    state = tmp_path / "s"
    sets = ("learning.online=true", "learning.strategy=carm-sync", "learning.checkpoint_every=15",
            "learning.batch_size=16", "session.snapshot_every=10",
            "daemon.warm_engine=true")  # each restart trains at once: kills must find checkpoints to resume
    d = Mirod(state, *sets).start()
    acked = {}  # flash id -> global sample index
    stop = threading.Event()
    k_next = [0]
    task = [0]
    errors = []  # anything but a dead daemon (retried) or a task end whose answer died with it (CONFLICT)

    def producer():
        while not stop.is_set():
            x, labels, ks = samples(k_next[0], 48)
            try:
                with Client(d.sock, timeout=20) as c:
                    r = c.call("ingest", task=task[0], split="train", labels=labels, dtype="uint8",
                               shape=list(x.shape), data=base64.b64encode(x.tobytes()).decode())
                    for j in range(r["acked"]):
                        acked[r["first_id"] + j] = int(ks[j])
                    k_next[0] += 48
                    if k_next[0] % (48 * 8) == 0:  # a task end now and then: the task boundary path too
                        c.call("task_end", task=task[0])
                        task[0] += 1
            except DaemonError as e:
                if e.code == P.CONFLICT:  # the end reached the store but its answer died with the daemon
                    task[0] += 1
                else:
                    errors.append(repr(e))
                time.sleep(0.02)
            except (ConnectionError, OSError):
                time.sleep(0.02)  # the daemon is down: retry the same batch (never acknowledged)
            except Exception as e:  # noqa: BLE001  (reported below)
                errors.append(repr(e))
                time.sleep(0.05)

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    rng = random.Random(1)
    resumed = []  # (steps of the newest checkpoint before the kill, steps right after the restart)
    try:
        for _ in range(5):
            n0, t0 = len(acked), time.monotonic()
            while len(acked) == n0 and time.monotonic() - t0 < 30:  # this process has acknowledged once
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
            assert d.kill() == -signal.SIGKILL
            before = last_checkpoint_steps(d)
            d = Mirod(state, *sets).start()  # a new process on the same state dir: the store must open
            resumed.append((before, d.call("status")["steps"]))
        time.sleep(1.0)
        stop.set()
        th.join(30)
        final = d.call("status")
    finally:
        stop.set()
        d.kill(signal.SIGTERM)
    assert not errors, errors[:5]
    assert len(acked) > 300
    # training resumed from checkpoints: every restart went back at most to the newest checkpoint
    # before its kill (never past it), no restart went back past the previous one, and it moved on
    evs = Mirod(state).logs()
    resumes = [e for e in evs if e["event"] == "resume"]
    assert len(resumes) >= 5 and sum(e.get("found_checkpoint", False) for e in resumes) >= 3
    for i, (ckpt, steps) in enumerate(resumed):
        assert steps >= ckpt, f"restart {i + 1} resumed at step {steps}, behind its checkpoint at {ckpt}: {resumed}"
        assert i == 0 or ckpt >= resumed[i - 1][0], f"checkpoints went backwards: {resumed}"
    assert resumed[-1][0] > resumed[0][0] and final["steps"] > resumed[0][1], resumed
    # every acknowledged sample is in the store, byte for byte, with its label
    with FlashTier(os.path.join(state, "state"), readonly=True) as f:
        inv = json.loads(f.get_meta("live/labels"))
        ids = sorted(acked)
        b = f.read_batch("samples", ids)
    assert b["found"].all(), f"{(~b['found']).sum()} acknowledged samples missing"
    ks = np.array([acked[i] for i in ids])
    assert (b["x"].reshape(len(ids), -1)[:, 0] == ks % 251).all()
    assert [inv[c] for c in b["labels"].tolist()] == (ks % 4).tolist()


def test_status_logs_predict_answer_while_ingest_and_training_run(tmp_path):
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=30", "learning.strategy=er").start()
    st = split_digits(5, 0)
    try:
        with d.client() as c:
            c.ingest(0, "train", *st.train[0])
            c.ingest(0, "test", *st.test[0])
            c.call("task_end", task=0, wait=True)
            c.ingest(1, "train", *st.train[1])
            c.call("task_end", task=1)  # 30 epochs: trains for a while
        errors, counts = [], {"status": 0, "logs": 0, "predict": 0, "ingest": 0}
        stop = threading.Event()

        def loop(kind):
            with d.client() as c:
                while not stop.is_set():
                    try:
                        if kind == "status":
                            assert c.call("status")["state"]
                        elif kind == "logs":
                            assert "lines" in c.call("logs", limit=5)
                        elif kind == "predict":
                            assert len(c.predict(st.test[0][0][:8])["labels"]) == 8
                        else:
                            x, y = st.train[2]
                            assert c.ingest(2, "train", x[:64], y[:64])["acked"] == 64
                        counts[kind] += 1
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"{kind}: {e!r}")
                        return
        threads = [threading.Thread(target=loop, args=(k,)) for k in counts]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4 and not errors:
            time.sleep(0.1)
        training = d.call("status")["state"]
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert all(v >= 3 for v in counts.values()), counts
        assert "training task 1" in training or d.call("status")["tasks_trained"] == 2
    finally:
        d.kill(signal.SIGTERM)


def test_sigterm_is_a_clean_exit_and_a_restart_resumes(tmp_path):
    state = tmp_path / "s"
    # warm: the 1.5 s below must land mid-training, not in the engine's imports
    d = Mirod(state, "learning.online=false", "learning.epochs=200", "learning.strategy=er",
              "daemon.warm_engine=true").start()
    st = split_digits(5, 0)
    d.call("ingest", task=0, split="train", labels=st.train[0][1].tolist(), dtype="uint8",
           shape=list(st.train[0][0].shape), data=base64.b64encode(st.train[0][0].tobytes()).decode())
    d.call("task_end", task=0)
    time.sleep(1.5)  # mid-training
    t0 = time.monotonic()
    assert d.kill(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 20
    assert not os.path.exists(d.sock)
    evs = d.logs()
    ck = [e for e in evs if e["event"] == "checkpoint"]
    assert ck and ck[-1]["task"] == 0 and ck[-1]["epoch"] > 0  # the step in progress was checkpointed
    assert evs[-1]["event"] == "stopped" and evs[-1]["clean"]
    d2 = Mirod(state, "learning.online=false", "learning.epochs=2", "learning.strategy=er").start()
    try:  # epochs is live-changeable: 2 < the position's epoch, so the task completes at once
        deadline = time.monotonic() + 60
        while d2.call("status")["tasks_trained"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d2.call("status")["tasks_trained"] == 1
        res = [e for e in d2.logs() if e["event"] == "resume"][-1]
        assert res["found_checkpoint"] and res["epoch"] == ck[-1]["epoch"]
    finally:
        d2.kill(signal.SIGTERM)


def test_live_socket_is_never_stolen_and_stale_one_is_replaced(tmp_path):
    d = Mirod(tmp_path / "a").start()
    try:  # a second daemon (another state dir) pointed at the same socket
        r = subprocess.run([PY, "-m", "miro_runtime.daemon", "--state-dir", str(tmp_path / "b"), "--socket", d.sock],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "already serves" in r.stderr
        assert d.call("ping")["pong"]
    finally:
        d.kill()  # SIGKILL leaves the socket file behind: stale
    assert os.path.exists(d.sock)
    d = Mirod(tmp_path / "a").start()  # replaces it
    try:
        assert d.call("ping")["pong"]
        assert any(e["event"] == "socket_stale_replaced" for e in d.logs())
    finally:
        d.kill(signal.SIGTERM)


def test_peer_credentials_decide_who_may_mutate(tmp_path):
    """Root runs the daemon; uid 65534 (nobody) in the socket's group may read, not mutate; a
    member of the admin group may mutate; a uid in neither group cannot connect."""
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as a second uid")
    sdir = socket_dir()
    sock = os.path.join(sdir, "mirod.sock")
    adm = 65533
    d = Mirod(tmp_path / "s", "daemon.socket_group=65534", f"daemon.admin_group={adm}", sock=sock).start()
    try:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660" and os.stat(sock).st_gid == 65534
        code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from miro_runtime.wire.client import Client, "
                "DaemonError\nout = {}\nwith Client(sys.argv[2]) as c:\n  for m in ('status', 'checkpoint'):\n"
                "    try:\n      c.call(m); out[m] = 'ok'\n    except DaemonError as e:\n"
                "      out[m] = [e.code, e.message]\nprint(json.dumps(out))")

        py, pkg_root = client_for_other_users(sdir)

        def as_user(uid, gid, groups=()):
            return subprocess.run([py, "-c", code, pkg_root, sock], capture_output=True, text=True,
                                  timeout=60, user=uid, group=gid, extra_groups=list(groups), cwd=sdir)
        r = as_user(65534, 65534)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["status"] == "ok"
        assert out["checkpoint"][0] == P.PERMISSION_DENIED and "uid 65534" in out["checkpoint"][1]
        r = as_user(65534, 65534, [adm])
        out = json.loads(r.stdout)  # the admin group may mutate (nothing to checkpoint yet: not-ready, not denied)
        assert out["status"] == "ok" and out["checkpoint"][0] == P.NOT_READY
        r = as_user(65532, 65532)  # in neither group: the socket's mode keeps it out
        assert r.returncode != 0 and "PermissionError" in r.stderr
        refused = [e for e in d.logs() if e["event"] == "peer_refused"]
        assert refused and refused[0]["peer"]["uid"] == 65534 and refused[0]["level"] == "warning"
    finally:
        d.kill(signal.SIGTERM)
        shutil.rmtree(sdir, ignore_errors=True)


def test_sighup_reload_and_the_training_pause_policy(tmp_path):
    cfg = tmp_path / "mirod.toml"
    cfg.write_text("[session]\npause_ram_floor_mb = 1e12\n[learning]\nonline = false\nepochs = 1\n")
    d = Mirod(tmp_path / "s", config=cfg).start()
    try:
        st = split_digits(5, 0)
        with d.client() as c:
            c.ingest(0, "train", *st.train[0])
            c.call("task_end", task=0)
            time.sleep(1.5)
            s = c.call("status")  # this machine's RAM is under a floor of 1e12 MB: paused
            assert s["paused"] and "pause_ram_floor_mb" in s["paused"] and s["tasks_trained"] == 0
            cfg.write_text("[session]\npause_ram_floor_mb = 1.0\n[learning]\nonline = false\nepochs = 1\n"
                           "memory = 7\n")
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while c.call("status")["tasks_trained"] < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.call("status")["tasks_trained"] == 1 and c.call("status")["paused"] is None
        kinds = {e["event"]: e for e in d.logs()}
        assert "training_paused" in kinds and "training_resumed" in kinds
        rel = kinds["config_reloaded"]
        assert rel["applied"] == {"session.pause_ram_floor_mb": 1.0}
        assert rel["restart_needed"] == {"learning.memory": 7}
        # config set: validated, kept in overrides.toml, live where it can be
        with d.client() as c:
            r = c.call("config_set", key="learning.epochs", value="3")
            assert r["applied_live"] and r["value"] == 3
            assert c.call("config_show")["config"]["learning"]["epochs"] == 3
            with pytest.raises(DaemonError) as e:
                c.call("config_set", key="learning.strategy", value="bogus")
            assert "learning.strategy" in e.value.message and "carm" in e.value.message
        assert "epochs = 3" in (tmp_path / "s" / "overrides.toml").read_text()
    finally:
        d.kill(signal.SIGTERM)


def test_inbox_and_prometheus_metrics(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    prom = tmp_path / "miro.prom"
    d = Mirod(tmp_path / "s", f"daemon.inbox_dir={inbox}", "daemon.inbox_scan_s=0.2",
              f"daemon.metrics_file={prom}", "daemon.metrics_every_s=0.3").start()
    try:
        x, labels, _ = samples(0, 40)
        tmp = tmp_path / "staging.npz"
        np.savez(tmp, x=x, y=np.array(labels), task=np.array(0))
        os.replace(tmp, inbox / "cam-0001.npz")  # write elsewhere, rename in
        (inbox / "broken.npz").write_bytes(b"not a zip")
        (inbox / ".partial.npz").write_bytes(b"ignored: hidden")
        deadline = time.monotonic() + 20
        while not (inbox / "done" / "cam-0001.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (inbox / "done" / "cam-0001.npz").exists()
        while not (inbox / "failed" / "broken.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "not a readable .npz" in (inbox / "failed" / "broken.npz.reason.txt").read_text()
        assert (inbox / ".partial.npz").exists()
        assert d.call("status")["counters"]["ingested_train"] == 40
        # a kill between committing the samples and moving the file leaves it in the inbox: the same
        # file (name, size, mtime) must not be ingested twice
        shutil.copy2(inbox / "done" / "cam-0001.npz", tmp_path / "again.npz")
        os.replace(tmp_path / "again.npz", inbox / "cam-0001.npz")
        deadline = time.monotonic() + 20
        while (inbox / "cam-0001.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (inbox / "cam-0001.npz").exists()
        assert d.call("status")["counters"]["ingested_train"] == 40
        assert any(e["event"] == "inbox_ingested" and e["result"].get("already_ingested") for e in d.logs())
        time.sleep(0.8)
        text = prom.read_text()
        assert "miro_up 1.0" in text and "miro_samples_ingested" in text and 'split="train"' in text
        assert not list(tmp_path.glob("miro.prom.*"))  # written through a temp file + rename
    finally:
        d.kill(signal.SIGTERM)


def test_a_state_dir_it_cannot_resume_is_a_clear_refusal(tmp_path):
    state = tmp_path / "s"
    d = Mirod(state, "learning.online=false", "learning.epochs=1", "learning.strategy=er").start()
    st = split_digits(5, 0)
    with d.client() as c:
        c.ingest(0, "train", *st.train[0])
        c.call("task_end", task=0, wait=True)
    assert d.kill(signal.SIGTERM) == 0

    def start(*sets):
        r = subprocess.run([PY, "-m", "miro_runtime.daemon", "--state-dir", str(state), *sum((["--set", s] for s in
                                                                                               sets), [])],
                           capture_output=True, text=True, timeout=120)
        return r
    r = start("learning.strategy=der")  # another learner than the one that made the state
    assert r.returncode == 65 and "learning.strategy = 'er' there, 'der' here" in r.stderr
    assert "Traceback" not in r.stderr
    good = (state / "checkpoint.pt").read_bytes()
    (state / "checkpoint.pt").write_bytes(good[:len(good) // 2])  # cut short
    r = start("learning.strategy=er")
    assert r.returncode == 65 and "checkpoint.pt" in r.stderr and "Traceback" not in r.stderr
    assert "weights_only=False" not in r.stderr
    os.replace(state / "checkpoint.pt", tmp_path / "aside.pt")  # checkpoints gone: refused unless asked
    if (state / "checkpoint.prev.pt").exists():
        os.replace(state / "checkpoint.prev.pt", tmp_path / "aside.prev.pt")
    r = start("learning.strategy=er")
    assert r.returncode == 65 and "--retrain-from-store" in r.stderr and "Traceback" not in r.stderr
    d = Mirod(state, "learning.online=false", "learning.epochs=1", "learning.strategy=er",
              args=["--retrain-from-store"]).start()
    try:
        deadline = time.monotonic() + 60
        while d.call("status")["tasks_trained"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        s = d.call("status")
        assert s["tasks_trained"] == 1 and s["flash"]["records"] == len(st.train[0][1])
    finally:
        d.kill(signal.SIGTERM)


def test_backpressure_is_a_busy_error_with_nothing_stored(tmp_path):
    # one ingest written at a time, no waiting: a concurrent one must be refused whole, never half-stored
    d = Mirod(tmp_path / "s", "session.max_inflight=1", "session.ingest_timeout_s=0").start()
    try:
        results = []

        def send(k):
            x, labels, _ = samples(k * 4096, 4096, shape=(1, 28, 28))
            try:
                with d.client() as c:
                    results.append(c.ingest(0, "train", x, labels)["acked"])
            except DaemonError as e:
                results.append(e)
        for _ in range(5):
            ts = [threading.Thread(target=send, args=(k,)) for k in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
        busy = [r for r in results if isinstance(r, DaemonError)]
        assert busy and all(e.code == P.BUSY and "nothing was stored" in e.message for e in busy)
        acked = sum(r for r in results if isinstance(r, int))
        s = d.call("status")
        assert s["flash"]["records"] == acked == s["counters"]["ingested_train"]
    finally:
        d.kill(signal.SIGTERM)


def test_ingest_an_image_folder_by_path(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for t, classes in enumerate([["3", "5"], ["7"]]):
        for c in classes:
            (root / f"task{t}" / c).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(root / f"task{t}" / c / f"{i}.png")
    d = Mirod(tmp_path / "s", "learning.online=false", "learning.epochs=1").start()
    try:
        r = d.call("ingest", path=str(root))
        assert r["tasks"] == [0, 1] and r["acked"] == 36
        deadline = time.monotonic() + 60
        while d.call("status")["tasks_trained"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        tl = d.call("task_list")["tasks"]
        assert [t["classes"] for t in tl] == [[3, 5], [7]] and all(t["state"] == "trained" for t in tl)
        with d.client() as c:
            resp = c.request("ingest", {"path": str(tmp_path / "nope")})
        assert resp["error"]["code"] == P.INVALID_PARAMS and "does not exist" in resp["error"]["message"]
    finally:
        d.kill(signal.SIGTERM)
