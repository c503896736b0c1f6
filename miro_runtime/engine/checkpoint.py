"""Atomic, checksummed checkpoints that keep the previous good one.

File: ``MIROCKPT`` + format byte + sha256 (32 B) + payload length (8 B, big-endian) + the payload,
which ``torch.save`` wrote and ``torch.load(weights_only=True)`` reads (tensors, numbers, strings
and containers only, never code). Saving writes a temp file, fsyncs it, moves the current
``checkpoint.pt`` to ``checkpoint.prev.pt``, renames the temp file in and fsyncs the directory. A
damaged latest checkpoint (checksum, length, or torch refusing it) is reported and the previous
one is used; plain torch files from before the envelope still load (no checksum to check).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import struct
from typing import Optional

import torch

MAGIC = b"MIROCKPT"
FORMAT = 1
_HEAD = struct.Struct(">8sB32sQ")
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


def save_checkpoint(path: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(_HEAD.pack(MAGIC, FORMAT, hashlib.sha256(payload).digest(), len(payload)))
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    prev = os.path.join(os.path.dirname(path), PREVIOUS) if os.path.basename(path) == CHECKPOINT else path + ".prev"
    if os.path.exists(path):
        os.replace(path, prev)  # a crash right here leaves prev (and the temp file): load falls back to prev
    os.replace(tmp, path)
    for left in glob.glob(f"{glob.escape(path)}.tmp.*"):  # temp files of saves a kill interrupted
        try:
            os.remove(left)
        except OSError:
            pass
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_checkpoint(path: str) -> dict:
    """Verify and load one checkpoint file; CheckpointError saying what is wrong with it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if data[:8] == MAGIC:
        if len(data) < _HEAD.size:
            raise CheckpointError(f"{path}: cut short inside its header ({len(data)} bytes)")
        _, fmt, digest, n = _HEAD.unpack_from(data, 0)
        if fmt > FORMAT:
            raise CheckpointError(f"{path}: written by a newer miro-runtime (format {fmt})")
        payload = data[_HEAD.size:]
        if len(payload) != n:
            raise CheckpointError(f"{path}: {len(payload)} payload bytes, its header says {n} (cut short?)")
        if hashlib.sha256(payload).digest() != digest:
            raise CheckpointError(f"{path}: checksum mismatch (the file was damaged after it was written)")
    elif data[:2] == b"PK":
        payload = data  # a checkpoint from before the envelope: torch's zip, no checksum
    else:
        raise CheckpointError(f"{path}: not a miro checkpoint ({len(data)} bytes, no MIROCKPT header)")
    try:
        st = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; its text would suggest weights_only=False
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__})") from None
    if not isinstance(st, dict) or "position" not in st or "strategy" not in st:
        raise CheckpointError(f"{path}: holds no miro checkpoint (no position or strategy state)")
    return st


def load_latest(run_dir: str) -> tuple:
    """(state or None, the file it came from, [problems with the files tried]). Files that do not
    exist are no problem; a damaged latest one sends us to the previous one."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            return load_checkpoint(path), path, problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, None, problems


def any_checkpoint(run_dir: str) -> Optional[str]:
    for name in (CHECKPOINT, PREVIOUS):
        if os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None
