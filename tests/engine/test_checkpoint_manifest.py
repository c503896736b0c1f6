"""A checkpoint records the store's manifests; loading one checks them against the store's manifest
log: a mismatch in the latest falls back to the previous checkpoint, a mismatch in both is refused."""
import json
import os
from dataclasses import replace

import numpy as np

from miro_runtime.engine.checkpoint import CHECKPOINT, load_latest, manifest_mismatch, save_checkpoint, store_manifests
from miro_runtime.storage import FlashTier, SampleSpec


def put(f, n, label):
    f.put_batch("samples", [np.full((1, 2, 2), label, np.uint8)] * n, [label] * n, [0] * n)


def rewrite_log(f, seen):
    """The log entry at ``seen`` replaced by one with another digest (the store stays self-consistent)."""
    m = f.manifest_at("samples", seen)[-1]

    def job(txn):
        prefix = f"ns/samples/mlog/{seen:012d}/".encode()
        for k in [bytes(k) for k in txn.cursor(db=f._meta).iternext(values=False) if bytes(k).startswith(prefix)]:
            txn.delete(k, db=f._meta)
        other = replace(m, digest=m.digest ^ 1)
        f._meta_put(txn, f"ns/samples/mlog/{seen:012d}/{other.digest:016x}", other.to_json())
        return None, None
    f._write(job)


def test_latest_mismatch_falls_back_to_the_previous_checkpoint_and_both_is_a_refusal(tmp_path):
    f = FlashTier(str(tmp_path / "state"))
    f.declare_samples("samples", SampleSpec(shape=(1, 2, 2), num_classes=3))
    path = os.path.join(tmp_path, CHECKPOINT)
    for label in (0, 1):  # checkpoint.prev.pt after 4 samples, checkpoint.pt after 8
        put(f, 4, label)
        save_checkpoint(path, {"position": {"task": label}, "strategy": {},
                               "store": json.dumps({"manifests": store_manifests(f)})})

    def accept(st, p):
        return manifest_mismatch(f, st, p)
    st, used, problems = load_latest(str(tmp_path), accept)
    assert used == path and not problems
    rewrite_log(f, 8)
    st, used, problems = load_latest(str(tmp_path), accept)
    assert used.endswith("checkpoint.prev.pt") and st["position"] == {"task": 0}
    assert len(problems) == 1 and "after 8 samples: digest" in problems[0] and "miro store verify" in problems[0]
    rewrite_log(f, 4)
    st, used, problems = load_latest(str(tmp_path), accept)
    assert st is None and len(problems) == 2
    f.prune_manifest_log({"samples": 9})  # a state before the log begins cannot be told: accepted, as before
    assert manifest_mismatch(f, {"store": json.dumps({"manifests": {"samples": {
        "count": 1, "min_id": 0, "max_id": 0, "digest": 5, "seen": 4}}})}, path) is None
    assert manifest_mismatch(f, {"store": json.dumps({"seen": 8})}, path) is None  # a checkpoint from before
    f.close()
