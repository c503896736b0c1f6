"""The flash tier's own metadata, protected end to end: a crc32 over key and value of every record in
the ``meta`` database, the names and types each key may hold, the named databases the declared
namespaces account for, and the per-namespace manifest (record count, id range, an order-independent
digest of ids and classes) that every batch and eviction commits and every checkpoint records.

A sealed value is ``SEAL`` + crc32(key NUL value) (4 B, big-endian) + the value. Stores of schema 1
hold plain values (no crc): they are read as legacy and sealed by the first writable open (schema 2).
In a schema-2 store a value without its seal is damage, so a flip in the seal itself is caught too.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

SEAL = b"\x00MC"
_SEAL_LEN = len(SEAL) + 4
SEALED_SCHEMA = 2  # the first schema whose meta records all carry a crc
_INT_FIELDS = ("next_id", "count", "bytes", "seen")
_NS_KEY = re.compile(r"ns/(?P<ns>[^/]+)/(?P<field>spec|manifest|next_id|count|bytes|seen|mlog/\d+/[0-9a-f]+)")
_BLOB_KEY = re.compile(r"blob/(?P<ns>[^/]+)/bytes")
# a client's batch id (1..128 bytes of UTF-8) -> the JSON object its ingest acknowledged, committed with the
# batch (the session's exactly-once ingest); written through put_batch's meta, hence under user/
BATCH_KEY_PREFIX = "user/batch/"
BATCH_ID_MAX_BYTES = 128
_MASK = (1 << 64) - 1


def seal(key: str, value: str | bytes) -> bytes:
    """The stored form of one meta value: its crc covers the key too, so a renamed key is caught."""
    v = value.encode() if isinstance(value, str) else bytes(value)
    return SEAL + zlib.crc32(key.encode() + b"\x00" + v).to_bytes(4, "big") + v


def unseal(key: str, raw, sealed: bool) -> str:
    """The value of one meta record; ValueError naming the key when its crc or seal is wrong.
    ``sealed``: the store is of schema 2 or later, where every value must carry its crc."""
    raw = bytes(raw)
    if raw[:len(SEAL)] == SEAL:
        v = raw[_SEAL_LEN:]
        if len(raw) < _SEAL_LEN or zlib.crc32(key.encode() + b"\x00" + v) != int.from_bytes(raw[3:7], "big"):
            raise ValueError(f"meta record {key!r}: crc32 mismatch (key or value altered)")
    elif sealed:
        raise ValueError(f"meta record {key!r}: no crc in a store whose every meta record has one")
    else:
        v = raw
    try:
        return v.decode()
    except UnicodeDecodeError:
        raise ValueError(f"meta record {key!r}: not UTF-8 text") from None


# ---------------------------------------------------------------------------- manifest
def digest_of(ids, classes) -> int:
    """Order-independent digest of (id, class) pairs: the sum mod 2**64 of a splitmix64 mix of each,
    so an add or an eviction updates it in O(batch) and a reorder leaves it unchanged."""
    z = (np.asarray(ids, dtype=np.uint64) << np.uint64(16)) ^ np.asarray(classes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return int(z.sum(dtype=np.uint64)) if z.size else 0


@dataclass(frozen=True)
class Manifest:
    """What one sample namespace holds: count, lowest and highest stored id (-1: none), digest of
    (id, class) pairs, and the samples ever offered (``seen``: which batch it is the state after)."""

    count: int = 0
    min_id: int = -1
    max_id: int = -1
    digest: int = 0
    seen: int = 0
    FIELDS = ("count", "min_id", "max_id", "digest")  # what a checkpoint compares (seen matched them)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        if not isinstance(d, dict) or set(d) != set(cls.FIELDS + ("seen",)) or \
                not all(isinstance(v, int) for v in d.values()):
            raise ValueError(f"not a manifest: {text[:80]!r}")
        return cls(**d)

    @classmethod
    def of_index(cls, ids_by_class: list, seen: int) -> "Manifest":
        """The manifest of a class index (list of id arrays, one per class)."""
        sizes = [a.size for a in ids_by_class]
        if not sum(sizes):
            return cls(seen=seen)
        ids = np.concatenate(ids_by_class)
        cls_ = np.repeat(np.arange(len(sizes)), sizes)
        return cls(int(ids.size), int(ids.min()), int(ids.max()), digest_of(ids, cls_), seen)

    def differences(self, other: "Manifest", fields: tuple = FIELDS) -> list:
        """'field a != b' for every field that differs (by default not ``seen``, which matched them)."""
        a, b = asdict(self), asdict(other)
        return [f"{f} {a[f]} != {b[f]}" for f in fields if a[f] != b[f]]


def advance(m: Manifest, add_ids, add_cls, evict: list, remaining_bounds, n_offered: int) -> Manifest:
    """The manifest after a batch: ``evict`` [(class, id)] removed, ``add_*`` stored, ``n_offered``
    samples seen. ``remaining_bounds()`` gives (min, max) of what is stored when an eviction took
    the lowest or highest id (rare: only then is the index walked)."""
    d = (m.digest + digest_of(add_ids, add_cls)) & _MASK
    if evict:
        ev = np.asarray(evict, dtype=np.int64).reshape(-1, 2)
        d = (d - digest_of(ev[:, 1], ev[:, 0])) & _MASK
    count = m.count + len(add_ids) - len(evict)
    if not count:
        return Manifest(0, -1, -1, d, m.seen + n_offered)
    ev_ids = {int(s) for _, s in evict}
    if m.min_id in ev_ids or m.max_id in ev_ids:
        lo, hi = remaining_bounds()
    else:
        lo, hi = m.min_id, m.max_id
        if len(add_ids):
            lo = int(min(add_ids)) if lo < 0 else min(lo, int(min(add_ids)))
            hi = max(hi, int(max(add_ids)))
    return Manifest(count, lo, hi, d, m.seen + n_offered)


# ---------------------------------------------------------------------------- the manifest log
def log_key(ns: str, m: Manifest) -> str:
    """Where the log keeps a manifest: by samples seen, then digest (a budget change evicts without
    new samples: two states at one ``seen``)."""
    return f"ns/{ns}/mlog/{m.seen:012d}/{m.digest:016x}"


def log_at(txn, db, ns: str, seen: int, get) -> list:
    """Every logged manifest at ``seen`` samples; ``get(txn, key)`` reads (and checks) one value."""
    prefix, out = f"ns/{ns}/mlog/{int(seen):012d}/", []
    with txn.cursor(db=db) as cur:
        if cur.set_range(prefix.encode()):
            for k in cur.iternext(keys=True, values=False):
                k = bytes(k).decode()
                if not k.startswith(prefix):
                    break
                out.append(Manifest.from_json(get(txn, k)))
    return out


def log_span(txn, db, ns: str) -> Optional[tuple]:
    """(lowest, highest) samples seen that the namespace's log holds; None when it is empty."""
    prefix = f"ns/{ns}/mlog/"
    with txn.cursor(db=db) as cur:
        if not (cur.set_range(prefix.encode()) and bytes(cur.key()).startswith(prefix.encode())):
            return None
        first = bytes(cur.key()).decode()
        # "0" sorts right after "/": the first key past the log, or none (then the log ends the DB)
        (cur.prev() if cur.set_range(f"ns/{ns}/mlog0".encode()) else cur.last())
        return tuple(int(k[len(prefix):].split("/")[0]) for k in (first, bytes(cur.key()).decode()))


def log_prune(txn, db, before_seen: dict) -> None:
    """Delete each namespace's entries older than ``before_seen[ns]``."""
    with txn.cursor(db=db) as cur:
        for ns, seen in before_seen.items():
            prefix, stop = f"ns/{ns}/mlog/".encode(), f"ns/{ns}/mlog/{int(seen):012d}".encode()
            ok = cur.set_range(prefix)
            while ok and bytes(cur.key()) < stop:
                ok = cur.delete()


# ---------------------------------------------------------------------------- the open-time checks
@dataclass
class MetaScan:
    """What a walk over the meta database found: values by key (text), and every problem."""

    values: dict
    problems: list
    sealed: bool = False
    schema: Optional[int] = None

    def specs(self) -> dict:
        return {m["ns"]: self.values[k] for k in self.values if (m := _NS_KEY.fullmatch(k)) and m["field"] == "spec"}


def scan_meta(items) -> MetaScan:
    """Check every (key bytes, raw value) of the meta database: seal, crc, names, types."""
    raw = {}
    problems = []
    for k, v in items:
        try:
            raw[bytes(k).decode()] = bytes(v)
        except UnicodeDecodeError:
            problems.append(f"meta key {bytes(k)!r} is not UTF-8 text")
    scan = MetaScan({}, problems)
    sv = raw.get("schema_version")
    if sv is not None:
        sealed = sv[:len(SEAL)] == SEAL
        try:
            scan.schema = int(unseal("schema_version", sv, sealed))
        except ValueError as e:
            problems.append(f"{e} (schema_version)")
        if scan.schema is not None and (scan.schema >= SEALED_SCHEMA) != sealed:
            problems.append(f"meta record 'schema_version' says schema {scan.schema} but is "
                            f"{'sealed' if sealed else 'not sealed'}")
        scan.sealed = sealed or (scan.schema or 0) >= SEALED_SCHEMA
    elif raw:
        problems.append(f"meta holds {len(raw)} records but no schema_version (its key was altered?)")
        scan.sealed = any(v[:len(SEAL)] == SEAL for v in raw.values())
    for k, v in raw.items():
        if k == "schema_version":
            continue
        try:
            text = unseal(k, v, scan.sealed)
            _check_type(k, text)
        except ValueError as e:
            problems.append(str(e))
            continue
        scan.values[k] = text
    specs = scan.specs()
    for k in scan.values:
        m = _NS_KEY.fullmatch(k)
        if m and m["ns"] not in specs:
            problems.append(f"meta record {k!r} belongs to namespace {m['ns']!r}, which has no spec")
    return scan


def _check_type(key: str, text: str) -> None:
    """Every key the store writes has one known form; anything else is an altered key."""
    try:
        if key.startswith(BATCH_KEY_PREFIX):
            if not 0 < len(key[len(BATCH_KEY_PREFIX):].encode()) <= BATCH_ID_MAX_BYTES:
                raise ValueError(f"a batch id is 1 to {BATCH_ID_MAX_BYTES} bytes")
            ack = json.loads(text)
            if not isinstance(ack, dict) or not isinstance(ack.get("acked"), int) or ack["acked"] < 0:
                raise ValueError("not an ingest acknowledgement")
            return
        if key.startswith("user/"):
            return
        if key == "eviction_rng":
            if not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
            return
        if _BLOB_KEY.fullmatch(key):
            int(text)
            return
        m = _NS_KEY.fullmatch(key)
        if m is None:
            raise ValueError("no such key in the store's schema")
        field = m["field"]
        if field in _INT_FIELDS:
            if int(text) < 0:
                raise ValueError("negative")
        elif field == "spec":
            d = json.loads(text)
            if not isinstance(d, dict) or not isinstance(d.get("shape"), list):
                raise ValueError("not a namespace spec")
        else:
            Manifest.from_json(text)
    except ValueError as e:
        raise ValueError(f"meta record {key!r}: {e}") from None


def expected_dbs(scan: MetaScan) -> set:
    """The named databases the metadata accounts for: meta, two per sample namespace, one per blob one."""
    out = {"meta"}
    for ns in scan.specs():
        out |= {f"{ns}.data", f"{ns}.class"}
    for k in scan.values:
        m = _BLOB_KEY.fullmatch(k)
        if m:
            out.add(f"{m['ns']}.blob")
    return out


def check_dbs(scan: MetaScan, names) -> list:
    """Named databases no declared namespace accounts for (a misspelt one is damage, never a new
    namespace), and declared namespaces whose databases are missing."""
    want, have = expected_dbs(scan), set(names)
    out = [f"named database {n!r} is not accounted for by any declared namespace" for n in sorted(have - want)]
    out += [f"named database {n!r} of a declared namespace is missing" for n in sorted(want - have)]
    return out


def damage_message(path: str, problems: list) -> str:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    return (f"{path}: the store's metadata is damaged ({shown}). Nothing was written to it. `miro store verify "
            f"{path}` says what is readable; `miro store salvage {path} NEW_DIR` copies every readable record "
            f"into a fresh store")
