"""What the flash tier checks before it trusts its files: an LMDB ``data.mdb`` is at least as long as
its own metadata says (a file cut short by a power cut would otherwise reach the mmap and end the
process with SIGBUS), plus ``verify`` (every record's crc, the class index against the records,
the counts against meta); ``salvage.py`` copies what is readable into a fresh store.

LMDB keeps two meta pages at the head of ``data.mdb`` (pages 0 and 1, the newer one by txnid wins).
Each holds, after the 16-byte page header: magic 0xBEEFC0DE, format version, the map address, the
map size, two database records (the free DB's first field holds the page size), the last page
used, and the transaction id.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Optional

import numpy as np

MAGIC = 0xBEEFC0DE
_PAGE_HDR = 16
_META = struct.Struct("<IIQQ")  # magic, version, address, mapsize
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free DB), flags, depth, branch, leaf, overflow, entries, root
_TAIL = struct.Struct("<QQ")  # last_pg, txnid


class LmdbHeader(dict):
    """page_size, last_pg, txnid, entries (of the main DB), required_bytes."""


def _meta_at(buf: bytes, off: int) -> Optional[dict]:
    need = off + _PAGE_HDR + _META.size + 2 * _DB.size + _TAIL.size
    if len(buf) < need:
        return None
    magic, version, _, mapsize = _META.unpack_from(buf, off + _PAGE_HDR)
    if magic != MAGIC:
        return None
    free = _DB.unpack_from(buf, off + _PAGE_HDR + _META.size)
    main = _DB.unpack_from(buf, off + _PAGE_HDR + _META.size + _DB.size)
    last_pg, txnid = _TAIL.unpack_from(buf, off + _PAGE_HDR + _META.size + 2 * _DB.size)
    return {"version": version, "mapsize": mapsize, "page_size": free[0], "last_pg": last_pg, "txnid": txnid,
            "entries": main[6], "free_root": free[7], "main_root": main[7]}


def read_header(path: str) -> LmdbHeader:
    """The newer valid meta page of an LMDB data file; ValueError when there is none."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
        m0 = _meta_at(head, 0)
        psize = m0["page_size"] if m0 and 512 <= m0["page_size"] <= 65536 else 4096
        fh.seek(psize)
        m1 = _meta_at(fh.read(4096), 0)
    metas = [m for m in (m0, m1) if m is not None]
    if not metas:
        raise ValueError("neither LMDB meta page holds the LMDB magic number")
    m = max(metas, key=lambda x: x["txnid"])
    if not 512 <= psize <= 65536 or m["version"] != 1:
        raise ValueError(f"LMDB meta page says page size {psize}, format version {m['version']}")
    return LmdbHeader(page_size=psize, last_pg=m["last_pg"], txnid=m["txnid"], entries=m["entries"],
                      required_bytes=(m["last_pg"] + 1) * psize, roots=[m["free_root"], m["main_root"]])


P_INVALID = (1 << 64) - 1
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
F_BIGDATA, F_SUBDATA = 0x01, 0x02
P_BRANCH, P_LEAF = 0x01, 0x02  # LMDB page flags: the tree pages the walk descends


def pages_past_end(path: str, h: dict) -> list:
    """Page numbers the trees reference (free DB, main DB, every named DB, overflow runs) that lie
    past the end of the file, found with plain reads (never the mmap). LMDB may legitimately leave
    the file shorter than last_pg (pages allocated and freed inside a transaction are never
    written); only a referenced page past the end makes the file unsafe to map."""
    size, ps = os.path.getsize(path), h["page_size"]
    n_pages = size // ps
    past, seen, todo = [], set(), [r for r in h["roots"] if r != P_INVALID]
    with open(path, "rb") as fh:
        while todo and len(seen) <= h["last_pg"] + 1:
            pg = todo.pop()
            if pg in seen:
                continue
            seen.add(pg)
            if pg >= n_pages:
                past.append(pg)
                continue
            fh.seek(pg * ps)
            page = fh.read(ps)
            flags = struct.unpack_from("<H", page, 10)[0]
            lower = struct.unpack_from("<H", page, 12)[0]
            if not flags & (P_BRANCH | P_LEAF) or lower < _PAGE_HDR or lower > ps:
                continue  # not a tree page (damaged): LMDB reports it as corrupted, no SIGBUS
            for i in range((lower - _PAGE_HDR) // 2):
                off = struct.unpack_from("<H", page, _PAGE_HDR + 2 * i)[0]
                if off + 8 > ps:
                    continue
                lo, hi, nflags, ksize = _NODE.unpack_from(page, off)
                if flags & P_BRANCH:
                    todo.append(lo | (hi << 16) | (nflags << 32))
                    continue
                data = off + 8 + ksize
                if nflags & F_BIGDATA and data + 8 <= ps:
                    ov = struct.unpack_from("<Q", page, data)[0]
                    todo.append(ov)
                    if ov < n_pages:  # the run's length sits in its first page
                        fh.seek(ov * ps + 12)
                        run = struct.unpack("<I", fh.read(4))[0]
                        if ov + run > n_pages and run <= h["last_pg"] + 1:
                            past.append(ov + run - 1)
                elif nflags & F_SUBDATA and data + _DB.size <= ps:
                    root = _DB.unpack_from(page, data)[7]
                    if root != P_INVALID:
                        todo.append(root)
    return sorted(set(past))


def check_data_file(dirpath: str) -> Optional[LmdbHeader]:
    """Raise ``StoreError`` naming the file and the next step when ``data.mdb`` is shorter than its
    metadata says or has no valid metadata; None when there is no file yet (a new store)."""
    from .errors import DamagedStoreError
    path = os.path.join(dirpath, "data.mdb")
    if not os.path.exists(path):
        return None
    size = os.path.getsize(path)
    if size == 0:
        raise DamagedStoreError(f"{path} is empty (0 bytes) but exists: the store was lost or never written. Move "
                                f"the state directory aside and start afresh, or restore it from a copy")
    try:
        h = read_header(path)
    except (OSError, ValueError, struct.error) as e:
        raise DamagedStoreError(f"{path} is not a readable LMDB file ({e}). Run `miro store salvage` on its "
                                f"directory to keep what can be read, or restore it from a copy") from None
    if size < h["required_bytes"] and pages_past_end(path, h):
        raise DamagedStoreError(
            f"{path} is cut short: {size} bytes, but its LMDB metadata says the last committed page ends at "
            f"{h['required_bytes']} bytes (a power cut on a filesystem without data journaling?). Opening it "
            f"would crash the process; run `miro store salvage {dirpath} NEW_DIR` to copy every readable record "
            f"into a fresh store")
    return h


# ---------------------------------------------------------------------------- verify / salvage
def _raw_env(dirpath: str):
    import lmdb
    return lmdb.open(dirpath, readonly=True, lock=False, max_dbs=64, subdir=True)


def _specs(txn, meta) -> dict:
    """The namespace specs whose records pass their crc (None for one that does not parse)."""
    from .meta import unseal
    out = {}
    for k, v in txn.cursor(db=meta):
        k = bytes(k).decode("utf-8", "replace")
        if k.startswith("ns/") and k.endswith("/spec"):
            try:
                out[k[3:-5]] = json.loads(unseal(k, v, sealed=False))
            except ValueError:
                out[k[3:-5]] = None
    return out


def _scan(txn, db, on_item, errors: list, what: str):
    """Walk a database with a cursor; a damaged page ends the walk of that stretch and is reported,
    then the walk goes on after the last good key where LMDB lets it."""
    import lmdb
    cur = txn.cursor(db=db)
    ok = cur.first()
    last = None
    while ok:
        try:
            k, v = bytes(cur.key()), bytes(cur.value())
        except lmdb.Error as e:
            errors.append(f"{what}: damaged page after key {last.hex() if last else 'start'} ({e})")
            return
        on_item(k, v)
        last = k
        try:
            ok = cur.next()
        except lmdb.Error as e:
            errors.append(f"{what}: damaged page after key {last.hex()} ({e})")
            try:  # skip ahead past the damage if LMDB can position there
                ok = cur.set_range(last + b"\x00")
                if ok and bytes(cur.key()) <= last:
                    return
            except lmdb.Error:
                return


def verify(dirpath: str) -> dict:
    """Read-only check of a flash tier: every meta record's crc, name and type, the named databases
    against the declared namespaces, every record's crc and header, the class index against the
    records, the counts and manifest against meta. {"ok", "path", "errors", "namespaces": {ns: {...}}}."""
    import lmdb

    from .codec import decode_record
    from .errors import StoreError
    from .meta import Manifest, check_dbs, digest_of, scan_meta
    rep = {"path": os.path.abspath(dirpath), "ok": True, "errors": [], "namespaces": {}}
    try:
        check_data_file(dirpath)
        if not os.path.exists(os.path.join(dirpath, "data.mdb")):
            raise StoreError(f"no flash store at {dirpath} (data.mdb missing)")
        env = _raw_env(dirpath)
    except (StoreError, lmdb.Error) as e:
        rep.update(ok=False, errors=[str(e)], openable=False)
        return rep
    rep["openable"] = True
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            scan = scan_meta(txn.cursor(db=meta))
            rep["errors"] += scan.problems + check_dbs(scan, _db_names(txn, undecodable=True))
            specs = {ns: json.loads(v) for ns, v in scan.specs().items()}
            for ns in sorted(specs):
                r = {"records": 0, "bad_records": [], "index_entries": 0, "index_missing": [], "index_orphans": [],
                     "index_wrong_class": []}
                labels = {}

                def rec(k, v, ns=ns, r=r, labels=labels):
                    sid = int.from_bytes(k, "big")
                    r["records"] += 1
                    try:
                        d = decode_record(v, key=(ns, sid))
                        if d.sample_id != sid:
                            raise ValueError(f"record says id {d.sample_id}")
                        labels[sid] = d.label
                    except (StoreError, ValueError) as e:
                        r["bad_records"].append({"id": sid, "why": str(e)})
                data = env.open_db(f"{ns}.data".encode(), txn=txn, create=False)
                _scan(txn, data, rec, rep["errors"], f"{ns}.data")
                seen_idx, pairs_idx = set(), []

                def idx(k, v, r=r, labels=labels, seen_idx=seen_idx, pairs_idx=pairs_idx):
                    cls, sid = int.from_bytes(k[:4], "big"), int.from_bytes(k[4:], "big")
                    pairs_idx.append((cls, sid))
                    r["index_entries"] += 1
                    seen_idx.add(sid)
                    if sid not in labels and not any(b["id"] == sid for b in r["bad_records"]):
                        r["index_orphans"].append(sid)
                    elif sid in labels and labels[sid] != cls:
                        r["index_wrong_class"].append(sid)
                cls_db = env.open_db(f"{ns}.class".encode(), txn=txn, create=False)
                _scan(txn, cls_db, idx, rep["errors"], f"{ns}.class")
                r["index_missing"] = sorted(set(labels) - seen_idx)
                count = scan.values.get(f"ns/{ns}/count")
                r["count_meta"] = int(count) if count is not None else None
                stored = scan.values.get(f"ns/{ns}/manifest")
                if stored is not None:
                    pairs = np.asarray(sorted(pairs_idx), dtype=np.uint64).reshape(-1, 2)
                    have = Manifest(len(pairs), int(pairs[:, 1].min()) if len(pairs) else -1,
                                    int(pairs[:, 1].max()) if len(pairs) else -1,
                                    digest_of(pairs[:, 1], pairs[:, 0]), 0)
                    diff = Manifest.from_json(stored).differences(have)
                    if diff:
                        rep["errors"].append(f"{ns}: the manifest disagrees with the class index ({', '.join(diff)})")
                if r["count_meta"] is not None and r["count_meta"] != r["records"]:
                    rep["errors"].append(f"{ns}: meta counts {r['count_meta']} records, {r['records']} found")
                if r["bad_records"] or r["index_missing"] or r["index_orphans"] or r["index_wrong_class"]:
                    rep["ok"] = False
                rep["namespaces"][ns] = r
    except lmdb.Error as e:
        rep["errors"].append(f"LMDB: {type(e).__name__}: {e}")
    finally:
        env.close()
    if rep["errors"]:
        rep["ok"] = False
    return rep


def _db_names(txn, undecodable: bool = False) -> list:
    """Named databases: the keys of the unnamed main DB (``undecodable``: a name that is not UTF-8
    too, shown mangled; salvage skips them)."""
    names = []
    for k, _ in txn.cursor():
        try:
            names.append(bytes(k).decode())
        except UnicodeDecodeError:
            if undecodable:
                names.append(bytes(k).decode("utf-8", "replace"))
    return names
