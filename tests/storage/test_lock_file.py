"""README: a lock.mdb that LMDB cannot use is set aside as lock.mdb.damaged and made afresh (it holds
only reader slots, no data), and the store opens with every record. LMDB itself resets a lock file
full of garbage when it is the only process (the damage suite's garbage case resumes exactly); one
it cannot open at all -- here a directory in its place -- takes the rename path."""
import os

import numpy as np

from miro_runtime.storage import FlashTier, SampleSpec


def test_an_unusable_lock_file_is_set_aside_and_the_store_opens_whole(tmp_path):
    d = str(tmp_path / "s")
    f = FlashTier(d)
    f.declare_samples("samples", SampleSpec(shape=(1, 4, 4), num_classes=3))
    f.put_batch("samples", list(np.arange(48, dtype=np.uint8).reshape(3, 1, 4, 4)), [0, 1, 2], [0, 0, 0])
    f.close()
    os.remove(os.path.join(d, "lock.mdb"))
    os.mkdir(os.path.join(d, "lock.mdb"))
    with open(os.path.join(d, "lock.mdb", "marker"), "w") as fh:
        fh.write("kept for a post-mortem")
    f = FlashTier(d)
    try:
        assert f.class_counts("samples").tolist() == [1, 1, 1]
        assert f.read_batch("samples", [0, 1, 2])["labels"].tolist() == [0, 1, 2]
    finally:
        f.close()
    assert os.path.isfile(os.path.join(d, "lock.mdb"))
    assert open(os.path.join(d, "lock.mdb.damaged", "marker")).read() == "kept for a post-mortem"
