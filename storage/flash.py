"""Flash tier on LMDB: crash-safe store of every stream sample within a byte budget (CarM's
storage tier, with raw records instead of one PNG per sample).

One environment per state directory. Named databases:
  ``meta``            schema version, namespace specs (JSON), counters (ASCII ints), the eviction
                      RNG's state (JSON, committed with the evictions it drew: a reopened store
                      evicts exactly as the store that never closed would have), each namespace's
                      manifest and its log by samples seen; every value crc-sealed (see meta.py)
  ``<ns>.data``       sample id (8-byte big-endian) -> encoded record (see codec.py)
  ``<ns>.class``      class (4 B) + sample id (8 B) -> b"" : per-class index, scanned once at open
  ``<ns>.blob``       opaque blobs for generic namespaces (the KV-cache path)

All writes go through one writer thread (an LMDB write transaction must stay on the thread
that began it); callers block only until their batch is durable under the sync mode. Readers
in this process share a lock that the writer takes exclusively only to grow the map.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import lmdb
import numpy as np

from .codec import (HEADER_SIZE, Record, decode_blob, decode_into, decode_record, dtype_code, encode_blob,
                    encode_record)
from .names import EVICTION_POLICIES, SYNC_MODES
from .errors import BadRecordError, BudgetError, DamagedStoreError, ForkError, SchemaTooNewError, StoreError
from .integrity import check_data_file
from .meta import (Manifest, MetaScan, advance, check_dbs, damage_message, log_at, log_key, log_prune, log_span,
                   scan_meta, seal, unseal)
from .tier import Tier, blob_key

SCHEMA_VERSION = 2  # 2: every meta record crc-sealed, a manifest per namespace (1 is upgraded on open)
POLICIES = EVICTION_POLICIES
RNG_KEY = "eviction_rng"
log = logging.getLogger("miro.storage")


@dataclass
class SampleSpec:
    """What a sample namespace holds. Every record in it has the same size."""

    shape: tuple
    dtype: str = "uint8"
    num_classes: int = 10
    aux_dim: int = 0  # float32 values stored beside each sample (DER++ logits)
    policy: str = "class-balanced"
    budget_records: Optional[int] = None
    budget_bytes: Optional[int] = None

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.policy not in POLICIES:
            raise BadRecordError(f"eviction policy {self.policy!r} is not one of {POLICIES}")
        dtype_code(self.dtype)
        if self.num_classes < 1:
            raise BadRecordError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def record_bytes(self) -> int:
        n = int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
        return HEADER_SIZE + n + 4 * self.aux_dim

    @property
    def capacity(self) -> Optional[int]:
        """Records that fit: the tighter of the record and byte budgets (None: unbounded)."""
        caps = []
        if self.budget_records is not None:
            caps.append(int(self.budget_records))
        if self.budget_bytes is not None:
            caps.append(int(self.budget_bytes) // self.record_bytes)
        return min(caps) if caps else None


@dataclass
class PutResult:
    ids: np.ndarray  # id given to each input sample, in input order
    stored: np.ndarray  # bool: False where the policy dropped the new sample at once
    evicted: int = 0  # older samples removed to make room


class NsBatch(NamedTuple):
    """One namespace's part of ``FlashTier.put_batches``: the arguments ``put_batch`` takes."""

    ns: str
    arrays: Sequence[np.ndarray]
    labels: Sequence[int]
    tasks: Sequence[int]
    aux: Optional[Sequence[np.ndarray]] = None
    timestamps: Optional[Sequence[float]] = None


class ClassIndex:
    """Per-class arrays of stored sample ids, so class-balanced sampling never scans LMDB."""

    def __init__(self, num_classes: int):
        self.ids = [np.empty(0, dtype=np.int64) for _ in range(num_classes)]

    @classmethod
    def from_pools(cls, pools: dict) -> "ClassIndex":
        """An index over given {class: ids} (a subset of what is stored: a smaller tier, emulated)."""
        idx = cls(max(pools, default=-1) + 1)
        for c, ids in pools.items():
            idx.ids[int(c)] = np.asarray(ids, dtype=np.int64)
        return idx

    def grow(self, num_classes: int):
        while len(self.ids) < num_classes:
            self.ids.append(np.empty(0, dtype=np.int64))

    def counts(self) -> np.ndarray:
        return np.array([a.size for a in self.ids], dtype=np.int64)

    def add(self, cls: int, ids: np.ndarray):
        self.ids[cls] = np.concatenate([self.ids[cls], ids])

    def remove(self, cls: int, ids: np.ndarray):
        self.ids[cls] = self.ids[cls][~np.isin(self.ids[cls], ids)]

    def draw(self, classes: np.ndarray, rng: np.random.Generator, exclude: np.ndarray, tries: int = 3) -> np.ndarray:
        """One random stored id per entry of ``classes`` (-1 where the class has none), avoiding
        ``exclude`` (the ids already in RAM) and repeats within the call when the class has enough
        others. This is the swap worker's per-step draw and its CPU time is taken from the trainer's
        cores: a quota is tens of rows, where plain Python over the class arrays beats numpy calls."""
        ex, seen = set(exclude.tolist()), set()
        r = rng.random(classes.size * tries).tolist()
        out = []
        for i, c in enumerate(classes.tolist()):
            pool = self.ids[c] if 0 <= c < len(self.ids) else None
            size = 0 if pool is None else pool.size
            best = -1
            if size:
                fallback = -1
                for u in r[i * tries:(i + 1) * tries]:
                    sid = int(pool[int(u * size)])
                    if sid in seen:
                        continue
                    if sid not in ex:
                        best = sid
                        break
                    if fallback < 0:
                        fallback = sid  # in RAM already: taken only when nothing else was drawn
                best = best if best >= 0 else fallback
                if best >= 0:
                    seen.add(best)
            out.append(best)
        return np.asarray(out, dtype=np.int64)


class _RWLock:
    """Many readers or one exclusive holder (the map resize)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_read(self):
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self):
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self):
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()


_RETRY = "retry"


def _db_names(txn) -> list:
    """The named databases: the keys of LMDB's main database (a name that is not UTF-8 is shown mangled)."""
    return [bytes(k).decode("utf-8", "replace") for k in txn.cursor().iternext(keys=True, values=False)]


def _damaged(path: str, e: Exception, opening: bool = False) -> DamagedStoreError:
    what = "cannot open the LMDB store" if opening else "the LMDB store is damaged"
    return DamagedStoreError(f"{path}: {what} ({type(e).__name__}: {e}). `miro store verify {path}` says what is "
                             f"readable; `miro store salvage {path} NEW_DIR` copies every readable record into a "
                             f"fresh store")


class FlashTier(Tier):
    """LMDB-backed flash tier. ``readonly=True`` opens it for inspection from another process.
    ``seed`` seeds the eviction draws of a new store; a reopened one continues its stored stream."""

    def __init__(self, path: str, sync_mode: str = "sync", initial_map_bytes: int = 16 << 20,
                 max_map_bytes: int = 64 << 30, readonly: bool = False, seed: int = 0):
        if sync_mode not in SYNC_MODES:
            raise StoreError(f"sync mode {sync_mode!r} is not one of {sorted(SYNC_MODES)}")
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self.max_map_bytes = int(max_map_bytes)
        self._pid = os.getpid()
        if readonly:
            if not os.path.exists(os.path.join(self.path, "data.mdb")):
                raise StoreError(f"no flash store at {self.path} (data.mdb missing)")
        else:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create state directory {self.path}: {e.strerror}") from e
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise StoreError(f"state directory {self.path} is not writable by uid {os.getuid()}")
        # never let a file shorter than its own metadata reach the mmap: reading past its end is SIGBUS
        check_data_file(self.path)
        self.env = self._open_env(int(initial_map_bytes), readonly, sync_mode)
        self.env.reader_check()  # clear reader slots left by killed processes
        self._rw = _RWLock()
        self._rng = np.random.default_rng(seed)
        self._dbs: dict = {}
        self._specs: dict[str, SampleSpec] = {}
        self._index: dict[str, ClassIndex] = {}
        self._index_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._next_id: dict[str, int] = {}
        self._last_key: dict[str, bytes] = {}
        self._manifest: dict[str, Manifest] = {}
        self._meta, self._sealed = None, True
        self._unopenable: set = set()
        try:
            saved = self._open_checked(upgrade=not readonly)
        except lmdb.Error as e:
            self.env.close()
            raise _damaged(self.path, e) from None
        except StoreError:
            self.env.close()  # nothing was written: a store that fails its checks is left as it was
            raise
        if saved is not None:
            try:
                self._rng.bit_generator.state = json.loads(saved)
            except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
                raise StoreError(f"{self.path}: meta key {RNG_KEY!r} holds no {type(self._rng.bit_generator).__name__} "
                                 f"state ({e}); the store's data is intact, but its eviction draws cannot "
                                 f"continue") from e
        self._queue: "queue.Queue" = queue.Queue()
        self._writer = None
        if not readonly:
            self._writer = threading.Thread(target=self._writer_loop, name="flash-writer", daemon=True)
            self._writer.start()

    def _open_env(self, map_size: int, readonly: bool, sync_mode: str):
        kw = dict(map_size=map_size, max_dbs=64, max_readers=1024, readonly=readonly, lock=True,
                  **SYNC_MODES[sync_mode])
        try:
            return lmdb.open(self.path, **kw)
        except lmdb.Error as e:
            lock = os.path.join(self.path, "lock.mdb")
            if readonly or not os.path.exists(lock):
                raise _damaged(self.path, e, opening=True) from None
            first = e
        # lock.mdb holds no data, only reader slots: a damaged one is set aside and made afresh
        os.replace(lock, lock + ".damaged")
        try:
            env = lmdb.open(self.path, **kw)
        except lmdb.Error:
            os.replace(lock + ".damaged", lock)
            raise _damaged(self.path, first, opening=True) from None
        log.warning("%s: lock.mdb could not be used (%s); set aside as lock.mdb.damaged and recreated",
                    self.path, first)
        return env

    # ------------------------------------------------------------------ plumbing
    def _check_pid(self):
        if os.getpid() != self._pid:
            raise ForkError(f"LMDB environment {self.path} was opened in pid {self._pid} and used in "
                            f"pid {os.getpid()} after fork; open the store in the child instead")

    def _db(self, name: str, create: bool = True, txn=None):
        if name not in self._dbs:
            try:
                self._dbs[name] = self.env.open_db(name.encode(), txn=txn, create=create)
            except (lmdb.NotFoundError, lmdb.IncompatibleError, lmdb.BadValsizeError):
                return None  # absent, or a name the main DB holds for no database: the open-time check says so
        return self._dbs[name]

    def _read(self, fn: Callable):
        """Run ``fn(txn)`` in a read transaction, following a map grown by another process."""
        self._check_pid()
        for _ in range(3):
            self._rw.acquire_read()
            try:
                with self.env.begin(write=False) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                pass
            except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError, lmdb.InvalidError) as e:
                raise _damaged(self.path, e) from None
            finally:
                self._rw.release_read()
            self._rw.acquire_write()
            try:
                self.env.set_mapsize(0)  # adopt the size the writer process chose
            finally:
                self._rw.release_write()
        raise StoreError(f"{self.path}: map kept changing size during a read")

    def _write(self, job: Callable):
        """Hand ``job(txn) -> (result, after_commit)`` to the writer thread; wait for durability."""
        self._check_pid()
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        if self._writer is None or not self._writer.is_alive():
            raise StoreError(f"{self.path}: the flash tier is closed")
        fut: Future = Future()
        self._queue.put((job, fut))
        return fut.result()

    def _writer_loop(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, fut = item
            try:
                fut.set_result(self._run_write(job))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def _run_write(self, job):
        while True:
            # a job may draw evictions; a transaction that does not commit must not use up draws,
            # or the stored RNG state and the next job's draws would no longer match
            rng_before = self._rng.bit_generator.state
            try:
                with self.env.begin(write=True) as txn:
                    result, after = job(txn)
            except lmdb.MapFullError:
                self._rng.bit_generator.state = rng_before
                self._grow_map()
                continue
            except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError, lmdb.InvalidError) as e:
                self._rng.bit_generator.state = rng_before
                raise _damaged(self.path, e) from None
            except BaseException:
                self._rng.bit_generator.state = rng_before
                raise
            if after is not None:
                after()  # in-memory state changes only once the commit succeeded
            return result

    def _put_rng(self, txn):
        """Commit the eviction RNG's state with the evictions that drew from it."""
        self._meta_put(txn, RNG_KEY, json.dumps(self._rng.bit_generator.state))

    def _grow_map(self):
        size = self.env.info()["map_size"]
        if size >= self.max_map_bytes:
            raise BudgetError(f"{self.path}: LMDB map is full at {size} B (max_map_bytes={self.max_map_bytes})")
        self._rw.acquire_write()
        try:
            self.env.set_mapsize(min(size * 2, self.max_map_bytes))
        finally:
            self._rw.release_write()

    def _meta_get(self, txn, key: str):
        v = txn.get(key.encode(), db=self._meta)
        if v is None:
            return None
        try:
            return unseal(key, v, self._sealed)
        except ValueError as e:
            raise DamagedStoreError(damage_message(self.path, [str(e)])) from None

    def _meta_put(self, txn, key: str, value) -> None:
        txn.put(key.encode(), seal(key, str(value)), db=self._meta)

    def _put_manifest(self, txn, ns: str, m: Manifest) -> None:
        """The namespace's manifest, and the same under its log key (by samples seen and digest): a
        checkpoint taken at any committed state finds that state's manifest (``manifest_at``)."""
        self._meta_put(txn, f"ns/{ns}/manifest", m.to_json())
        self._meta_put(txn, log_key(ns, m), m.to_json())

    def _open_checked(self, upgrade: bool):
        """Every open-time check in one read transaction (meta.py: each meta record's crc, names and
        types, the named databases against the declared namespaces; the class index against the
        records, the manifest against both); a store that fails raises before anything is written.
        ``upgrade``: seal a schema-1 store's records and write missing manifests. Returns the RNG state."""
        for _ in range(3):  # DB handles are opened outside a transaction: again if another process made one
            for name in self._read(_db_names):
                if self._db(name, create=False) is None:
                    self._unopenable.add(name)  # not a database: the check names it, no retry
            got = self._read(self._load_checked)
            if got != _RETRY:
                break
        else:
            raise StoreError(f"{self.path}: named databases kept appearing while the store was opened")
        if got is None:  # a new store (no named database yet)
            if upgrade:
                with self.env.begin(write=True) as txn:
                    self._meta = self._db("meta", create=True, txn=txn)
                    self._meta_put(txn, "schema_version", SCHEMA_VERSION)
            return None
        scan, specs, scans = got
        problems = []
        for ns, spec in specs.items():
            self._specs[ns] = spec
            problems += self._install_index(ns, *scans[ns], scan)
        if problems:
            raise DamagedStoreError(damage_message(self.path, problems))
        self._sealed = scan.sealed
        missing = [ns for ns in specs if f"ns/{ns}/manifest" not in scan.values]
        if upgrade and (not scan.sealed or missing):
            with self.env.begin(write=True) as txn:  # schema 1 -> 2: nothing else has been written yet
                for k, v in scan.values.items():
                    self._meta_put(txn, k, v)
                self._meta_put(txn, "schema_version", SCHEMA_VERSION)
                for ns in missing:
                    self._put_manifest(txn, ns, self._manifest[ns])
            self._sealed = True
        return scan.values.get(RNG_KEY)

    def _load_checked(self, txn):
        names = _db_names(txn)
        if not names:
            return None
        if any(n not in self._dbs and n not in self._unopenable for n in names):
            return _RETRY
        meta = self._dbs.get("meta")
        scan = scan_meta(txn.cursor(db=meta)) if meta is not None else \
            MetaScan({}, ["the 'meta' database is missing (its name in LMDB's table was altered?)"])
        if scan.schema is not None and scan.schema > SCHEMA_VERSION:
            raise SchemaTooNewError(f"{self.path} was written by schema {scan.schema}; this miro-runtime reads "
                                    f"schema <= {SCHEMA_VERSION}. Upgrade miro-runtime or use another state dir")
        problems = scan.problems + check_dbs(scan, names)
        specs = {}
        for ns, text in scan.specs().items():
            try:
                specs[ns] = SampleSpec(**json.loads(text))
            except (TypeError, ValueError) as e:  # BadRecordError is a ValueError
                problems.append(f"namespace {ns!r}: its spec is not valid ({e})")
        if problems:
            raise DamagedStoreError(damage_message(self.path, problems))
        self._meta, self._sealed = meta, scan.sealed
        return scan, specs, {ns: self._scan_index(txn, ns) for ns in specs}

    def _scan_index(self, txn, ns: str):
        cls_db, data_db = (self._dbs.get(f"{ns}.{kind}") for kind in ("class", "data"))
        by_class: dict[int, list] = {}
        if cls_db is not None:
            for k in txn.cursor(db=cls_db).iternext(keys=True, values=False):
                k = bytes(k)
                by_class.setdefault(int.from_bytes(k[:4], "big"), []).append(int.from_bytes(k[4:], "big"))
        last = b""
        keys = []
        if data_db is not None:
            keys = [int.from_bytes(k, "big") for k in txn.cursor(db=data_db).iternext(keys=True, values=False)]
            last = keys[-1].to_bytes(8, "big") if keys else b""
        return by_class, int(self._meta_get(txn, f"ns/{ns}/next_id") or 0), last, keys

    def _install_index(self, ns, by_class: dict, next_id: int, last: bytes, keys: list, scan: MetaScan) -> list:
        """Check and adopt one namespace's scanned index; the manifest problems found (the index's own
        disagreement with the records raises at once)."""
        spec = self._specs[ns]
        self._check_index(ns, by_class, keys, next_id)
        idx = ClassIndex(spec.num_classes)
        for c, ids in by_class.items():
            idx.grow(c + 1)
            idx.add(c, np.asarray(ids, dtype=np.int64))
        with self._index_lock:
            self._index[ns] = idx
        with self._id_lock:
            self._next_id[ns] = max(next_id, self._next_id.get(ns, 0))
        self._last_key[ns] = last
        have = Manifest.of_index(idx.ids, int(scan.values.get(f"ns/{ns}/seen", 0)))
        self._manifest[ns] = have
        problems = []
        stored = scan.values.get(f"ns/{ns}/manifest")
        diff = Manifest.from_json(stored).differences(have, Manifest.FIELDS + ("seen",)) if stored else []
        if diff:
            problems.append(f"namespace {ns!r}: its manifest disagrees with the stored records ({', '.join(diff)})")
        count = scan.values.get(f"ns/{ns}/count")
        if count is not None and int(count) != have.count:
            problems.append(f"namespace {ns!r}: meta counts {count} records, {have.count} are stored")
        return problems

    def _check_index(self, ns, by_class: dict, keys: list, next_id: int):
        """The class index must list exactly the stored records, each once, under a declared class:
        a flipped bit in an index key would otherwise send swaps to missing or foreign samples."""
        top = max([max(v) for v in by_class.values()] + keys[-1:], default=0)  # keys come sorted
        if top >= 1 << 63:  # no id this store gives out: a flipped top bit in a key
            raise DamagedStoreError(f"{self.path}: namespace {ns!r}: a record or class index key holds the "
                                    f"impossible id {top}. `miro store verify {self.path}` lists the damage; "
                                    f"`miro store salvage {self.path} NEW_DIR` rebuilds a consistent store")
        indexed = np.sort(np.concatenate([np.asarray(v, dtype=np.int64) for v in by_class.values()])) \
            if by_class else np.empty(0, dtype=np.int64)
        stored = np.asarray(keys, dtype=np.int64)
        problems = []
        if indexed.size != np.unique(indexed).size:
            problems.append(f"{indexed.size - np.unique(indexed).size} samples listed under two classes")
        if not np.array_equal(np.unique(indexed), stored):
            problems.append(f"{np.setdiff1d(indexed, stored).size} index entries point to no record, "
                            f"{np.setdiff1d(stored, indexed).size} records are missing from the index")
        bad_cls = [c for c in by_class if c >= max(self._specs[ns].num_classes, 1) or c < 0]
        if bad_cls:
            top = self._specs[ns].num_classes - 1
            problems.append(f"classes {sorted(bad_cls)[:5]} outside the namespace's 0..{top}")
        if stored.size and next_id and stored[-1] >= next_id:
            problems.append(f"record id {int(stored[-1])} at or past the next id {next_id}")
        if problems:
            raise DamagedStoreError(f"{self.path}: namespace {ns!r}: the class index disagrees with the records ("
                                    + "; ".join(problems) + f"). `miro store verify {self.path}` lists them; "
                                    f"`miro store salvage {self.path} NEW_DIR` rebuilds a consistent store")

    def refresh(self):
        """Reload namespaces and class indexes (a reader process following a live writer)."""
        self._open_checked(upgrade=False)

    def manifest(self, ns: str) -> Manifest:
        """What the namespace holds now (count, id range, digest of ids and classes, samples seen)."""
        self.spec(ns)
        return self._manifest[ns]

    def manifests(self) -> dict:
        """{namespace: Manifest} of every sample namespace: what a checkpoint records."""
        return dict(self._manifest)

    def manifest_at(self, ns: str, seen: int) -> list:
        """The manifests the namespace had when it had seen ``seen`` samples (several when a budget
        change evicted without new samples; none when the log was pruned, or the store salvaged)."""
        return self._read(lambda txn: log_at(txn, self._meta, ns, seen, self._meta_get))

    def manifest_log_span(self, ns: str) -> Optional[tuple]:
        """(lowest, highest) samples seen that the namespace's manifest log holds; None when empty."""
        return self._read(lambda txn: log_span(txn, self._meta, ns))

    def prune_manifest_log(self, before_seen: dict) -> None:
        """Drop each namespace's log entries older than ``before_seen[ns]`` (the oldest checkpoint kept)."""
        self._write(lambda txn: (log_prune(txn, self._meta, before_seen), None))

    def close(self):
        if self._writer is not None and self._writer.is_alive() and os.getpid() == self._pid:
            self._queue.put(None)
            self._writer.join()
        if os.getpid() == self._pid:
            self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ sample namespaces
    def declare_samples(self, ns: str, spec: SampleSpec) -> SampleSpec:
        """Create a sample namespace, or check that an existing one matches (classes may grow)."""
        old = self._specs.get(ns)
        if old is not None:
            if old.shape != spec.shape or old.dtype != spec.dtype or old.aux_dim != spec.aux_dim:
                raise BadRecordError(f"namespace {ns!r} holds {old.dtype}{list(old.shape)} aux={old.aux_dim}; "
                                     f"asked for {spec.dtype}{list(spec.shape)} aux={spec.aux_dim}")
            spec.num_classes = max(spec.num_classes, old.num_classes)
            if asdict(old) == asdict(spec):
                return spec  # nothing to write: a reopen that is refused later leaves the file as it was
        def job(txn):
            for name in (f"{ns}.data", f"{ns}.class"):
                self._db(name, create=True, txn=txn)
            self._meta_put(txn, f"ns/{ns}/spec", json.dumps(asdict(spec)))
            if old is None:
                self._put_manifest(txn, ns, Manifest())

            def after():
                if old is None:
                    self._manifest[ns] = Manifest()
                self._specs[ns] = spec
                with self._index_lock:
                    self._index.setdefault(ns, ClassIndex(spec.num_classes)).grow(spec.num_classes)
                self._next_id.setdefault(ns, 0)
                self._last_key.setdefault(ns, b"")
            return None, after

        self._write(job)
        if old is not None and spec.capacity is not None:
            self.set_budget(ns, spec.budget_records, spec.budget_bytes)
        return spec

    def get_meta(self, key: str) -> Optional[str]:
        """A value written through ``put_batch(meta=...)`` or ``set_meta``."""
        return self._read(lambda txn: self._meta_get(txn, f"user/{key}"))

    def set_meta(self, key: str, value: str) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict) -> None:
        """Several meta keys (str -> str) in one transaction: a reader after a crash sees all or none."""
        def job(txn):
            for k, v in values.items():
                self._meta_put(txn, f"user/{k}", v)
            return None, None
        self._write(job)

    def seen(self, ns: str) -> int:
        """Samples ever offered to a namespace (stored, evicted or dropped): only ever grows."""
        return int(self._read(lambda txn: self._meta_get(txn, f"ns/{ns}/seen")) or 0)

    def spec(self, ns: str) -> SampleSpec:
        if ns not in self._specs:
            raise StoreError(f"no sample namespace {ns!r} in {self.path}; known: {sorted(self._specs)}")
        return self._specs[ns]

    def _validate(self, ns, spec, arrays, labels, tasks, aux):
        n = len(labels)
        if len(arrays) != n or len(tasks) != n or (aux is not None and len(aux) != n):
            raise BadRecordError(f"namespace {ns!r}: arrays, labels, tasks and aux differ in length")
        want = np.dtype(spec.dtype)
        for i in range(n):
            a = arrays[i]
            if a.dtype != want or tuple(a.shape) != spec.shape:
                raise BadRecordError(f"namespace {ns!r}, sample {i} of the batch: {a.dtype}{list(a.shape)} "
                                     f"does not match {want}{list(spec.shape)}")
            if not 0 <= int(labels[i]) < spec.num_classes:
                raise BadRecordError(f"namespace {ns!r}, sample {i} of the batch: label {int(labels[i])} is "
                                     f"outside the declared classes 0..{spec.num_classes - 1}")
            if spec.aux_dim and (aux is None or np.size(aux[i]) != spec.aux_dim):
                raise BadRecordError(f"namespace {ns!r}, sample {i}: aux must hold {spec.aux_dim} values")
        if spec.capacity is not None and spec.capacity < 1:
            raise BudgetError(f"namespace {ns!r}: a {spec.record_bytes}-byte record is larger than the "
                              f"budget ({spec.budget_bytes} B / {spec.budget_records} records)")
        if want.kind == "f":
            bad = [i for i in range(n) if not np.isfinite(arrays[i]).all()]
            if bad:
                raise BadRecordError(f"namespace {ns!r}, sample {bad[0]} of the batch holds NaN or inf")

    def put_batch(self, ns: str, arrays: Sequence[np.ndarray], labels: Sequence[int],
                  tasks: Sequence[int], aux: Optional[Sequence[np.ndarray]] = None,
                  timestamps: Optional[Sequence[float]] = None, meta: Optional[dict] = None) -> PutResult:
        """Store a batch atomically; returns once durable. Invalid input raises before any write.
        ``meta`` (str -> str) is written in the same transaction: a caller's stream position then
        can never disagree with what was stored."""
        return self.put_batches([NsBatch(ns, arrays, labels, tasks, aux, timestamps)], meta=meta)[0]

    def put_batches(self, batches: Sequence["NsBatch"], meta: Optional[dict] = None) -> list:
        """Several namespaces' batches in one transaction (each namespace at most once): all are stored
        or none, and every one is validated before anything is written. -> a PutResult per batch.
        ``meta``'s placeholders ({first_id}, {stored}, {evicted}) are the first batch's."""
        names = [b.ns for b in batches]
        if len(set(names)) != len(names):
            raise BadRecordError(f"put_batches: a namespace appears twice in one call ({names})")
        prepared = [self._prepare(b) for b in batches]  # validates all before any id is drawn
        jobs = [self._batch_job(b.ns, *p, meta=meta if i == 0 else None)
                for i, (b, p) in enumerate(zip(batches, prepared))]

        def job(txn):
            results, afters = [], []
            for j in jobs:
                r, a = j(txn)
                results.append(r)
                afters.append(a)

            def after():
                for a in afters:
                    a()
            return results, after

        return self._write(job)

    def _prepare(self, b: "NsBatch") -> tuple:
        spec = self.spec(b.ns)
        labels = np.asarray(b.labels, dtype=np.int64).reshape(-1)
        tasks = np.asarray(b.tasks, dtype=np.int64).reshape(-1)
        self._validate(b.ns, spec, b.arrays, labels, tasks, b.aux)
        return spec, b.arrays, labels, tasks, b.aux, b.timestamps

    def _batch_job(self, ns, spec, arrays, labels, tasks, aux, timestamps, meta) -> Callable:
        """Ids drawn now; the returned ``job(txn) -> (PutResult, after)`` writes the batch."""
        n = labels.size
        with self._id_lock:
            first = self._next_id[ns]
            self._next_id[ns] = first + n
        ids = np.arange(first, first + n, dtype=np.int64)
        ts = [None] * n if timestamps is None else timestamps
        encoded = [encode_record(arrays[i], labels[i], tasks[i], ids[i], ts[i],
                                 None if aux is None else aux[i]) for i in range(n)]
        keys = [int(i).to_bytes(8, "big") for i in ids]
        data_db, cls_db = self._db(f"{ns}.data"), self._db(f"{ns}.class")

        def job(txn):
            drop_new, evict_old = self._plan_eviction(txn, ns, spec, ids, labels)
            if spec.capacity is not None:
                self._put_rng(txn)
            keep = ~np.isin(ids, list(drop_new)) if drop_new else np.ones(n, dtype=bool)
            for cls, sid in evict_old:
                txn.delete(int(sid).to_bytes(8, "big"), db=data_db)
                txn.delete(int(cls).to_bytes(4, "big") + int(sid).to_bytes(8, "big"), db=cls_db)
            items = [(keys[i], encoded[i]) for i in range(n) if keep[i]]
            if items:
                append = items[0][0] > self._last_key.get(ns, b"")
                txn.cursor(db=data_db).putmulti(items, append=append)
                txn.cursor(db=cls_db).putmulti(
                    sorted((int(labels[i]).to_bytes(4, "big") + keys[i], b"") for i in range(n) if keep[i]))
            count = self._count(ns) + int(keep.sum()) - len(evict_old)
            seen = int(self._meta_get(txn, f"ns/{ns}/seen") or 0) + n
            for k, v in ((f"ns/{ns}/next_id", first + n), (f"ns/{ns}/count", count),
                         (f"ns/{ns}/bytes", count * spec.record_bytes), (f"ns/{ns}/seen", seen)):
                self._meta_put(txn, k, v)
            man = advance(self._manifest[ns], ids[keep], labels[keep], evict_old,
                          lambda: self._bounds(ns, ids[keep], evict_old), n)
            self._put_manifest(txn, ns, man)
            # placeholders in a value are filled with what this transaction decided, so a caller can
            # commit the batch's answer with the batch (an exactly-once ingest's acknowledgement)
            filled = {"{first_id}": first, "{stored}": int(keep.sum()), "{evicted}": len(evict_old)}
            for k, v in (meta or {}).items():
                v = str(v)
                for mark, value in filled.items():
                    v = v.replace(mark, str(value))
                self._meta_put(txn, f"user/{k}", v)

            def after():
                self._manifest[ns] = man
                self._apply_index(ns, ids[keep], labels[keep], evict_old)
                if items and items[-1][0] > self._last_key.get(ns, b""):
                    self._last_key[ns] = items[-1][0]
            return PutResult(ids, keep, len(evict_old)), after

        return job

    def _bounds(self, ns, add_ids, evict_old) -> tuple:
        """(lowest, highest) id stored once ``evict_old`` is gone and ``add_ids`` are in."""
        with self._index_lock:
            ids = np.concatenate(self._index[ns].ids + [np.asarray(add_ids, dtype=np.int64)])
        ids = ids[~np.isin(ids, [sid for _, sid in evict_old])]
        return (int(ids.min()), int(ids.max())) if ids.size else (-1, -1)

    def _count(self, ns) -> int:
        with self._index_lock:
            return int(self._index[ns].counts().sum())

    def _plan_eviction(self, txn, ns, spec, new_ids, new_labels):
        """Decide, without writing, which new samples to drop and which stored ones to evict so the
        namespace fits its capacity. Runs on the writer thread (the only mutator of the index)."""
        cap = spec.capacity
        drop_new, evict_old = set(), []
        if cap is None:
            return drop_new, evict_old
        with self._index_lock:
            idx = self._index[ns]
            old = [a.copy() for a in idx.ids]
        nc = max(len(old), spec.num_classes)
        old += [np.empty(0, dtype=np.int64)] * (nc - len(old))
        if spec.policy == "class-balanced":
            new_by_c = [new_ids[new_labels == c] for c in range(nc)]
            counts = np.array([old[c].size + new_by_c[c].size for c in range(nc)])
            excess = int(counts.sum()) - cap
            n_evict = np.zeros(nc, dtype=np.int64)
            while excess > 0:  # always take from the largest class: keeps classes balanced
                c = int(np.argmax(counts - n_evict))
                n_evict[c] += 1
                excess -= 1
            for c in np.nonzero(n_evict)[0]:
                pool = np.concatenate([old[c], new_by_c[c]])
                fresh = set(new_by_c[c].tolist())
                for sid in self._rng.choice(pool, size=int(n_evict[c]), replace=False):
                    if int(sid) in fresh:
                        drop_new.add(int(sid))
                    else:
                        evict_old.append((int(c), int(sid)))
            return drop_new, evict_old
        # reservoir: every sample seen so far has the same chance cap/seen of being stored
        pool_ids = np.concatenate(old)
        pool_cls = np.concatenate([np.full(a.size, c) for c, a in enumerate(old)])
        pool_ids, pool_cls = list(pool_ids), list(pool_cls)
        seen = int(self._meta_get(txn, f"ns/{ns}/seen") or 0)
        newset = set(int(i) for i in new_ids)
        for sid, c in zip(new_ids, new_labels):
            seen += 1
            if len(pool_ids) < cap:
                pool_ids.append(int(sid))
                pool_cls.append(int(c))
                continue
            j = int(self._rng.integers(seen))
            if j < cap:
                out = pool_ids[j]
                if out in newset:
                    drop_new.add(out)
                else:
                    evict_old.append((int(pool_cls[j]), out))
                pool_ids[j], pool_cls[j] = int(sid), int(c)
            else:
                drop_new.add(int(sid))
        while len(pool_ids) > cap:  # the budget shrank below what is stored
            j = int(self._rng.integers(len(pool_ids)))
            out, c = pool_ids.pop(j), pool_cls.pop(j)
            (drop_new.add(out) if out in newset else evict_old.append((int(c), out)))
        return drop_new, evict_old

    def _apply_index(self, ns, add_ids, add_labels, evict_old):
        with self._index_lock:
            idx = self._index[ns]
            for c in np.unique(add_labels):
                idx.grow(int(c) + 1)
                idx.add(int(c), add_ids[add_labels == c])
            by_c: dict[int, list] = {}
            for c, sid in evict_old:
                by_c.setdefault(c, []).append(sid)
            for c, sids in by_c.items():
                idx.remove(c, np.asarray(sids, dtype=np.int64))

    def set_budget(self, ns: str, budget_records: Optional[int] = None,
                   budget_bytes: Optional[int] = None) -> int:
        """Change a namespace's budget at run time; evicts by its policy. Returns records evicted."""
        spec = self.spec(ns)
        new = SampleSpec(**{**asdict(spec), "budget_records": budget_records, "budget_bytes": budget_bytes})
        if new.capacity is not None and new.capacity < 1:
            raise BudgetError(f"namespace {ns!r}: budget {budget_bytes} B / {budget_records} records holds "
                              f"no {spec.record_bytes}-byte record")
        data_db, cls_db = self._db(f"{ns}.data"), self._db(f"{ns}.class")
        empty = np.empty(0, dtype=np.int64)

        def job(txn):
            _, evict_old = self._plan_eviction(txn, ns, new, empty, empty)
            self._put_rng(txn)
            for cls, sid in evict_old:
                txn.delete(int(sid).to_bytes(8, "big"), db=data_db)
                txn.delete(int(cls).to_bytes(4, "big") + int(sid).to_bytes(8, "big"), db=cls_db)
            count = self._count(ns) - len(evict_old)
            self._meta_put(txn, f"ns/{ns}/spec", json.dumps(asdict(new)))
            self._meta_put(txn, f"ns/{ns}/count", count)
            self._meta_put(txn, f"ns/{ns}/bytes", count * spec.record_bytes)
            man = advance(self._manifest[ns], empty, empty, evict_old, lambda: self._bounds(ns, empty, evict_old), 0)
            self._put_manifest(txn, ns, man)

            def after():
                self._manifest[ns] = man
                self._apply_index(ns, empty, empty, evict_old)
                self._specs[ns] = new
            return len(evict_old), after

        return self._write(job)

    def get_samples(self, ns: str, ids: Sequence[int]) -> list:
        """Decode the given sample ids (crc-checked) in one read transaction; None for missing ids."""
        data_db = self._db(f"{ns}.data", create=False)
        if data_db is None:
            raise StoreError(f"no sample namespace {ns!r} in {self.path}")

        def read(txn):
            out = []
            for sid in ids:
                buf = txn.get(int(sid).to_bytes(8, "big"), db=data_db)
                out.append(None if buf is None else decode_record(buf, key=f"{ns}/{int(sid)}"))
            return out

        return self._read(read)

    def read_batch(self, ns: str, ids: Sequence[int]) -> dict:
        """Read and verify ``ids`` into one preallocated batch: {'x' (K, *shape), 'labels', 'tasks',
        'ids', 'aux' (K, A) or None, 'found' (K,) bool}. The swap engine's read path."""
        spec = self.spec(ns)
        data_db = self._db(f"{ns}.data", create=False)
        k = len(ids)
        x = np.zeros((k, *spec.shape), dtype=spec.dtype)  # (K, *shape)
        mv = memoryview(x.reshape(-1).view(np.uint8))
        row = x[0].nbytes if k else 0
        labels = np.full(k, -1, dtype=np.int64)
        tasks = np.full(k, -1, dtype=np.int64)
        found = np.zeros(k, dtype=bool)
        aux = np.zeros((k, spec.aux_dim), dtype=np.float32) if spec.aux_dim else None

        def read(txn):
            get = txn.get
            for i, sid in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
                buf = get(sid.to_bytes(8, "big"), db=data_db)
                if buf is None:
                    continue
                lab, task, _, a = decode_into(buf, mv[i * row:(i + 1) * row], key=(ns, sid))
                labels[i], tasks[i], found[i] = lab, task, True
                if aux is not None and a is not None:
                    aux[i] = a

        self._read(read)
        return {"x": x, "labels": labels, "tasks": tasks, "ids": np.asarray(ids, dtype=np.int64),
                "aux": aux, "found": found}

    def class_counts(self, ns: str) -> np.ndarray:
        self.spec(ns)
        with self._index_lock:
            return self._index[ns].counts()

    def class_ids(self, ns: str, cls: int) -> np.ndarray:
        with self._index_lock:
            idx = self._index[ns]
            return idx.ids[cls].copy() if cls < len(idx.ids) else np.empty(0, dtype=np.int64)

    def draw_ids(self, ns: str, classes: np.ndarray, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
        """One random stored id per entry of ``classes`` (see ``ClassIndex.draw``): the swap path."""
        with self._index_lock:
            idx = self._index.get(ns)
            if idx is None:
                return np.full(classes.size, -1, dtype=np.int64)
            return idx.draw(classes, rng, exclude)

    def stats(self, ns: Optional[str] = None) -> dict:
        info = self.env.info()
        out = {"path": self.path, "map_size": info["map_size"], "schema_version": SCHEMA_VERSION,
               "namespaces": {}}
        for name in ([ns] if ns else sorted(self._specs)):
            spec = self._specs[name]
            counts = self.class_counts(name)
            out["namespaces"][name] = {"records": int(counts.sum()), "bytes": int(counts.sum()) * spec.record_bytes,
                                       "capacity": spec.capacity, "policy": spec.policy,
                                       "class_counts": counts.tolist(), "shape": list(spec.shape),
                                       "dtype": spec.dtype}
        return out

    # ------------------------------------------------------------------ generic blob interface
    def _blob_db(self, ns, create):
        return self._db(f"{ns}.blob", create=create and not self.readonly)

    def put(self, namespace, key, value):
        k, v = blob_key(key), encode_blob(value)

        def job(txn):
            db = self._db(f"{namespace}.blob", create=True, txn=txn)
            old = txn.get(k, db=db)
            used = int(self._meta_get(txn, f"blob/{namespace}/bytes") or 0)
            used += len(v) - (len(old) if old is not None else 0)
            txn.put(k, v, db=db)
            self._meta_put(txn, f"blob/{namespace}/bytes", used)
            return None, None

        self._write(job)

    def get(self, namespace, key):
        k, db = blob_key(key), self._blob_db(namespace, False)
        if db is None:
            return None
        buf = self._read(lambda txn: txn.get(k, db=db))
        return None if buf is None else decode_blob(buf, key=f"{namespace}/{k!r}")

    def contains(self, namespace, key):
        k, db = blob_key(key), self._blob_db(namespace, False)
        return db is not None and self._read(lambda txn: txn.get(k, db=db)) is not None

    def get_many(self, namespace, keys, view: bool = False) -> list:
        """Several blobs in one read transaction: [bytes or None] in the order asked (``view``:
        read-only memoryviews of the checked payloads, one copy fewer)."""
        db = self._blob_db(namespace, False)
        if db is None:
            return [None] * len(keys)
        ks = [blob_key(k) for k in keys]
        bufs = self._read(lambda txn: [txn.get(k, db=db) for k in ks])
        return [None if b is None else decode_blob(b, key=f"{namespace}/{k!r}", view=view) for k, b in zip(ks, bufs)]

    def put_many(self, namespace, items) -> None:
        """Several (key, value) blobs in one write transaction (one fsync)."""
        enc = [(blob_key(k), encode_blob(v)) for k, v in items]

        def job(txn):
            db = self._db(f"{namespace}.blob", create=True, txn=txn)
            used = int(self._meta_get(txn, f"blob/{namespace}/bytes") or 0)
            for k, v in enc:
                old = txn.get(k, db=db)
                used += len(v) - (len(old) if old is not None else 0)
                txn.put(k, v, db=db)
            self._meta_put(txn, f"blob/{namespace}/bytes", used)
            return None, None

        self._write(job)

    def keys(self, namespace) -> list:
        """Every key of a blob namespace (bytes, in key order)."""
        db = self._blob_db(namespace, False)
        if db is None:
            return []
        return self._read(lambda txn: [bytes(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)])

    def delete(self, namespace, key):
        k, db = blob_key(key), self._blob_db(namespace, False)
        if db is None:
            return False

        def job(txn):
            old = txn.get(k, db=db)
            if old is None:
                return False, None
            used = int(self._meta_get(txn, f"blob/{namespace}/bytes") or 0) - len(old)
            txn.delete(k, db=db)
            self._meta_put(txn, f"blob/{namespace}/bytes", used)
            return True, None

        return self._write(job)

    def delete_many(self, namespace, keys) -> int:
        """Several blobs deleted in one write transaction; how many existed."""
        ks, db = [blob_key(k) for k in keys], self._blob_db(namespace, False)
        if db is None or not ks:
            return 0

        def job(txn):
            used, n = int(self._meta_get(txn, f"blob/{namespace}/bytes") or 0), 0
            for k in ks:
                old = txn.get(k, db=db)
                if old is not None:
                    used, n = used - len(old), n + 1
                    txn.delete(k, db=db)
            self._meta_put(txn, f"blob/{namespace}/bytes", used)
            return n, None

        return self._write(job)

    def bytes_used(self, namespace):
        if namespace in self._specs:
            return int(self.class_counts(namespace).sum()) * self._specs[namespace].record_bytes
        return int(self._read(lambda txn: self._meta_get(txn, f"blob/{namespace}/bytes")) or 0)


__all__ = ["FlashTier", "SampleSpec", "PutResult", "Record", "SCHEMA_VERSION", "SYNC_MODES", "POLICIES"]
