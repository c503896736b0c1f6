"""Latent replay in mirod (engine/latent.py behind the socket): a real daemon with EfficientNet-Lite0 on its
packaged weights stores each ingested batch's latents beside the raw samples in one transaction, trains
on latents, predicts from raw images, and after a SIGKILL resumes on the latents it stored."""
import signal
import subprocess
import time

import numpy as np
import pytest
from daemon_util import PY, Mirod

from miro_runtime.engine.latent import NS_LATENT, NS_RAW
from miro_runtime.engine.streams import split_digits
from miro_runtime.storage import FlashTier

LATENT = ("learning.model=efficientnet-lite0", "learning.latent_replay=true", "learning.input_size=32",
          "learning.freeze_blocks=15", "learning.online=false", "learning.epochs=5", "learning.strategy=carm",
          "learning.memory=40", "learning.lr=0.01",
          "daemon.warm_engine=true")  # trains at once: the engine imported before READY
# frozen through block 15, not the default 11 (tests/engine/test_latent.py checks the default): a replay step
# then trains stage 7 and the head only, about a third of the test's time on the CI's two cores


def wait_trained(d, n, timeout=180):
    deadline = time.monotonic() + timeout
    while d.call("status")["tasks_trained"] < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return d.call("status")


def test_mirod_trains_on_latents_and_resumes_on_them_after_sigkill(tmp_path):
    state = tmp_path / "s"
    st = split_digits(5, 0)
    d = Mirod(state, *LATENT).start()
    try:
        with d.client() as c:
            for t in range(2):
                x, y = st.train[t]
                r = c.ingest(t, "train", x, y + 3)  # client labels 3-6: a new class grows every namespace
                assert r["stored"] == len(y)
                c.ingest(t, "test", *st.test[t][:1], labels=st.test[t][1] + 3)
                done = c.call("task_end", task=t, wait=True)
                assert done["trained"]
            s = c.call("status")
            n_train = sum(len(st.train[t][1]) for t in range(2))
            z = s["flash"]["latents"]
            assert s["stored"]["train"] == n_train and z["records"] == n_train  # one latent per raw sample
            assert z["shape"][1:] == [1, 1] and "blocks=15" in z["frozen"]  # 32 px in, stage 6's output at 1/32
            payload = n_train * int(np.prod(z["shape"])) * 2  # float16; each record adds its header
            assert payload <= z["bytes"] <= payload + n_train * 128, (z["bytes"], payload)
            assert s["swap"]["completed"] > 0  # CarM swapped latents between flash and the RAM memory
            ev = c.call("eval")
            assert ev["final_avg_acc"] > 0.75, ev  # 4 classes: chance is 0.25 (measured: 0.93)
            pr = c.predict(st.test[0][0], k=1)  # raw images in: the frozen part runs inside predict...
            # ...and answers what evaluation on the encoded test set measured for the same model
            assert np.mean(np.array(pr["labels"]) == st.test[0][1] + 3) == pytest.approx(ev["acc_matrix"][1][0])
            x, y = st.train[2]
            c.ingest(2, "train", x, y + 3)  # stored, not trained: a kill now leaves it to the next process
            c.ingest(2, "test", *st.test[2][:1], labels=st.test[2][1] + 3)
    except BaseException:
        d.kill()  # a failed assertion must not leave a daemon behind
        raise
    d.kill(signal.SIGKILL)

    with FlashTier(str(state / "state"), readonly=True) as f:
        raw, lat = f.class_counts(NS_RAW), f.class_counts(NS_LATENT)
        assert raw.tolist() == lat.tolist() and raw.sum() == n_train + len(y)  # both namespaces in step
        ids = np.sort(np.concatenate([f.class_ids(NS_LATENT, k) for k in range(len(lat))]))
        assert np.array_equal(ids, np.sort(np.concatenate([f.class_ids(NS_RAW, k) for k in range(len(raw))])))

    d2 = Mirod(state, *LATENT).start()
    try:
        s = d2.call("status")
        assert s["tasks_trained"] == 2 and s["flash"]["latents"]["records"] == n_train + len(y)
        with d2.client() as c:  # the checkpointed top and head, as they were
            again = c.predict(st.test[0][0], k=1)
        assert again["labels"] == pr["labels"] and np.allclose(again["probs"], pr["probs"], atol=1e-5)
        d2.call("task_end", task=2, wait=True)
        s = wait_trained(d2, 3)
        assert s["tasks_trained"] == 3 and s["last_acc"][2] > 0.75, s["last_acc"]
        resumed = [e for e in d2.logs() if e["event"] == "session_resume"]
        assert resumed and resumed[-1]["open_task"] == 2
    finally:
        assert d2.kill(signal.SIGTERM) == 0


def test_mirod_refuses_latent_settings_it_cannot_keep(tmp_path):
    def start(state, *sets):
        return subprocess.run([PY, "-m", "miro_runtime.daemon", "--state-dir", str(state),
                               *sum((["--set", s] for s in sets), [])], capture_output=True, text=True, timeout=120)
    r = start(tmp_path / "a", *LATENT, "learning.drop_raw=true")
    assert r.returncode != 0 and "learning.drop_raw: the daemon keeps the raw samples" in r.stderr, r.stderr[-2000:]
    # what shaped a state dir's store cannot change under it: latents of another frozen depth are refused
    d = Mirod(tmp_path / "b", *LATENT).start()
    x, y = split_digits(5, 0).train[0]
    with d.client() as c:
        c.ingest(0, "train", x[:32], y[:32])
    assert d.kill(signal.SIGTERM) == 0
    r = start(tmp_path / "b", *LATENT, "learning.freeze_blocks=9")
    assert r.returncode == 65 and "learning.freeze_blocks = 15 there, 9 here" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
