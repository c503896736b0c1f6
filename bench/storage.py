"""Storage benchmark: LMDB flash tier vs one PNG file per sample (the original CarM layout) and
one pickle file per sample, for 1x28x28 and 3x32x32 uint8 samples; plus swap latency.

Reads: LMDB reads 64 random samples per read transaction (a swap-sized batch), and also one per
transaction; PNG and pickle read one file per sample. Each format is read twice: warm (the files
just written, in the page cache) and cold (every file of the store synced and dropped from the page
cache with POSIX_FADV_DONTNEED first; machine-wide Cached before and after shows whether it took).
LMDB ingest is fsynced per batch (the store's default), the file baselines are not fsynced, as the
CarM code does not. ``--smoke`` is for checking the code runs, not for figures.
Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, evict, machine, median  # noqa: E402

from miro_runtime.storage import FlashTier, RamTier, SampleSpec, SwapEngine  # noqa: E402

# the code these figures measure (run_all.py marks the section stale when it changes)
MEASURES = ("storage",)
LMDB_BATCH = 64  # random samples per read transaction: a swap-sized batch
SHAPES = {"1x28x28": (1, 28, 28), "3x32x32": (3, 32, 32)}


def data(shape, n, seed):
    rng = np.random.default_rng(seed)
    # smooth-ish images so PNG compresses as it would on real data, not on white noise
    base = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
    return (base // 32 * 32).astype(np.uint8), rng.integers(0, 10, n)


def bench_lmdb(root, shape, x, y, reads, seed):
    f = FlashTier(os.path.join(root, "lmdb"))
    f.declare_samples("s", SampleSpec(shape=shape, num_classes=10))
    xs, n, batch = list(x), len(y), 1024
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        f.put_batch("s", xs[i:i + batch], y[i:i + batch], np.zeros(min(batch, n - i)))
    ingest = n / (time.perf_counter() - t0)
    ids = np.random.default_rng(seed).integers(0, n, reads)
    read = lmdb_reads(f, ids, LMDB_BATCH)
    single = lmdb_reads(f, ids, 1)
    return f, {"ingest_per_s": ingest, "random_read_per_s": read, "random_read_1_per_txn_per_s": single}


def lmdb_reads(f, ids, per_txn: int) -> float:
    """Random samples/s, ``per_txn`` of them per read transaction (crc-verified, copied into one array)."""
    t0 = time.perf_counter()
    for i in range(0, len(ids), per_txn):
        f.read_batch("s", ids[i:i + per_txn])
    return len(ids) / (time.perf_counter() - t0)


def cold(store: str, read) -> dict:
    """``read()`` -> samples/s right after every file under ``store`` was dropped from the page cache."""
    ev = evict(store)
    return {"random_read_per_s": read(), "eviction": ev}


def bench_png(root, shape, x, y, reads, seed):
    from PIL import Image
    d = os.path.join(root, "png")
    paths = []
    t0 = time.perf_counter()
    for i, (img, lab) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(d, str(lab)), exist_ok=True)
        p = os.path.join(d, str(lab), f"{i}.png")
        arr = img[0] if shape[0] == 1 else img.transpose(1, 2, 0)  # (H, W) or (H, W, C)
        Image.fromarray(arr).save(p)
        paths.append(p)
    ingest = len(y) / (time.perf_counter() - t0)
    ids = np.random.default_rng(seed).integers(0, len(y), reads)

    def read():
        t0 = time.perf_counter()
        for i in ids:
            with Image.open(paths[i]) as im:
                np.asarray(im)  # decodes the PNG
        return reads / (time.perf_counter() - t0)
    return {"ingest_per_s": ingest, "random_read_per_s": read(), "cold": cold(d, read)}


def bench_pickle(root, shape, x, y, reads, seed):
    d = os.path.join(root, "pkl")
    os.makedirs(d)
    t0 = time.perf_counter()
    for i, (img, lab) in enumerate(zip(x, y)):
        with open(os.path.join(d, f"{i}.pkl"), "wb") as fh:
            pickle.dump({"x": img, "y": int(lab)}, fh)
    ingest = len(y) / (time.perf_counter() - t0)
    ids = np.random.default_rng(seed).integers(0, len(y), reads)

    def read():
        t0 = time.perf_counter()
        for i in ids:
            with open(os.path.join(d, f"{i}.pkl"), "rb") as fh:
                pickle.load(fh)["x"]  # baseline only: never unpickle what we store
        return reads / (time.perf_counter() - t0)
    return {"ingest_per_s": ingest, "random_read_per_s": read(), "cold": cold(d, read)}


def cold_lmdb(root, x, reads, seed) -> float:
    """The store reopened after eviction and the same random reads, 64 per transaction, timed together:
    opening scans the store's keys, which brings its leaf pages (small records sit inline in them)
    back into the page cache, so timing the reads alone would hide part of the cold cost."""
    ids = np.random.default_rng(seed).integers(0, len(x), reads)
    t0 = time.perf_counter()
    f = FlashTier(os.path.join(root, "lmdb"))
    try:
        for i in range(0, len(ids), LMDB_BATCH):
            f.read_batch("s", ids[i:i + LMDB_BATCH])
        return len(ids) / (time.perf_counter() - t0)
    finally:
        f.close()


def bench_swap(flash, shape, seed, requests=300, per_request=16):
    import torch
    ram = RamTier(256, shape)
    for i in range(256):
        ram.append(torch.zeros(shape, dtype=torch.uint8), i % 10)
    eng = SwapEngine(flash, ram, namespace="s", workers=2, max_queue=1024, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(requests):
        eng.request_swap(rng.choice(256, per_request, replace=False), rng.integers(0, 10, per_request))
        time.sleep(0.005)  # one request per training step (~5 ms for a small CNN here)
    eng.drain(60)
    st = eng.stats()
    eng.close()
    return st["latency_ms_p50"], st["latency_ms_p99"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="for checking the code runs, not for figures: 2000 samples, 500 reads, 1 repeat")
    args = ap.parse_args(argv)
    if args.smoke:
        args.samples, args.reads, args.repeats = 2000, 500, 1
    out = {"machine": machine(), "samples": args.samples, "reads": args.reads, "repeats": args.repeats,
           "shapes": {}}
    p50s, p99s = [], []
    for name, shape in SHAPES.items():
        runs = {"lmdb": [], "png_files": [], "pickle_files": []}
        for rep in range(args.repeats):
            x, y = data(shape, args.samples, rep)
            root = tempfile.mkdtemp(prefix="miro-bench-")
            try:
                flash, r = bench_lmdb(root, shape, x, y, args.reads, rep)
                runs["lmdb"].append(r)
                if name == "3x32x32":
                    p50, p99 = bench_swap(flash, shape, rep)
                    p50s.append(p50)
                    p99s.append(p99)
                flash.close()  # LMDB maps its file: closed, so eviction can drop its pages
                r["cold"] = cold(os.path.join(root, "lmdb"), partial(cold_lmdb, root, x, args.reads, rep))
                runs["png_files"].append(bench_png(root, shape, x, y, args.reads, rep))
                runs["pickle_files"].append(bench_pickle(root, shape, x, y, args.reads, rep))
            finally:
                shutil.rmtree(root, ignore_errors=True)
        out["shapes"][name] = {fmt: {k: median([r[k] for r in rs]) for k in rs[0] if k != "cold"}
                               for fmt, rs in runs.items()}
        for fmt, rs in runs.items():  # every repeat's cold read, with its eviction figures
            out["shapes"][name][fmt]["cold_runs"] = [r["cold"] for r in rs]
            out["shapes"][name][fmt]["cold_random_read_per_s"] = median([r["cold"]["random_read_per_s"] for r in rs])
        s = out["shapes"][name]
        s["read_speedup_vs_png"] = s["lmdb"]["random_read_per_s"] / s["png_files"]["random_read_per_s"]
    out["swap_latency_ms"] = {"p50": median(p50s), "p99": median(p99s),
                              "what": "request->slots written, 16 samples of 3x32x32 per request, 2 workers"}
    out["targets"] = {"read_10x_png": all(s["read_speedup_vs_png"] >= 10 for s in out["shapes"].values()),
                      "ingest_50k_28x28": out["shapes"]["1x28x28"]["lmdb"]["ingest_per_s"] >= 50000}
    emit(out)


def render(r: dict) -> str:
    cold = all("cold_random_read_per_s" in f for s in r["shapes"].values() for f in s.values() if isinstance(f, dict))
    lines = ["| shape | format | ingest samples/s | random read samples/s, warm | "
             + ("cold | " if cold else "") + "reads per transaction or file |",
             "|---|---|---:|---:|" + ("---:|" if cold else "") + "---|"]
    for name, s in r["shapes"].items():
        for fmt in ("lmdb", "png_files", "pickle_files"):
            f = s[fmt]
            how = f"{LMDB_BATCH} samples per read transaction" if fmt == "lmdb" else "one file per sample"
            lines.append(f"| {name} | {fmt} | {f['ingest_per_s']:,.0f} | {f['random_read_per_s']:,.0f} | "
                         + (f"{f['cold_random_read_per_s']:,.0f} | " if cold else "") + f"{how} |")
            if "random_read_1_per_txn_per_s" in f:
                lines.append(f"| {name} | lmdb | | {f['random_read_1_per_txn_per_s']:,.0f} | "
                             + ("| " if cold else "") + "one sample per read transaction |")
    lines.append("")
    for name, s in r["shapes"].items():
        text = (f"- {name}: LMDB random read ({LMDB_BATCH} per transaction, warm) = "
                f"**{s['read_speedup_vs_png']:.1f}x** the PNG-per-file baseline (one file per sample)")
        if "random_read_1_per_txn_per_s" in s["lmdb"]:
            text += (f"; one sample per transaction, like for like with a file per sample: "
                     f"{s['lmdb']['random_read_1_per_txn_per_s'] / s['png_files']['random_read_per_s']:.1f}x")
        if cold:
            text += (f"; cold, {LMDB_BATCH} per transaction: "
                     f"{s['lmdb']['cold_random_read_per_s'] / s['png_files']['cold_random_read_per_s']:.1f}x")
        lines.append(text + ".")
    sl = r["swap_latency_ms"]
    lines.append(f"- Swap latency ({sl['what']}): p50 {sl['p50']:.2f} ms, p99 {sl['p99']:.2f} ms.")
    t = r["targets"]
    lines.append(f"- Targets: LMDB read >= 10x PNG (warm, {LMDB_BATCH} per transaction, as the swap engine reads): "
                 f"**{'met' if t['read_10x_png'] else 'NOT met'}**; sync batched ingest >= 50k/s at 28x28: "
                 f"**{'met' if t['ingest_50k_28x28'] else 'NOT met'}**.")
    lines.append(f"- {r['samples']} samples, {r['reads']} random reads, median of {r['repeats']} runs "
                 "(seeds 0..n-1). LMDB ingest fsynced per 1024-sample batch, file baselines not fsynced (as CarM "
                 "writes them), so the ingest comparison favours the baselines. Warm reads come from the page "
                 "cache (the files were just written).")
    if cold:
        parts = []
        for name, s in r["shapes"].items():
            for fmt in ("lmdb", "png_files", "pickle_files"):
                f = s[fmt]
                ev = [c["eviction"] for c in f["cold_runs"]]
                drop = median([e["cached_before_mib"] - e["cached_after_mib"] for e in ev])
                size = median([e["store_mib"] for e in ev])
                ratio = f["random_read_per_s"] / f["cold_random_read_per_s"]
                parts.append(f"{name} {fmt}: cold {ratio:.1f}x slower than warm, Cached fell {drop:.0f} of "
                             f"{size:.0f} MiB")
        lines.append("- Cold column: every file of the store synced, then dropped from the page cache with "
                     "`posix_fadvise(POSIX_FADV_DONTNEED)` (LMDB closed first, since pages it maps stay), then the "
                     "same random reads; LMDB's cold time includes reopening the store, whose key scan reads its "
                     "leaf pages back. Whether eviction took (read time and machine-wide Cached, medians): "
                     + "; ".join(parts) + ". A format whose cold reads are not slower and whose Cached did not "
                     "fall was not shown to be read from the device. Cold means out of this VM's page cache: the "
                     "host of its virtual disk may still cache it.")
    else:
        lines.append("- Reads of this run are warm only (page cache), for every format.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
