"""Storage benchmark: LMDB flash tier vs one PNG file per sample (the original CarM layout) and
one pickle file per sample, for 1x28x28 and 3x32x32 uint8 samples; plus swap latency.

Warm page cache for every format (we cannot drop caches in CI); LMDB ingest is fsynced per batch
(the store's default), the file baselines are not fsynced, as the CarM code does not.
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, median  # noqa: E402

from miro_runtime.storage import FlashTier, RamTier, SampleSpec, SwapEngine  # noqa: E402

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
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, reads)
    t0 = time.perf_counter()
    for i in range(0, reads, 64):  # a swap-sized batch of random samples per read transaction
        f.read_batch("s", ids[i:i + 64])  # crc-verified, copied into one (64, *shape) array
    read = reads / (time.perf_counter() - t0)
    return f, {"ingest_per_s": ingest, "random_read_per_s": read}


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
    t0 = time.perf_counter()
    for i in ids:
        with Image.open(paths[i]) as im:
            np.asarray(im)  # decodes the PNG
    return {"ingest_per_s": ingest, "random_read_per_s": reads / (time.perf_counter() - t0)}


def bench_pickle(root, shape, x, y, reads, seed):
    d = os.path.join(root, "pkl")
    os.makedirs(d)
    t0 = time.perf_counter()
    for i, (img, lab) in enumerate(zip(x, y)):
        with open(os.path.join(d, f"{i}.pkl"), "wb") as fh:
            pickle.dump({"x": img, "y": int(lab)}, fh)
    ingest = len(y) / (time.perf_counter() - t0)
    ids = np.random.default_rng(seed).integers(0, len(y), reads)
    t0 = time.perf_counter()
    for i in ids:
        with open(os.path.join(d, f"{i}.pkl"), "rb") as fh:
            pickle.load(fh)["x"]  # baseline only: never unpickle what we store
    return {"ingest_per_s": ingest, "random_read_per_s": reads / (time.perf_counter() - t0)}


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
    args = ap.parse_args(argv)
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
                flash.close()
                runs["png_files"].append(bench_png(root, shape, x, y, args.reads, rep))
                runs["pickle_files"].append(bench_pickle(root, shape, x, y, args.reads, rep))
            finally:
                shutil.rmtree(root, ignore_errors=True)
        out["shapes"][name] = {fmt: {k: median([r[k] for r in rs]) for k in rs[0]} for fmt, rs in runs.items()}
        s = out["shapes"][name]
        s["read_speedup_vs_png"] = s["lmdb"]["random_read_per_s"] / s["png_files"]["random_read_per_s"]
    out["swap_latency_ms"] = {"p50": median(p50s), "p99": median(p99s),
                              "what": "request->slots written, 16 samples of 3x32x32 per request, 2 workers"}
    out["targets"] = {"read_10x_png": all(s["read_speedup_vs_png"] >= 10 for s in out["shapes"].values()),
                      "ingest_50k_28x28": out["shapes"]["1x28x28"]["lmdb"]["ingest_per_s"] >= 50000}
    emit(out)


def render(r: dict) -> str:
    lines = ["| shape | format | ingest samples/s | random read samples/s |", "|---|---|---:|---:|"]
    for name, s in r["shapes"].items():
        for fmt in ("lmdb", "png_files", "pickle_files"):
            lines.append(f"| {name} | {fmt} | {s[fmt]['ingest_per_s']:,.0f} | {s[fmt]['random_read_per_s']:,.0f} |")
    lines.append("")
    for name, s in r["shapes"].items():
        lines.append(f"- {name}: LMDB random read = **{s['read_speedup_vs_png']:.1f}x** the PNG-per-file baseline.")
    sl = r["swap_latency_ms"]
    lines.append(f"- Swap latency ({sl['what']}): p50 {sl['p50']:.2f} ms, p99 {sl['p99']:.2f} ms.")
    t = r["targets"]
    lines.append(f"- Targets: LMDB read >= 10x PNG: **{'met' if t['read_10x_png'] else 'NOT met'}**; "
                 f"sync batched ingest >= 50k/s at 28x28: **{'met' if t['ingest_50k_28x28'] else 'NOT met'}**.")
    lines.append(f"- {r['samples']} samples, {r['reads']} random reads, median of {r['repeats']} runs "
                 "(seeds 0..n-1); warm page cache for all formats; LMDB ingest fsynced per 1024-sample batch, "
                 "file baselines not fsynced (as CarM writes them), so the ingest comparison favours the baselines.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
