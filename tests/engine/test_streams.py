"""Streams: determinism, class splits, user folders, and bad input named by task and sample."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from miro_runtime import StreamError, from_arrays, make_stream


def test_split_digits_is_seeded_and_relabelled_in_arrival_order():
    a, b = make_stream("split-digits", seed=0), make_stream("split-digits", seed=0)
    assert [t.classes for t in a.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert a.shape == (1, 8, 8) and a.train[0][0].dtype == np.uint8
    np.testing.assert_array_equal(a.train[2][0], b.train[2][0])
    c = make_stream("split-digits", seed=3)
    assert c.describe()["class_order"] != a.describe()["class_order"]
    for t in range(5):
        assert set(np.unique(a.train[t][1])) == set(a.tasks[t].classes)
    # the held-out split is fixed and disjoint from training data
    assert sum(len(y) for _, y in a.test) + sum(len(y) for _, y in a.train) == 1797
    assert sum(len(y) for _, y in a.test) == sum(len(y) for _, y in c.test)


def test_synthetic_is_deterministic_any_shape():
    s = make_stream("synthetic", tasks=4, seed=1, shape=(3, 12, 10), num_classes=8, per_class=20)
    t = make_stream("synthetic", tasks=4, seed=1, shape=(3, 12, 10), num_classes=8, per_class=20)
    assert s.shape == (3, 12, 10) and len(s.tasks) == 4 and s.num_classes == 8
    np.testing.assert_array_equal(s.train[3][0], t.train[3][0])
    assert not np.array_equal(s.train[0][0], make_stream("synthetic", tasks=4, seed=2, shape=(3, 12, 10),
                                                         num_classes=8, per_class=20).train[0][0])


def _png(path, size=(8, 8), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def test_folder_stream_both_layouts(tmp_path):
    for t, classes in enumerate([["cat", "dog"], ["fox"]]):
        for c in classes:
            for i in range(6):
                _png(tmp_path / "a" / f"t{t}" / c / f"{i}.png", value=10 * i)
    s = make_stream("folder", data_dir=str(tmp_path / "a"))
    assert [t.classes for t in s.tasks] == [[0, 1], [2]] and s.shape == (1, 8, 8)
    assert s.info["class_names"] == ["cat", "dog", "fox"]
    for c in ["x", "y", "z"]:
        for i in range(5):
            _png(tmp_path / "b" / c / f"{i}.png")
    (tmp_path / "b" / "tasks.json").write_text(json.dumps([["z"], ["x", "y"]]))
    s = make_stream("folder", data_dir=str(tmp_path / "b"))
    assert [t.classes for t in s.tasks] == [[0], [1, 2]] and s.info["class_names"] == ["z", "x", "y"]


def test_folder_image_of_another_shape_names_task_and_file(tmp_path):
    for i in range(4):
        _png(tmp_path / "t0" / "a" / f"{i}.png")
        _png(tmp_path / "t1" / "b" / f"{i}.png")
    _png(tmp_path / "t1" / "b" / "odd.png", size=(9, 8))
    with pytest.raises(StreamError, match=r"task 1, sample .*odd.png: shape \[1, 8, 9\]"):
        make_stream("folder", data_dir=str(tmp_path))


def test_missing_data_dirs_are_clear_errors(tmp_path):
    with pytest.raises(StreamError, match="--data-dir"):
        make_stream("mnist")
    with pytest.raises(StreamError, match="does not exist"):
        make_stream("cifar10", data_dir=str(tmp_path / "nope"))
    with pytest.raises(StreamError, match="MNIST not found"):
        make_stream("mnist", data_dir=str(tmp_path))
    with pytest.raises(StreamError, match="folder stream: data dir"):
        make_stream("folder", data_dir=str(tmp_path / "nope"))
    with pytest.raises(StreamError, match="unknown stream 'imagenet'"):
        make_stream("imagenet")


def _arrays(n=40, shape=(1, 4, 4), classes=4):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    return rng.integers(0, 255, (n, *shape), dtype=np.uint8), y


def test_validate_task_names_task_and_sample():
    x, y = _arrays()
    s = from_arrays("t", x, y, x, y, tasks=2)
    s.validate_task(0)
    bad = s.train[1][0].astype(np.float32) / 255
    bad[3, 0, 1, 1] = np.nan
    s.train[1] = (bad, s.train[1][1])
    with pytest.raises(StreamError, match=r"task 1 \(train\), sample 3: holds NaN"):
        s.validate_task(1)
    s = from_arrays("t", x, y, x, y, tasks=2)
    lab = s.train[1][1].copy()
    lab[5] = 0  # a class of task 0 inside task 1
    s.train[1] = (s.train[1][0], lab)
    with pytest.raises(StreamError, match=r"task 1 \(train\), sample 5: label 0 is outside"):
        s.validate_task(1)
    s.train[1] = (np.zeros((0, 1, 4, 4), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(StreamError, match="task 1 \\(train\\) of stream 't' is empty"):
        s.validate_task(1)
    s.train[1] = (np.zeros((3, 1, 5, 4), np.uint8), np.array([2, 2, 3]))
    with pytest.raises(StreamError, match=r"task 1 \(train\): images of shape \[1, 5, 4\]"):
        s.validate_task(1)


def test_real_world_folders(tmp_path):
    """The ImageFolder layout with its own test split; flat class folders split by --tasks; hidden
    entries, junk, non-image files and dangling symlinks skipped and reported; the held-out split
    fixed across run seeds; errors naming the file and the layouts."""
    for split, n in (("train", 6), ("test", 3)):
        for c in "0123":
            for i in range(n):
                _png(tmp_path / "if" / split / c / f"{i}.png", value=40 * int(c) + i)
    (tmp_path / "if" / "README.md").write_text("about this dataset")
    (tmp_path / "if" / "train" / "0" / "labels.csv").write_text("x")
    (tmp_path / "if" / "train" / "1" / ".DS_Store").write_text("x")
    os.symlink(tmp_path / "gone.png", tmp_path / "if" / "train" / "2" / "link.png")
    s = make_stream("folder", data_dir=str(tmp_path / "if"), tasks=2)
    assert s.info["layout"] == "imagefolder" and "test split" in s.info["test_split"]
    assert [len(y) for _, y in s.train] == [12, 12] and [len(y) for _, y in s.test] == [6, 6]
    assert s.info["skipped"] == {"non-image files": 2, "hidden or junk": 1, "dangling symlinks": 1}  # README too
    # class folders right under the root: split into --tasks (5 by default, at most one per class)
    for c in ["ant", "bee", "cow"]:
        for i in range(10):
            _png(tmp_path / "flat" / c / f"{i}.png", value=i)
    a = make_stream("folder", data_dir=str(tmp_path / "flat"))
    assert [t.classes for t in a.tasks] == [[0], [1], [2]] and a.info["layout"] == "class folders"
    b = make_stream("folder", data_dir=str(tmp_path / "flat"), seed=3)
    assert all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a.test, b.test))  # held-out split: fixed
    with pytest.raises(StreamError, match="--tasks 4 cannot split 3 classes"):
        make_stream("folder", data_dir=str(tmp_path / "flat"), tasks=4)
    (tmp_path / "flat" / "tasks.json").write_text('{"not": "a list"}')
    with pytest.raises(StreamError, match="tasks.json must be a non-empty list"):
        make_stream("folder", data_dir=str(tmp_path / "flat"))
    (tmp_path / "flat" / "tasks.json").write_text('[["ant"], ["bee", "cow"]]')
    with pytest.raises(StreamError, match="--tasks 3 contradicts"):
        make_stream("folder", data_dir=str(tmp_path / "flat"), tasks=3)
    (tmp_path / "flat" / "cow" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(StreamError, match="cannot read image .*bad.png"):
        make_stream("folder", data_dir=str(tmp_path / "flat"))


def test_decompression_bomb_is_a_named_error(tmp_path):
    from PIL import Image
    _png(tmp_path / "c" / "a" / "0.png")
    big = tmp_path / "c" / "a" / "bomb.png"
    Image.new("L", (12000, 12000)).save(big)  # 144 MP, small on disk: above PIL's 2x limit at 89 MP
    with pytest.raises(StreamError, match="bomb.png is too large"):
        make_stream("folder", data_dir=str(tmp_path / "c"))


def test_train_per_class_keeps_the_same_samples_whatever_the_seed():
    """``--train-per-class``: at most N per class, test sets whole, and the same images for every seed
    (which samples is fixed by the images, not by the seed that orders the classes and the arrival)."""
    from miro_runtime.config import RunConfig
    from miro_runtime.session.experiment import load_stream
    a, b = (load_stream(RunConfig(stream="split-digits", seed=s, train_per_class=7)) for s in (0, 3))
    whole = load_stream(RunConfig(stream="split-digits", seed=0))
    assert [len(y) for _, y in a.train] == [14] * 5 and a.describe()["train_per_class"] == 7
    assert [len(y) for _, y in a.test] == [len(y) for _, y in whole.test]
    for st in (a, b):
        assert all(np.bincount(y).max() == 7 for _, y in st.train)

    def images(st):  # every kept image, by its original class
        order = st.info["class_order"]
        return {(order[int(c)], img.tobytes()) for x, y in st.train for img, c in zip(x, y)}
    assert images(a) == images(b) and len(images(a)) == 70
    assert a.info["class_order"] != b.info["class_order"]  # the seeds did order the classes differently
    with pytest.raises(ValueError, match="--train-per-class: must be >= 1"):
        RunConfig(train_per_class=0).validate()
