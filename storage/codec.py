"""Record codec: a fixed 58-byte header + raw tensor bytes (+ optional float32 aux vector).

No pickle: decoding reads a struct header and wraps the payload with ``np.frombuffer``, so a
record read from flash can never execute code, and a uint8 image stays uint8 (784 B for 28x28).
A crc32 over header and payload turns silent corruption into an error that names the key.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import NamedTuple, Optional

import numpy as np

from .errors import BadRecordError, CorruptRecordError

MAGIC = b"MR"
VERSION = 1
MAX_NDIM = 4

# magic, version, dtype code, ndim, flags, shape[4], label, task, sample id, timestamp,
# aux count (float32 values), payload bytes, crc32
_HEADER = struct.Struct("<2sBBBB4IiiQdIII")
HEADER_SIZE = _HEADER.size  # 58
_CRC_OFFSET = HEADER_SIZE - 4

_DTYPES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float16),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
    9: np.dtype(np.bool_),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}

BLOB_MAGIC = b"MB"
_BLOB_HEADER = struct.Struct("<2sBI")  # magic, version, crc32 of payload


class Record(NamedTuple):
    """One decoded sample. ``array`` is a read-only view over the stored bytes."""

    array: np.ndarray
    label: int
    task: int
    sample_id: int
    timestamp: float
    aux: Optional[np.ndarray] = None


def dtype_code(dtype) -> int:
    dt = np.dtype(dtype)
    if dt not in _CODES:
        raise BadRecordError(f"dtype {dt} is not storable; use one of {sorted(str(d) for d in _CODES)}")
    return _CODES[dt]


def encode_record(array: np.ndarray, label: int, task: int, sample_id: int,
                  timestamp: Optional[float] = None, aux: Optional[np.ndarray] = None) -> bytes:
    """Encode one sample. ``array`` must be C-contiguous-able with at most 4 dims."""
    arr = np.asarray(array)  # not ascontiguousarray: it turns a 0-d array into 1-d
    if arr.ndim > MAX_NDIM:
        raise BadRecordError(f"sample {sample_id}: {arr.ndim} dims, at most {MAX_NDIM} are storable")
    code = dtype_code(arr.dtype)
    shape = tuple(arr.shape) + (0,) * (MAX_NDIM - arr.ndim)
    if not (-2**31 <= int(label) < 2**31) or not (-2**31 <= int(task) < 2**31):
        raise BadRecordError(f"sample {sample_id}: label {label} or task {task} outside int32")
    if not (0 <= int(sample_id) < 2**64):
        raise BadRecordError(f"sample id {sample_id} outside uint64")
    payload = arr.tobytes()
    aux_bytes = b""
    n_aux = 0
    if aux is not None:
        aux_arr = np.ascontiguousarray(aux, dtype=np.float32).reshape(-1)
        aux_bytes = aux_arr.tobytes()
        n_aux = aux_arr.size
    ts = time.time() if timestamp is None else float(timestamp)
    head = _HEADER.pack(MAGIC, VERSION, code, arr.ndim, 0, *shape, int(label), int(task),
                        int(sample_id), ts, n_aux, len(payload), 0)
    crc = zlib.crc32(aux_bytes, zlib.crc32(payload, zlib.crc32(head[:_CRC_OFFSET])))
    return head[:_CRC_OFFSET] + struct.pack("<I", crc) + payload + aux_bytes


def _name(key) -> str:
    """How an error names a record: a (namespace, id) pair is only formatted when it is needed."""
    return repr(f"{key[0]}/{key[1]}" if isinstance(key, tuple) else key)


def _verify(view, key):
    """Check header and crc; return the unpacked header fields."""
    if len(view) < HEADER_SIZE:
        raise CorruptRecordError(f"record {_name(key)}: {len(view)} bytes, shorter than the {HEADER_SIZE}-byte header")
    (magic, version, code, ndim, _flags, s0, s1, s2, s3, label, task, sample_id, ts,
     n_aux, n_payload, crc) = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise CorruptRecordError(f"record {_name(key)}: bad magic {bytes(magic)!r}")
    if version > VERSION:
        raise CorruptRecordError(f"record {_name(key)}: record version {version} is newer than {VERSION}")
    if code not in _DTYPES or ndim > MAX_NDIM:
        raise CorruptRecordError(f"record {_name(key)}: unknown dtype code {code} or ndim {ndim}")
    end = HEADER_SIZE + n_payload + 4 * n_aux
    if len(view) != end:
        raise CorruptRecordError(f"record {_name(key)}: length {len(view)} != {end} declared by its header")
    got = zlib.crc32(view[HEADER_SIZE:end], zlib.crc32(view[:_CRC_OFFSET]))
    if got != crc:
        raise CorruptRecordError(f"record {_name(key)}: crc32 mismatch (stored {crc:#010x}, computed {got:#010x})")
    return code, ndim, (s0, s1, s2, s3), label, task, sample_id, ts, n_aux, n_payload


def decode_record(buf, key=None) -> Record:
    """Decode and verify one record; ``key`` only serves the error message."""
    view = memoryview(buf)
    code, ndim, (s0, s1, s2, s3), label, task, sample_id, ts, n_aux, n_payload = _verify(view, key)
    dtype = _DTYPES[code]
    shape = (s0, s1, s2, s3)[:ndim]
    n = 1
    for d in shape:  # exact in Python ints: a hand-made header's huge dims must not wrap around in int64
        n *= d
    if n * dtype.itemsize != n_payload or any(s for s in (s0, s1, s2, s3)[ndim:]):
        raise CorruptRecordError(f"record {_name(key)}: shape {shape} does not match {n_payload} payload bytes")
    try:
        arr = np.frombuffer(view, dtype=dtype, count=n_payload // dtype.itemsize, offset=HEADER_SIZE).reshape(shape)
        aux = None
        if n_aux:
            aux = np.frombuffer(view, dtype=np.float32, count=n_aux, offset=HEADER_SIZE + n_payload)
    except (ValueError, TypeError) as e:  # belt and braces: the record's error type, whatever numpy says
        raise CorruptRecordError(f"record {_name(key)}: cannot be decoded ({e})") from None
    return Record(arr, label, task, sample_id, ts, aux)


def decode_into(buf, out: memoryview, key=None):
    """Verify one record and copy its payload into ``out`` (a byte view of one row of a
    preallocated batch array): the swap path's decode, with no per-record numpy object.
    Returns (label, task, sample_id, aux or None)."""
    view = memoryview(buf)
    code, ndim, shape, label, task, sample_id, ts, n_aux, n_payload = _verify(view, key)
    if n_payload != len(out):
        raise CorruptRecordError(f"record {_name(key)}: {n_payload} payload bytes, expected {len(out)}")
    out[:] = view[HEADER_SIZE:HEADER_SIZE + n_payload]
    aux = np.frombuffer(view, np.float32, n_aux, HEADER_SIZE + n_payload) if n_aux else None
    return label, task, sample_id, aux


def encode_blob(payload: bytes) -> bytes:
    """Frame an opaque blob (KV-cache pages and the like) with a checksum."""
    payload = bytes(payload)
    return _BLOB_HEADER.pack(BLOB_MAGIC, VERSION, zlib.crc32(payload)) + payload


def decode_blob(buf, key=None, view: bool = False):
    """The checked payload: bytes, or with ``view`` a read-only memoryview into ``buf`` (no copy, for
    callers that copy it where it goes anyway)."""
    mv = memoryview(buf)
    if len(mv) < _BLOB_HEADER.size:
        raise CorruptRecordError(f"blob {key!r}: {len(mv)} bytes, shorter than its header")
    magic, version, crc = _BLOB_HEADER.unpack_from(mv, 0)
    payload = mv[_BLOB_HEADER.size:]
    if magic != BLOB_MAGIC or version > VERSION:
        raise CorruptRecordError(f"blob {key!r}: bad magic or version")
    if zlib.crc32(payload) != crc:
        raise CorruptRecordError(f"blob {key!r}: crc32 mismatch")
    return payload.toreadonly() if view else bytes(payload)
