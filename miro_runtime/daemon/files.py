"""Samples from files and from the wire, as arrays: an ``.npz`` (arrays x, y, optional task and
split), an image folder (the folder stream's layouts, one task per folder task), and a base64
string of raw C-order bytes with its shape and dtype. The daemon reads them for ``ingest``,
``predict`` and its inbox; the CLI reads its ``.npz`` files the same way. A file's batches are
named by its content (``file_batch_id``), so re-sending a file after a kill never stores it twice.
numpy and the engine are imported when a file is read, never on import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np


class SampleError(ValueError):
    """Input that cannot be read as samples; the message names the file or the field."""


@dataclass
class Samples:
    """What one ``.npz`` holds: ``x`` images (n, c, h, w) (a (n, h, w) file gets c = 1), ``y`` one
    label per image (None when the file has no labels), and the task and split it names (or None)."""

    x: np.ndarray
    y: Optional[list]
    task: Optional[int]
    split: Optional[str]


@dataclass
class FolderTask:
    """One task of an image folder: train and test images (n, c, h, w) with their labels (a class
    folder named by digits keeps its number as the label; others are numbered in order)."""

    x: np.ndarray
    labels: list
    test_x: np.ndarray
    test_labels: list


def read_npz(path: str, need_labels: bool = True) -> Samples:
    """The samples of an .npz; ``need_labels``: its array 'y' must hold integer labels (else y is not read)."""
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as z:
            x = z["x"] if "x" in z else None
            y = z["y"] if need_labels and "y" in z else None
            task = int(z["task"]) if "task" in z and z["task"].ndim == 0 else None  # an array: not a task
            split = str(z["split"]) if "split" in z else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a text file, a truncated zip, ...
        raise SampleError(f"{path}: not a readable .npz ({e})") from None
    if x is None or (need_labels and y is None):
        raise SampleError(f"{path}: an .npz needs arrays 'x' and 'y'" if need_labels else
                          f"{path}: an .npz needs an array 'x'")
    if x.ndim not in (3, 4):
        raise SampleError(f"{path}: array 'x' must be images (n, c, h, w) or (n, h, w), got shape {list(x.shape)}")
    if y is not None and y.dtype.kind not in "iu":  # never truncated into classes: 0.5 is not class 0
        kind = {"f": "float", "U": "string", "S": "bytes", "b": "boolean", "c": "complex"}.get(y.dtype.kind, "")
        raise SampleError(f"{path}: array 'y' holds {kind or y.dtype.name} labels ({y.dtype}); labels must be "
                          f"integers")
    labels = None if y is None else y.reshape(-1).tolist()
    return Samples(x[:, None] if x.ndim == 3 else x, labels, task, split)


def sha256_of(path: str) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_batch_id(digest: str, start: int, stop: int) -> str:
    """The batch id of samples [start, stop) of a file whose sha256 is ``digest`` (89 bytes at most). The
    range, not a batch number: a resend with another batch size never takes new samples for stored ones."""
    return f"sha256:{digest}:{start}-{stop}"


def read_folder(path: str) -> list:
    """Every task of an image folder, in order: a list of FolderTask."""
    from miro_runtime.engine.streams import folder_stream
    st = folder_stream(path, seed=0)
    names = st.info.get("class_names", [])
    label = [int(n) if str(n).isdigit() else i for i, n in enumerate(names)]
    out = []
    for t in range(len(st.tasks)):
        (x, y), (xt, yt) = st.train[t], st.test[t]
        out.append(FolderTask(x, [label[c] for c in y.tolist()], xt, [label[c] for c in yt.tolist()]))
    return out


def decode_array(shape: list, dtype: str, data: str) -> np.ndarray:
    """The array a request carries: ``data`` is base64 of the raw C-order bytes of ``shape`` ``dtype``."""
    import numpy as np
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SampleError(f"data is not valid base64: {e}") from None
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != want:
        raise SampleError(f"data holds {len(raw)} bytes; shape {shape} of {dtype} needs {want}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable: torch wants to own it
