"""Atomic, checksummed checkpoints that keep the previous good one.

File: ``MIROCKPT`` + format byte + sha256 (32 B) + payload length (8 B, big-endian) + the payload,
which ``torch.save`` wrote and ``torch.load(weights_only=True)`` reads (tensors, numbers, strings
and containers only, never code). Saving writes a temp file, fsyncs it, moves the current
``checkpoint.pt`` to ``checkpoint.prev.pt``, renames the temp file in and fsyncs the directory. A
damaged latest checkpoint (checksum, length, or torch refusing it) is reported and the previous
one is used; plain torch files from before the envelope still load (no checksum to check).

Each checkpoint records the flash tier's manifests (storage/meta.py) as they were when it was taken;
a resume checks them against the store's manifest log, so a checkpoint is never continued on a store
other than the one it was taken against (altered, replaced, rolled back).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import struct
from dataclasses import asdict
from typing import Callable, Optional

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


def load_latest(run_dir: str, accept: Optional[Callable] = None) -> tuple:
    """(state or None, the file it came from, [problems with the files tried]). Files that do not
    exist are no problem; a damaged latest one sends us to the previous one, and so does one that
    ``accept(state, path)`` refuses (it returns why, or None)."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        try:
            st = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        why = accept(st, path) if accept is not None else None
        if why is None:
            return st, path, problems
        problems.append(why)
    return None, None, problems


def store_manifests(flash) -> dict:
    """What a checkpoint records of the store: {namespace: manifest fields}."""
    return {ns: asdict(m) for ns, m in flash.manifests().items()}


def manifest_mismatch(flash, st: dict, path: str) -> Optional[str]:
    """Why the store is not the one checkpoint ``st`` was taken against, or None. A checkpoint from
    before manifests, or a state before the store's log begins (pruned; a salvaged or upgraded store
    starts a fresh log) cannot be told apart and is accepted, as before."""
    from miro_runtime.storage import StoreError
    from miro_runtime.storage.meta import Manifest
    recorded = json.loads(st["store"]).get("manifests") if "store" in st else None
    diffs = []
    for ns, fields in (recorded or {}).items():
        want = Manifest(**fields)
        try:
            flash.spec(ns)
        except StoreError:
            diffs.append(f"namespace {ns!r} is missing from the store")
            continue
        logged, span = flash.manifest_at(ns, want.seen), flash.manifest_log_span(ns)
        if logged and want not in logged:
            diffs.append(f"namespace {ns!r} after {want.seen} samples: " + ", ".join(
                f"{d} (store != checkpoint)" for d in logged[-1].differences(want)))
        elif not logged and span is not None and span[0] <= want.seen <= span[1]:
            diffs.append(f"namespace {ns!r}: the store's history ({span[0]}..{span[1]} samples seen) never "
                         f"held the state after {want.seen} samples that the checkpoint recorded")
    if not diffs:
        return None
    return (f"{path} was taken against a store that differs from the one in its run directory: "
            + "; ".join(diffs) + f". `miro store verify {flash.path}` says what is damaged; "
            f"`miro store salvage {flash.path} NEW_DIR` copies every readable record into a fresh store")


def any_checkpoint(run_dir: str) -> Optional[str]:
    for name in (CHECKPOINT, PREVIOUS):
        if os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None
