"""Ingest the bundled digits set into a flash tier, read it back, and swap some into RAM.

    python examples/ingest_and_read.py [STATE_DIR]
"""
import argparse
import tempfile

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("state_dir", nargs="?", help="where the flash tier goes (default: a new temporary directory)")
state = ap.parse_args().state_dir or tempfile.mkdtemp(prefix="miro-example-")

# after the arguments: --help answers at once instead of after seconds of importing torch and scikit-learn
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from miro_runtime.storage import FlashTier, RamTier, SampleSpec, SwapEngine  # noqa: E402

digits = load_digits()
x = (digits.images * 15).astype(np.uint8)[:, None]  # (N, 1, 8, 8): 0..16 -> 0..240, stays uint8
y = digits.target

with FlashTier(state) as flash:
    flash.declare_samples("samples", SampleSpec(shape=(1, 8, 8), num_classes=10, budget_records=1000))
    for i in range(0, len(y), 256):  # each put_batch returns once the batch is fsynced
        flash.put_batch("samples", list(x[i:i + 256]), y[i:i + 256], np.zeros(len(y[i:i + 256])))
    print("stored per class:", flash.class_counts("samples").tolist(), "(budget 1000, class-balanced)")

    ids = flash.class_ids("samples", 3)[:5]
    batch = flash.read_batch("samples", ids)
    assert (batch["labels"] == 3).all()
    print("read back ids", ids.tolist(), "labels", batch["labels"].tolist())

    ram = RamTier(20, (1, 8, 8))  # a 20-sample episodic memory in RAM
    for c in range(10):
        for sid in flash.class_ids("samples", c)[:2]:
            rec = flash.get_samples("samples", [sid])[0]
            ram.append(torch.from_numpy(rec.array.copy()), rec.label, rec.sample_id)
    swap = SwapEngine(flash, ram)
    swap.request_swap(slots=[0, 1], classes=[0, 0])  # returns at once; a worker refills the slots
    swap.drain()
    print("swap counters:", {k: swap.stats()[k] for k in ("requested", "completed", "dropped")})
    swap.close()
print("state directory:", state)
