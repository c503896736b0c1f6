"""The IDX file format (LeCun's MNIST layout, also Fashion-MNIST's): a reader that checks every byte.

Layout: two zero bytes, a type byte, a dimension count; one big-endian uint32 per dimension; then the
payload, big-endian, row-major. The files ship gzipped or not; gzip is told by its magic bytes (1f 8b),
not by the name. Read with ``np.frombuffer``: nothing is unpickled, and a file that is cut short or has
bytes after its payload is refused by name, never read as fewer or more samples.
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np

# type byte -> big-endian dtype of the payload
TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """An IDX file that is not one, or not whole: the message names the file and what is wrong (a stream
    reading it reports it as its StreamError)."""


def read_idx(path: str) -> np.ndarray:
    """The array an IDX file holds, in native byte order (uint8 stays uint8). -> ndarray of its dims."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise IdxError(f"{path}: cannot read it ({e.strerror or e})") from e
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxError(f"{path}: a gzip file that does not decompress ({e})") from e
    return parse_idx(raw, path)


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array in ``raw`` (an uncompressed IDX file's bytes); ``name`` says whose, in errors."""
    if len(raw) < 4:
        raise IdxError(f"{name}: {len(raw)} bytes, too short for an IDX header (4 bytes at least)")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{name}: not an IDX file (its first two bytes are {raw[:2].hex()}, IDX starts with 0000)")
    kind, ndim = raw[2], raw[3]
    if kind not in TYPES:
        raise IdxError(f"{name}: unknown IDX type byte 0x{kind:02x} (known: "
                       + ", ".join(f"0x{k:02x}" for k in TYPES) + ")")
    if ndim == 0:
        raise IdxError(f"{name}: an IDX header with no dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IdxError(f"{name}: cut short inside its header ({len(raw)} of {head} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = TYPES[kind]
    want = math.prod(dims) * dtype.itemsize
    got = len(raw) - head
    if got < want:
        raise IdxError(f"{name}: cut short: dims {dims} of {dtype.name} need {want} payload bytes, it has {got}")
    if got > want:
        raise IdxError(f"{name}: {got - want} bytes after the payload of dims {dims} ({dtype.name}): "
                       "not the file its header describes")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native order, writable, detached from ``raw``


def write_idx(path: str, arr: np.ndarray, compress: bool = False) -> None:
    """Write ``arr`` as an IDX file (gzipped when ``compress``): what tests and fixtures need."""
    arr = np.asarray(arr)
    kind = next((k for k, d in TYPES.items() if d.newbyteorder("=") == arr.dtype.newbyteorder("=")), None)
    if kind is None:
        raise IdxError(f"{path}: IDX holds no {arr.dtype} (it holds " + ", ".join(d.name for d in TYPES.values())
                       + ")")
    if arr.ndim == 0 or arr.ndim > 255:
        raise IdxError(f"{path}: IDX holds 1 to 255 dimensions, not {arr.ndim}")
    raw = (bytes([0, 0, kind, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
           + arr.astype(TYPES[kind]).tobytes())
    with open(path, "wb") as fh:
        fh.write(gzip.compress(raw) if compress else raw)
