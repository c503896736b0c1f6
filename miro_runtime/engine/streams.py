"""Task streams: a stream is a sequence of tasks, each adding classes, each delivering its samples
in batches over time (class-incremental CL). Samples travel as uint8 (N, C, H, W) arrays.

Built-in streams: ``split-digits`` (scikit-learn's bundled 8x8 digits, the embedded default),
Fashion-MNIST from its IDX files (``fashion-mnist``, ``split-fashion-mnist``; Debian's
dataset-fashion-mnist by default); torchvision ``mnist`` / ``cifar10`` / ``cifar100`` from a local directory,
``folder`` (the user's own images), ``synthetic`` (procedural, any shape/classes/tasks).
Task order and class split are seeded and recorded by ``describe()``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from miro_runtime.choices import STREAMS

from .idx import IdxError, read_idx


class StreamError(ValueError):
    """Bad stream input; the message names the task and the sample (or file)."""


@dataclass
class TaskSpec:
    index: int
    classes: list


@dataclass
class Stream:
    """Every task's train/test arrays in memory, in arrival order."""

    name: str
    shape: tuple  # (C, H, W)
    num_classes: int
    tasks: list  # [TaskSpec]
    train: list  # per task: (x uint8 (N, C, H, W), y int64 (N,))
    test: list  # per task: (x, y)
    seed: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def max_classes(self) -> int:
        """The most classes the stream can bring (a live stream caps an unknown count): all of them."""
        return self.num_classes

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "num_classes": self.num_classes,
                "seed": self.seed, "tasks": [t.classes for t in self.tasks],
                "train_sizes": [len(y) for _, y in self.train], "test_sizes": [len(y) for _, y in self.test],
                **self.info}

    def validate_task(self, t: int) -> None:
        """Check a whole task before any of it is stored: shape, dtype, labels, emptiness, NaN/inf."""
        for split, (x, y) in (("train", self.train[t]), ("test", self.test[t])):
            if len(y) == 0:
                raise StreamError(f"task {t} ({split}) of stream {self.name!r} is empty")
            if len(x) != len(y):
                raise StreamError(f"task {t} ({split}): {len(x)} samples but {len(y)} labels")
            x_checked = check_images(x, self.shape, f"task {t} ({split})")
            allowed = set(int(c) for c in self.tasks[t].classes)
            bad = [i for i, v in enumerate(np.asarray(y).tolist()) if int(v) not in allowed]
            if bad:
                i = bad[0]
                raise StreamError(f"task {t} ({split}), sample {i}: label {int(y[i])} is outside the task's "
                                  f"declared classes {sorted(allowed)}")
            pair = (x_checked, np.asarray(y, dtype=np.int64))
            if split == "train":
                self.train[t] = pair
            else:
                self.test[t] = pair

    def batches(self, t: int, batch_size: int) -> Iterator[tuple]:
        """The task's samples in arrival order: (batch_index, x, y)."""
        x, y = self.train[t]
        for b, i in enumerate(range(0, len(y), batch_size)):
            yield b, x[i:i + batch_size], y[i:i + batch_size]

    def classes_upto(self, t: int) -> list:
        return [c for task in self.tasks[: t + 1] for c in task.classes]


def check_images(x, shape, where: str) -> np.ndarray:
    """uint8 passes as is; floats must be finite and in [0, 1] and become uint8."""
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        # name the first offending sample when the batch is ragged or one image differs
        raise StreamError(f"{where}: images of shape {list(x.shape[1:]) if x.ndim == 4 else list(x.shape)} "
                          f"do not match the stream's {list(shape)}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            i = int(np.nonzero(~finite)[0][0])
            raise StreamError(f"{where}, sample {i}: holds NaN or inf")
        if x.min() < 0 or x.max() > 1:
            raise StreamError(f"{where}: float images must lie in [0, 1] (got {x.min():.3g}..{x.max():.3g})")
        return np.round(x * 255).astype(np.uint8)
    if x.dtype.kind in "iu":
        if x.min() < 0 or x.max() > 255:
            raise StreamError(f"{where}: integer images must lie in 0..255")
        return x.astype(np.uint8)
    raise StreamError(f"{where}: unsupported image dtype {x.dtype}")


def _split_classes(num_classes: int, n_tasks: int, seed: int, order=None) -> list:
    if n_tasks < 1 or n_tasks > num_classes:
        raise StreamError(f"cannot split {num_classes} classes into {n_tasks} tasks")
    order = np.random.default_rng(seed).permutation(num_classes) if order is None else np.asarray(order)
    return [TaskSpec(i, [int(c) for c in part]) for i, part in enumerate(np.array_split(order, n_tasks))]


def _holdout(y: np.ndarray, frac: float, seed: int):
    """A fixed seeded held-out split per class: (train_idx, test_idx)."""
    rng = np.random.default_rng(seed + 7919)
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        k = max(1, int(round(len(idx) * frac)))
        te.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def from_arrays(name: str, x_train, y_train, x_test, y_test, tasks: int, seed: int = 0,
                class_order=None, info: Optional[dict] = None) -> Stream:
    """Build a class-incremental stream from whole arrays (the way users hand data to the library)."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    y_train, y_test = np.asarray(y_train, dtype=np.int64), np.asarray(y_test, dtype=np.int64)
    if x_train.ndim != 4:
        raise StreamError(f"stream {name!r}: images must be (N, C, H, W), got shape {list(x_train.shape)}")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    order = _split_classes(num_classes, tasks, seed, class_order)
    # relabel in arrival order (task 0 holds 0..k-1, ...), so the growing head only ever has
    # outputs for classes it has seen; the original ids stay in info["class_order"]
    remap = np.empty(num_classes, dtype=np.int64)
    flat = [c for s in order for c in s.classes]
    remap[flat] = np.arange(num_classes)
    y_train, y_test = remap[y_train], remap[y_test]
    specs, k = [], 0
    for s in order:
        specs.append(TaskSpec(s.index, list(range(k, k + len(s.classes)))))
        k += len(s.classes)
    info = {**(info or {}), "class_order": flat}
    rng = np.random.default_rng(seed)
    train, test = [], []
    for spec in specs:
        m = np.isin(y_train, spec.classes)
        idx = np.nonzero(m)[0]
        idx = idx[rng.permutation(len(idx))]  # arrival order within a task: seeded shuffle
        train.append((x_train[idx], y_train[idx]))
        mt = np.isin(y_test, spec.classes)
        test.append((x_test[mt], y_test[mt]))
    return Stream(name, x_train.shape[1:], num_classes, specs, train, test, seed, info)


def split_digits(tasks: int = 5, seed: int = 0, **_) -> Stream:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the demo extra is a declared dependency
        raise StreamError("split-digits needs scikit-learn: pip install 'miro-runtime[demo]'") from e
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    tr, te = _holdout(y, 0.25, 0)  # the held-out split is fixed; the seed moves the class order
    return from_arrays("split-digits", x[tr], y[tr], x[te], y[te], tasks, seed,
                       class_order=np.random.default_rng(seed).permutation(10) if seed else np.arange(10),
                       info={"source": "sklearn.datasets.load_digits", "test_fraction": 0.25})


# Fashion-MNIST as IDX files: Debian's dataset-fashion-mnist puts the four, gzipped, here
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"


def _idx_path(dirs: list, base: str) -> Optional[str]:
    """The first of ``base``.gz or ``base`` in ``dirs`` and their torchvision ``FashionMNIST/raw``."""
    for d in dirs:
        for sub in (d, os.path.join(d, "FashionMNIST", "raw")):
            for name in (base + ".gz", base):
                if os.path.isfile(os.path.join(sub, name)):
                    return os.path.join(sub, name)
    return None


def fashion_mnist(data_dir: Optional[str] = None, tasks: int = 5, seed: int = 0, split: bool = False) -> Stream:
    """Fashion-MNIST from its IDX files (``data_dir``, else Debian's FASHION_DIR): the official 60,000 /
    10,000 train/test split, (N, 1, 28, 28) uint8. ``split``: the standard Split Fashion-MNIST protocol
    (5 tasks of 2 classes, class order 0..9 for seed 0, a seeded permutation otherwise, as split-digits);
    otherwise any number of tasks in a seeded class order."""
    name = "split-fashion-mnist" if split else "fashion-mnist"
    if split and tasks != 5:
        raise StreamError(f"{name} is the standard protocol of 5 tasks of 2 classes; --tasks {tasks} is not it "
                          "(use --stream fashion-mnist for another split)")
    where = data_dir or FASHION_DIR
    paths = {k: [_idx_path([where], b) for b in bases] for k, bases in FASHION_FILES.items()}
    missing = [b for k, bases in FASHION_FILES.items() for b, p in zip(bases, paths[k]) if p is None]
    if missing:
        raise StreamError(f"{name}: no IDX files {', '.join(missing)} (.gz or plain) in {where}"
                          + ("" if data_dir else f"; install Debian's dataset-fashion-mnist ({FASHION_INSTALL})")
                          + " or pass --data-dir DIR holding them")
    arrays = {}
    for k, (images, labels) in paths.items():
        try:
            x, y = read_idx(images), read_idx(labels)
        except IdxError as e:
            raise StreamError(f"{name}: {e}") from e
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise StreamError(f"{name}: {images} and {labels} are not images (N, H, W) uint8 with N labels "
                              f"(got {x.dtype} {list(x.shape)} and {y.dtype} {list(y.shape)})")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise StreamError(f"{name}: {labels} holds labels outside 0..9 ({int(y.min())}..{int(y.max())})")
        arrays[k] = (x[:, None], y.astype(np.int64))
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    order = (np.random.default_rng(seed).permutation(10) if seed else np.arange(10)) if split else None
    return from_arrays(name, xtr, ytr, xte, yte, tasks, seed, class_order=order,
                       info={"source": "IDX files (Fashion-MNIST, Zalando, MIT)",
                             "files": [p for ps in paths.values() for p in ps]})


_TV = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


def torchvision_stream(name: str, data_dir: Optional[str], tasks: int, seed: int = 0,
                       download: bool = False, **_) -> Stream:
    if not data_dir:
        raise StreamError(f"stream {name!r} reads a local copy: pass --data-dir DIR (add --download to fetch it)")
    if not os.path.isdir(data_dir) and not download:
        raise StreamError(f"data dir {data_dir!r} does not exist")
    import torchvision
    cls = getattr(torchvision.datasets, _TV[name])
    try:
        tr = cls(data_dir, train=True, download=download)
        te = cls(data_dir, train=False, download=download)
    except RuntimeError as e:
        raise StreamError(f"{_TV[name]} not found under {data_dir!r} ({e}); place the torchvision files "
                          f"there or pass --download") from e

    def arrays(ds):
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
        return np.ascontiguousarray(x, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)

    (xtr, ytr), (xte, yte) = arrays(tr), arrays(te)
    return from_arrays(name, xtr, ytr, xte, yte, tasks, seed, info={"source": f"torchvision.{_TV[name]}",
                                                                       "data_dir": os.path.abspath(data_dir)})


IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".tif", ".tiff")
JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini", "@eaDir"}  # what file managers and NAS boxes leave behind
LAYOUTS = ("DIR/<class>/*.png (classes split into --tasks tasks), DIR/train/<class>/ + DIR/test/<class>/ "
           "(ImageFolder, its own test split), DIR/<task>/<class>/*.png (one folder per task), or "
           "DIR/<class>/ + DIR/tasks.json = [[class, ...], ...]")


def _entries(path: str, skipped: dict) -> tuple:
    """(sub-directories, image files) of ``path``, sorted, symlinks followed. Hidden entries, file
    manager junk and non-image files are skipped and counted; a dangling symlink is skipped too."""
    dirs, images = [], []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith(".") or name in JUNK:
            skipped["hidden or junk"] = skipped.get("hidden or junk", 0) + 1
            continue
        if os.path.islink(full) and not os.path.exists(full):
            skipped["dangling symlinks"] = skipped.get("dangling symlinks", 0) + 1
            continue
        if os.path.isdir(full):
            dirs.append(name)
        elif name.lower().endswith(IMG_EXT):
            images.append(name)
        else:
            skipped["non-image files"] = skipped.get("non-image files", 0) + 1
    return dirs, images


def _load_image(fp: str, where: str) -> np.ndarray:
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                arr = np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "I;16", "I", "F") else im.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise StreamError(f"{where}: {fp} is too large to be a training image ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's "cannot identify image file" and friends
        raise StreamError(f"{where}: cannot read image {fp}: {e}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def _class_id(names: list) -> dict:
    return {c: i for i, c in enumerate(names)}


def folder_stream(data_dir: Optional[str], tasks: Optional[int] = None, seed: int = 0, **_) -> Stream:
    """The user's own images, in one of four layouts (``LAYOUTS``). Skipped, and reported in
    ``describe()["skipped"]``: hidden entries, file-manager junk, non-image files, dangling symlinks.
    Errors (naming the file and the layouts): an unreadable or oversized image, images of differing
    shapes, an empty class, a malformed tasks.json, a ``--tasks`` that contradicts the folders. The
    held-out test split (20% per class) is fixed across run seeds, as split-digits'; the ImageFolder
    layout uses its own test folder instead, and says so."""
    if not data_dir or not os.path.isdir(data_dir):
        raise StreamError(f"folder stream: data dir {data_dir!r} does not exist (expected {LAYOUTS})")
    skipped: dict = {}
    top_dirs, _ = _entries(data_dir, skipped)
    mapping_file = os.path.join(data_dir, "tasks.json")
    low = {d.lower(): d for d in top_dirs}
    test_dir = None
    if os.path.exists(mapping_file):
        layout = "tasks.json"
        try:
            with open(mapping_file) as fh:
                mapping = json.load(fh)
        except (OSError, ValueError) as e:
            raise StreamError(f"folder stream: {mapping_file} is not readable JSON ({e}); expected "
                              f"[[class, ...], ...]") from None
        if not isinstance(mapping, list) or not mapping or not all(
                isinstance(t, list) and t and all(isinstance(c, str) and c for c in t) for t in mapping):
            raise StreamError(f"folder stream: {mapping_file} must be a non-empty list of non-empty lists of class "
                              f"folder names, e.g. [[\"cat\", \"dog\"], [\"car\"]]")
        if tasks is not None and tasks != len(mapping):
            raise StreamError(f"folder stream: --tasks {tasks} contradicts {mapping_file}, which defines "
                              f"{len(mapping)} tasks (leave --tasks out)")
        task_classes = [[(c, os.path.join(data_dir, c)) for c in t] for t in mapping]
    elif "train" in low and ("test" in low or "val" in low):
        layout = "imagefolder"
        train_dir = os.path.join(data_dir, low["train"])
        test_dir = os.path.join(data_dir, low.get("test") or low["val"])
        classes, _ = _entries(train_dir, skipped)
        task_classes = _split_named(classes, tasks, train_dir)
    else:
        kinds = {d: _entries(os.path.join(data_dir, d), {}) for d in top_dirs}
        if not top_dirs:
            raise StreamError(f"folder stream: {data_dir} holds no folders; expected {LAYOUTS}")
        if all(sub and not imgs for sub, imgs in kinds.values()):
            layout = "task folders"
            if tasks is not None and tasks != len(top_dirs):
                raise StreamError(f"folder stream: --tasks {tasks} contradicts {data_dir}, which holds "
                                  f"{len(top_dirs)} task folders (leave --tasks out)")
            task_classes = [[(c, os.path.join(data_dir, t, c)) for c in kinds[t][0]] for t in top_dirs]
        elif all(imgs for _, imgs in kinds.values()):
            layout = "class folders"
            task_classes = _split_named(top_dirs, tasks, data_dir)
        else:
            mixed = [d for d, (sub, imgs) in kinds.items() if not imgs and not sub]
            raise StreamError(f"folder stream: {data_dir} mixes layouts"
                              + (f" ({', '.join(mixed[:3])} hold no images)" if mixed else "")
                              + f"; expected {LAYOUTS}")
    names = [c for td in task_classes for c, _ in td]
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise StreamError(f"folder stream {data_dir}: class {dup[0]!r} appears in more than one task")
    class_ids = _class_id(names)
    shape, specs, train, test = None, [], [], []
    first_file = {}

    def load_class(path, c, t, xs, ys):
        nonlocal shape
        if not os.path.isdir(path):
            raise StreamError(f"folder stream, task {t}: class folder {path} is missing (layout: {layout})")
        _, files = _entries(path, skipped)
        if not files:
            raise StreamError(f"folder stream, task {t}: class folder {path} holds no images "
                              f"({', '.join(IMG_EXT)})")
        for fn in files:
            fp = os.path.join(path, fn)
            arr = _load_image(fp, f"folder stream, task {t}")
            if shape is None:
                shape, first_file['path'] = arr.shape, fp
            if arr.shape != shape:
                raise StreamError(f"folder stream, task {t}, sample {fp}: shape {list(arr.shape)} differs from the "
                                  f"stream's {list(shape)} (set by the first image, {first_file['path']}): resize "
                                  f"the images to one size")
            xs.append(arr)
            ys.append(class_ids[c])

    for t, td in enumerate(task_classes):
        xs, ys = [], []
        for c, path in td:
            load_class(path, c, t, xs, ys)
        x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
        if test_dir is not None:
            xt, yt = [], []
            for c, _ in td:
                if os.path.isdir(os.path.join(test_dir, c)):
                    load_class(os.path.join(test_dir, c), c, t, xt, yt)
            if not yt:
                raise StreamError(f"folder stream: {test_dir} holds none of task {t}'s classes {[c for c, _ in td]}")
            x_te, y_te = np.stack(xt), np.asarray(yt, dtype=np.int64)
            perm = np.random.default_rng(seed + t).permutation(len(y))
            train.append((x[perm], y[perm]))
            test.append((x_te, y_te))
        else:
            tr, te = _holdout(y, 0.2, 0)  # fixed across run seeds: the seed moves the arrival order only
            perm = np.random.default_rng(seed + t).permutation(len(tr))
            train.append((x[tr][perm], y[tr][perm]))
            test.append((x[te], y[te]))
        specs.append(TaskSpec(t, [class_ids[c] for c, _ in td]))
    info = {"source": os.path.abspath(data_dir), "class_names": names, "layout": layout, "skipped": skipped,
            "test_split": os.path.abspath(test_dir) + " (the folder's own test split)" if test_dir else
            "20% of each class held out, fixed across run seeds"}
    if test_dir is not None:
        logging.getLogger("miro.streams").warning("folder stream %s: ImageFolder layout, using %s as the test split",
                                                  data_dir, test_dir)
    return Stream("folder", shape, len(names), specs, train, test, seed, info)


def _split_named(classes: list, tasks: Optional[int], where: str) -> list:
    if not classes:
        raise StreamError(f"folder stream: {where} holds no class folders; expected {LAYOUTS}")
    n = tasks if tasks is not None else min(5, len(classes))
    if not 1 <= n <= len(classes):
        raise StreamError(f"folder stream: --tasks {n} cannot split {len(classes)} classes of {where}")
    parts = np.array_split(np.asarray(classes, dtype=object), n)
    return [[(c, os.path.join(where, c)) for c in part] for part in parts]


def synthetic(tasks: int = 5, seed: int = 0, num_classes: int = 10, shape: Sequence[int] = (1, 16, 16),
              per_class: int = 200, test_per_class: int = 50, noise: float = 0.35, **_) -> Stream:
    """Class-conditional procedural images: each class is a fixed random low-frequency pattern
    (drawn from the seed), each sample that pattern shifted by up to 2 pixels, plus pixel noise and a
    random contrast. Hard enough that forgetting shows; deterministic per seed."""
    import torch
    import torch.nn.functional as F
    c, h, w = (int(s) for s in shape)
    g = torch.Generator().manual_seed(10007 + seed)
    coarse = torch.rand((num_classes, c, max(2, h // 4), max(2, w // 4)), generator=g)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # (K, C, H, W)

    def make(n_per, gen):
        y = torch.arange(num_classes).repeat_interleave(n_per)
        x = protos[y]
        shifts = torch.randint(-2, 3, (len(y), 2), generator=gen)
        x = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, (a, b) in zip(x, shifts)])
        contrast = 0.6 + 0.8 * torch.rand((len(y), 1, 1, 1), generator=gen)
        x = (x - 0.5) * contrast + 0.5 + noise * torch.randn(x.shape, generator=gen)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), y.numpy()

    xtr, ytr = make(per_class, torch.Generator().manual_seed(20011 + seed))
    xte, yte = make(test_per_class, torch.Generator().manual_seed(30011 + seed))
    return from_arrays("synthetic", xtr, ytr, xte, yte, tasks, seed,
                       info={"generator": "prototype+shift+contrast+noise", "noise": noise,
                             "per_class": per_class})


def make_stream(name: str, tasks: Optional[int] = None, seed: int = 0, data_dir: Optional[str] = None,
                download: bool = False, **kw) -> Stream:
    if name == "split-digits":
        return split_digits(tasks or 5, seed)
    if name == "split-fashion-mnist":
        return fashion_mnist(data_dir, tasks or 5, seed, split=True)
    if name == "fashion-mnist" and not download:  # --download: torchvision fetches into --data-dir, as before
        return fashion_mnist(data_dir, tasks or 5, seed)
    if name in _TV:
        return torchvision_stream(name, data_dir, tasks or (10 if name == "cifar100" else 5), seed, download)
    if name == "folder":
        return folder_stream(data_dir, tasks, seed)
    if name == "synthetic":
        return synthetic(tasks or 5, seed, **kw)
    raise StreamError(f"unknown stream {name!r}; choose one of {', '.join(STREAMS)}")


def limit_per_class(stream: Stream, n: int, test: Optional[int] = None) -> Stream:
    """Keep at most ``n`` training samples per class (and ``test`` test samples, when given; test sets stay
    whole otherwise). Which ones is fixed by the images themselves (the lowest CRC-32s of each class's
    pixels), never by the run's seed, so runs that differ only in seed use the same subset; arrival order
    within a task is kept."""
    if n < 1 or (test is not None and test < 1):
        raise StreamError(f"--train-per-class must be >= 1, got {n if n < 1 else test}")

    def cut(x, y, k):
        key = np.fromiter((zlib.crc32(img.tobytes()) for img in x), dtype=np.int64, count=len(y))
        keep = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            idx = np.nonzero(y == c)[0]
            keep[idx[np.argsort(key[idx], kind="stable")[:k]]] = True
        return x[keep], y[keep]
    info = {**stream.info, "train_per_class": n, **({"test_per_class": test} if test else {})}
    return dataclasses.replace(stream, train=[cut(x, y, n) for x, y in stream.train], info=info,
                               test=[cut(x, y, test) for x, y in stream.test] if test else stream.test)


def select_classes(stream: Stream, classes: list, tasks: Optional[int] = None) -> Stream:
    """Keep only ``classes`` (the dataset's own class ids; names' ids for folder streams, in the
    order of ``info["class_order"]``) and split them, in the order given, into ``tasks`` tasks.
    How ``miro rep pretrain`` takes base classes and a prompt run the others."""
    flat = list(stream.info.get("class_order") or range(stream.num_classes))
    names = {str(c): i for i, c in enumerate(flat)}
    missing = [c for c in classes if str(c) not in names]
    if missing:
        raise StreamError(f"--classes: stream {stream.name!r} has no class {', '.join(str(c) for c in missing)} "
                          f"(its classes: "
                          f"{', '.join(str(c) for c in sorted(flat, key=str))})")
    xs_tr, ys_tr = zip(*stream.train)
    xs_te, ys_te = zip(*stream.test)
    x_tr, y_tr = np.concatenate(xs_tr), np.concatenate(ys_tr)
    x_te, y_te = np.concatenate(xs_te), np.concatenate(ys_te)
    keep = [names[str(c)] for c in classes]  # stream-internal labels, in the order asked
    remap = np.full(stream.num_classes, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    mtr, mte = remap[y_tr] >= 0, remap[y_te] >= 0
    info = {k: v for k, v in stream.info.items() if k != "class_order"}
    info["classes_selected"] = [flat[i] for i in keep]
    out = from_arrays(stream.name, x_tr[mtr], remap[y_tr[mtr]], x_te[mte], remap[y_te[mte]],
                      tasks or min(len(keep), len(stream.tasks)), stream.seed, class_order=np.arange(len(keep)),
                      info=info)
    out.info["class_order"] = [flat[i] for i in keep]
    return out
