"""Salvage: every readable, crc-valid record of a damaged flash store copied into a fresh one, with a
report of what was lost (the newest LMDB snapshot first, the previous one filling in). The checks it
relies on live in ``integrity.py``; this module sits above both it and ``flash.py``."""

from __future__ import annotations

import base64
import json
import os

import numpy as np

from .meta import Manifest, unseal
from .integrity import _DB, _META, _PAGE_HDR, _db_names, _meta_at, _raw_env, _scan, _specs, read_header


def _walk(env_dir: str, emit) -> None:
    """Everything readable in one snapshot, as events: ("walk", db) before each database, ("meta",
    key, value), ("count", ns, n), ("spec", ns, spec), ("record", ns, id, key hex, value base64,
    label), ("lost", name, id), ("blob", name, key hex, value base64), ("error", message)."""
    import lmdb

    from .codec import decode_blob, decode_record
    from .errors import StoreError

    class Errors(list):  # _scan reports into a list: each report becomes an event as it happens
        def append(self, msg):
            emit(("error", msg))
    errors = Errors()
    try:
        env = _raw_env(env_dir)
    except lmdb.Error as e:
        emit(("error", f"LMDB: {type(e).__name__}: {e}"))
        return
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)

            def m(k, v):
                key = k.decode("utf-8", "replace")
                try:
                    v = unseal(key, v, sealed=False)  # a record failing its crc is lost, never copied
                except ValueError as e:
                    emit(("error", str(e)))
                    return
                if key.startswith("user/") or key == "eviction_rng" or key.endswith("/seen") or \
                        key.endswith("/next_id"):
                    emit(("meta", key, v))
                elif key.startswith("ns/") and key.endswith("/count"):
                    try:
                        emit(("count", key[3:-6], int(v)))
                    except ValueError:
                        pass
            emit(("walk", "meta"))
            _scan(txn, meta, m, errors, "meta")
            specs = {ns: sp for ns, sp in _specs(txn, meta).items() if sp is not None}
            for ns, sp in specs.items():
                emit(("spec", ns, sp))
            for ns in specs:
                def rec(k, v, ns=ns):
                    sid = int.from_bytes(k, "big")
                    try:
                        d = decode_record(v, key=(ns, sid))
                        if d.sample_id != sid:
                            raise StoreError("id mismatch")
                    except StoreError:
                        emit(("lost", ns, sid))
                        return
                    emit(("record", ns, sid, bytes(k).hex(), base64.b64encode(v).decode(), int(d.label)))
                emit(("walk", f"{ns}.data"))
                _scan(txn, env.open_db(f"{ns}.data".encode(), txn=txn, create=False), rec, errors, f"{ns}.data")
            for name in _db_names(txn):
                if name.endswith(".blob"):
                    def blob(k, v, name=name):
                        try:
                            decode_blob(v)
                            emit(("blob", name, bytes(k).hex(), base64.b64encode(v).decode()))
                        except StoreError:
                            emit(("lost", name, bytes(k).hex()))
                    emit(("walk", name))
                    _scan(txn, env.open_db(name.encode(), txn=txn, create=False), blob, errors, name)
    except lmdb.Error as e:
        emit(("error", f"LMDB: {type(e).__name__}: {e}"))
    finally:
        env.close()


def _collect(env_dir: str) -> dict:
    """Everything readable in one snapshot: specs, the metadata worth keeping, crc-valid records and
    blobs by key, the ids whose records fail their checks, and the walk's errors. The walk runs in a
    forked child that streams what it reads: on some damaged pages (a store cut short, padded with
    zeros) LMDB ends the process with a C assertion instead of returning an error, and then only the
    rest of that database's walk is lost, never the salvage."""
    got = {"specs": {}, "meta": {}, "counts": {}, "records": {}, "lost": {}, "blobs": {}, "errors": []}
    where = None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: walk, one JSON line an event, flushed as it goes (an abort loses nothing sent)
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # LMDB's assertion text: the report says what stopped the walk
        try:
            with os.fdopen(w, "w", buffering=1) as out:
                _walk(env_dir, lambda ev: out.write(json.dumps(ev) + "\n"))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as inp:
        for line in inp:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # the line the abort cut
            kind, args = ev[0], ev[1:]
            if kind == "walk":
                where = args[0]
            elif kind == "meta":
                got["meta"][args[0]] = args[1]
            elif kind == "count":
                got["counts"][args[0]] = args[1]
            elif kind == "spec":
                got["specs"][args[0]] = args[1]
                got["records"].setdefault(args[0], {})
                got["lost"].setdefault(args[0], set())
            elif kind == "record":
                ns, sid, khex, vb64, label = args
                got["records"].setdefault(ns, {})[sid] = (bytes.fromhex(khex), base64.b64decode(vb64), label)
            elif kind == "lost":
                got["lost"].setdefault(args[0], set()).add(args[1])
            elif kind == "blob":
                got["blobs"].setdefault(args[0], {})[bytes.fromhex(args[1])] = base64.b64decode(args[2])
            elif kind == "error":
                got["errors"].append(args[0])
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        got["errors"].append(f"LMDB stopped with signal {os.WTERMSIG(status)} (an assertion on a damaged page) "
                             f"while walking {where or 'the store'}: the rest of it is unreadable in this snapshot")
    return got


def _copy_for_snapshot(path: str, h: dict, older: bool) -> str:
    """A temporary copy of ``data.mdb`` padded to its recorded length; with ``older`` the newer
    meta page's txnid is zeroed, so LMDB opens the previous transaction's snapshot (intact by design)."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="miro-salvage-")
    shutil.copy(path, os.path.join(tmp, "data.mdb"))
    with open(os.path.join(tmp, "data.mdb"), "r+b") as fh:
        if os.path.getsize(path) < h["required_bytes"]:
            fh.truncate(h["required_bytes"])  # zero pages: LMDB reports them, crc rejects what they held
        if older:
            metas = []
            for i in (0, 1):
                fh.seek(i * h["page_size"])
                metas.append(_meta_at(fh.read(4096), 0))
            newer = max((i for i in (0, 1) if metas[i]), key=lambda i: metas[i]["txnid"])
            # LMDB opens the meta page with the larger txnid: zero the newer one's (its magic must stay)
            fh.seek(newer * h["page_size"] + _PAGE_HDR + _META.size + 2 * _DB.size + 8)
            fh.write(bytes(8))
    return tmp


def salvage(src: str, dst: str) -> dict:
    """Copy every readable, crc-valid record (same ids, labels, tasks), every valid blob and the
    store's metadata into a fresh flash tier at ``dst``; report what was lost. The newest snapshot is
    walked first; when it is damaged, the previous one (LMDB keeps it intact) fills in what it can
    (a record evicted by the very last commit may come back then). A file cut short is padded with
    zeros in a temporary copy: nothing maps the short file itself."""
    import shutil

    from .errors import StoreError
    from .flash import FlashTier, SampleSpec
    path = os.path.join(src, "data.mdb")
    if not os.path.exists(path):
        raise StoreError(f"no flash store at {src} (data.mdb missing): nothing to salvage")
    if os.path.exists(os.path.join(dst, "data.mdb")):
        raise StoreError(f"{dst} already holds a store; salvage writes into a new directory")
    try:
        h = read_header(path)
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} has no readable LMDB metadata ({e}): nothing can be salvaged") from None
    short = os.path.getsize(path) < h["required_bytes"]
    rep = {"src": os.path.abspath(src), "dst": os.path.abspath(dst), "errors": [], "namespaces": {},
           "padded_bytes": h["required_bytes"] - os.path.getsize(path) if short else 0, "snapshots": ["newest"]}
    tmps = []
    try:
        if short:
            tmps.append(_copy_for_snapshot(path, h, older=False))
        got = _collect(tmps[-1] if short else src)
        rep["errors"] += got["errors"]
        if got["errors"] or short:  # the newest snapshot is damaged: the previous one may hold what it lost
            tmps.append(_copy_for_snapshot(path, h, older=True))
            old = _collect(tmps[-1])
            rep["snapshots"].append("previous")
            for ns, sp in old["specs"].items():
                got["specs"].setdefault(ns, sp)
            for k, v in old["meta"].items():
                got["meta"].setdefault(k, v)
            for k, v in old["counts"].items():
                got["counts"].setdefault(k, v)
            for ns, recs in old["records"].items():
                mine = got["records"].setdefault(ns, {})
                for sid, r in recs.items():
                    mine.setdefault(sid, r)
            for name, blobs in old["blobs"].items():
                for k, v in blobs.items():
                    got["blobs"].setdefault(name, {}).setdefault(k, v)
            for ns, lost in old["lost"].items():
                got["lost"].setdefault(ns, set()).update(lost)
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    out = FlashTier(dst)
    try:
        for ns, spec in sorted(got["specs"].items()):
            spec_obj = SampleSpec(**{**spec, "shape": tuple(spec["shape"])})
            out.declare_samples(ns, spec_obj)
            recs = got["records"].get(ns, {})
            items = [(r[0], r[1]) for _, r in sorted(recs.items())]
            idx = sorted(((lab & 0xFFFFFFFF).to_bytes(4, "big") + k, b"") for k, _, lab in recs.values())

            def job(t, ns=ns, items=items, idx=idx, rb=spec_obj.record_bytes):
                if items:
                    t.cursor(db=out._db(f"{ns}.data", txn=t)).putmulti(items)
                    t.cursor(db=out._db(f"{ns}.class", txn=t)).putmulti(idx)
                for k, v in ((f"ns/{ns}/count", len(items)), (f"ns/{ns}/bytes", len(items) * rb)):
                    out._meta_put(t, k, v)
                return None, None
            out._write(job)
            lost = sorted(got["lost"].get(ns, set()) - set(recs))
            expected = got["counts"].get(ns)
            rep["namespaces"][ns] = {"kept": len(items), "lost": lost, "count_meta": expected,
                                     "unreachable": max(0, expected - len(items) - len(lost)) if expected else 0}
        for name, blobs in got["blobs"].items():
            def bjob(t, name=name, blobs=blobs):
                if blobs:
                    t.cursor(db=out._db(name, txn=t)).putmulti(sorted(blobs.items()))
                out._meta_put(t, f"blob/{name[:-5]}/bytes", sum(len(v) for v in blobs.values()))
                return None, None
            out._write(bjob)
            rep["namespaces"][name] = {"kept": len(blobs), "lost": sorted(got["lost"].get(name, set()))}

        def mjob(t):
            for k, v in got["meta"].items():
                out._meta_put(t, k, v)
            out._meta_put(t, "user/salvaged_from", rep["src"])
            for ns, recs in got["records"].items():  # the manifest of what was kept; no log: a fresh history
                if ns in got["specs"]:
                    by_cls = [np.asarray(sorted(s for s, r in recs.items() if r[2] == c), dtype=np.int64)
                              for c in range(max((r[2] for r in recs.values()), default=-1) + 1)]
                    seen = int(got["meta"].get(f"ns/{ns}/seen", 0))
                    out._meta_put(t, f"ns/{ns}/manifest", Manifest.of_index(by_cls, seen).to_json())
            return None, None
        out._write(mjob)
    finally:
        out.close()
    rep["kept"] = sum(v["kept"] for v in rep["namespaces"].values())
    rep["lost"] = sum(len(v["lost"]) + v.get("unreachable", 0) for v in rep["namespaces"].values())
    return rep
