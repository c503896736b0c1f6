"""The fleet's ClientApp: a shim that forwards Flower's messages to the board's mirod over its control socket
and returns what mirod answers. Flower starts a fresh process for every message, so this imports neither torch
nor the engine (a ~0.45 GB import per message otherwise); arrays pass through as the .npy bytes Flower's
``Array`` already holds. The socket comes from the SuperNode's node config (``socket``), which mirod sets when
it starts the SuperNode.
"""

from __future__ import annotations

import base64

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from miro_runtime.wire.client import Client, DaemonError, NoDaemon

app = ClientApp()

ERR_REFUSED = 600  # mirod refused the round (busy, paused, budget spent, a skipped round): the reason says which
ERR_NO_DAEMON = 601  # no mirod answers on the socket the node config names
NUMPY = "numpy.ndarray"


def _arrays_in(msg: Message) -> tuple:
    """(arrays as base64 .npy, labels) from a server message, or (None, None) when it sends no model."""
    rd = msg.content
    if "arrays" not in rd.array_records:
        return None, None
    rec = rd.array_records["arrays"]
    arrays = {}
    for k, a in rec.items():
        if a.stype != NUMPY:
            raise ValueError(f"array {k!r} is serialised as {a.stype!r}; the fleet sends {NUMPY}")
        arrays[k] = base64.b64encode(a.data).decode("ascii")
    return arrays, [int(v) for v in rd.config_records["fleet"]["labels"]]


def _call(msg: Message, context: Context, method: str, **params) -> Message:
    sock = str(context.node_config.get("socket", ""))
    cfg = msg.content.config_records.get("config", ConfigRecord())
    try:
        arrays, labels = _arrays_in(msg)
        params["server_round"] = int(cfg.get("server-round", 0))
        params["rounds"] = int(cfg.get("rounds", 0))
        if arrays is not None:
            params.update(arrays=arrays, labels=labels)
        timeout = float(cfg.get("timeout", 600.0))
        with Client(sock, timeout=timeout + 30) as c:
            out = c.call(method, timeout=timeout, **params)
    except NoDaemon as e:
        return Message(Error(ERR_NO_DAEMON, str(e)), reply_to=msg)
    except (DaemonError, ValueError, OSError) as e:
        return Message(Error(ERR_REFUSED, f"{context.node_config.get('name', '?')}: {e}"), reply_to=msg)
    name = str(context.node_config.get("name", ""))
    meta = ConfigRecord({"board": name, "adopted": [int(v) for v in out.get("adopted", [])]})
    metrics = {k: float(out[k]) for k in ("loss", "acc", "energy_j", "seconds") if out.get(k) is not None}
    metrics["classes"] = int(out.get("classes", 0))
    content = RecordDict({"fleet": meta})
    if "arrays" in out:
        rec = ArrayRecord()
        for k, data in out["arrays"].items():
            rec[k] = Array(dtype=out["dtypes"][k], shape=tuple(out["shapes"][k]), stype=NUMPY,
                           data=base64.b64decode(data))
        content["arrays"] = rec
        meta.update({"labels": [int(v) for v in out["labels"]], "counts": [int(v) for v in out["counts"]],
                     "head": list(out["head"])})
        metrics["num-examples"] = int(out["samples"])
    else:
        metrics["num-examples"] = int(out.get("test_samples", 0))
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    steps = msg.content.config_records.get("config", ConfigRecord()).get("steps")
    return _call(msg, context, "fleet_train", **({} if steps is None else {"steps": int(steps)}))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _call(msg, context, "fleet_evaluate")
