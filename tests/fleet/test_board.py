"""A board's side of a fleet round, over a real mirod's socket (no Flower: the methods the ClientApp shim calls).
The model goes out with its label map and class counts; the aggregate comes back aligned by client label, new
classes are adopted durably (a SIGKILL after adoption keeps them, and a later task of an adopted class trains);
a reply that does not fit is refused by name; a round the board skips is refused with its reason."""
import base64
import io

import numpy as np
import pytest
from daemon_util import Mirod

from miro_runtime.engine.streams import split_digits
from miro_runtime.wire.client import DaemonError
from miro_runtime.wire.protocol import BUSY, INVALID_PARAMS, NOT_READY

SETS = ("learning.online=false", "learning.epochs=2", "learning.strategy=er", "learning.memory=20",
        "fleet.join_every=2")


def npy(a) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def arr(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)


@pytest.fixture(scope="module")
def digits():
    s = split_digits(5, 0)
    return s  # task t holds digits 2t, 2t+1


def train_task(d: Mirod, s, t_local: int, t_stream: int):
    x, y = s.train[t_stream]
    with d.client() as c:
        c.ingest(t_local, "train", x, y)
        c.ingest(t_local, "test", *s.test[t_stream])
        c.call("task_end", task=t_local, wait=True, timeout=300)


def test_a_round_exports_adopts_by_label_and_survives_a_kill(tmp_path, digits):
    d = Mirod(tmp_path / "b", *SETS).start()
    try:
        with pytest.raises(DaemonError) as e:  # nothing trained: refused, saying why
            d.call("fleet_train", server_round=2)
        assert e.value.code == NOT_READY and "no task has trained" in str(e.value)
        train_task(d, digits, 0, 1)  # digits 2, 3
        with pytest.raises(DaemonError) as e:  # fleet.join_every = 2: odd rounds are refused with the reason
            d.call("fleet_train", server_round=1)
        assert e.value.code == BUSY and "join_every" in str(e.value)

        out = d.call("fleet_train", server_round=2, steps=3, rounds=9)
        assert d.call("status")["fleet"]["next_round"] == {"round": 4, "of": 9}  # fleet.join_every = 2
        assert out["labels"] == [2, 3] and out["head"] == ["head.fc.weight", "head.fc.bias"]
        n2, n3 = int((digits.train[1][1] == 2).sum()), int((digits.train[1][1] == 3).sum())
        assert out["counts"] == [n2, n3] and out["samples"] == n2 + n3 and out["steps"] == 3
        arrays = {k: arr(v) for k, v in out["arrays"].items()}
        assert arrays["head.fc.weight"].shape[0] == 2 and out["shapes"]["head.fc.weight"][0] == 2
        assert out["energy_j"] is not None and d.call("status")["budget"] is None

        # the fleet's aggregate, in another order with a class this board never saw (7): rows go by label
        w, b = arrays["head.fc.weight"], arrays["head.fc.bias"]
        new_w = np.stack([w[1], np.full_like(w[0], 0.01), w[0]])
        new_b = np.array([b[1], -5.0, b[0]], dtype=b.dtype)
        sent = {**{k: npy(v) for k, v in arrays.items()}, "head.fc.weight": npy(new_w), "head.fc.bias": npy(new_b)}
        bad = dict(sent, **{"features.0.weight": npy(np.zeros((3, 3), np.float32))})
        with pytest.raises(DaemonError) as e:  # a shape that does not fit: refused by name, nothing changed
            d.call("fleet_evaluate", server_round=2, arrays=bad, labels=[3, 7, 2])
        assert e.value.code == INVALID_PARAMS and "'features.0.weight'" in str(e.value)
        assert d.call("status")["class_labels"] == [2, 3]
        ev = d.call("fleet_evaluate", server_round=2, arrays=sent, labels=[3, 7, 2])
        assert ev["adopted"] == [7] and ev["classes"] == 3 and 0.5 < ev["acc"] <= 1.0
        st = d.call("status")
        assert st["class_labels"] == [2, 3, 7] and st["fleet"]["rounds"] == {"train": 1, "evaluate": 1}
        assert st["fleet"]["refusals"] == 3 and st["budget"] is None
        again = d.call("fleet_train", server_round=8, steps=0, rounds=9)  # rows came back where their labels are
        assert d.call("status")["fleet"]["next_round"] is None  # round 10 would be past the server's 9
        got = {k: arr(v) for k, v in again["arrays"].items()}
        assert again["labels"] == [2, 3, 7] and again["counts"][2] == 0
        assert np.allclose(got["head.fc.weight"][0], w[0]) and np.allclose(got["head.fc.weight"][1], w[1])
        assert np.allclose(got["head.fc.bias"][2], -5.0)
        # inside the energy budget: a round's joules are booked as "fleet"; once spent, rounds are refused
        d.call("budget_set", energy_j=1e-6)
        with pytest.raises(DaemonError) as e:
            for rnd in (10, 12):
                d.call("fleet_train", server_round=rnd, steps=2)
        assert e.value.code == BUSY and "energy budget" in str(e.value)
        assert d.call("budget_show")["budget"]["spent_j"]["fleet"] > 0
        d.call("budget_set", none=True)
    finally:
        d.kill()  # SIGKILL: the adopted class must be in the stored label map

    r = Mirod(tmp_path / "b", *SETS).start()
    try:
        assert r.call("status")["class_labels"] == [2, 3, 7]
        x, y = digits.train[3]  # digits 6, 7: 7 is the adopted class, 6 is new; both train
        with r.client() as c:
            c.ingest(1, "train", x, y)
            c.ingest(1, "test", *digits.test[3])
            res = c.call("task_end", task=1, wait=True, timeout=300)
        assert res["trained"] and r.call("status")["class_labels"] == [2, 3, 7, 6]
        out = r.call("fleet_train", server_round=6, steps=0)
        assert out["labels"] == [2, 3, 7, 6] and out["counts"][2] == int((y == 7).sum())
        xt, yt = digits.test[3]
        pred = np.asarray(r.call("predict", shape=list(xt.shape), dtype="uint8",
                                 data=base64.b64encode(xt.tobytes()).decode(), k=1)["labels"])
        assert np.mean(pred == yt) > 0.5
    finally:
        r.kill()
