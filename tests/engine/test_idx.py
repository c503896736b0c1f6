"""The IDX reader (engine/idx.py): round trips of real files, plain and gzipped, and every way a file can
be wrong refused by name -- never read as fewer or more samples."""
import gzip
import os
import shutil

import numpy as np
import pytest

from miro_runtime.engine.idx import IdxError, parse_idx, read_idx, write_idx
from miro_runtime.engine.streams import StreamError


@pytest.mark.parametrize("compress", [False, True])
def test_a_file_reads_back_as_written(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 2, 5), dtype=np.uint8)  # not square: a transposed read shows
    floats = rng.standard_normal((4, 7)).astype(np.float32)
    shorts = rng.integers(-30000, 30000, size=(6,), dtype=np.int16)
    for name, arr in (("u8", images), ("f32", floats), ("i16", shorts)):
        p = str(tmp_path / f"{name}.idx")
        write_idx(p, arr, compress=compress)
        with open(p, "rb") as fh:
            assert (fh.read(2) == b"\x1f\x8b") == compress  # told by its magic bytes, not by its name
        got = read_idx(p)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.flags.writeable


def test_the_header_is_big_endian_as_the_format_says():
    raw = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(raw), np.arange(6, dtype=np.uint8).reshape(2, 3))
    raw = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(2, "big") + (1).to_bytes(2, "big")
    np.testing.assert_array_equal(parse_idx(raw), np.array([258, 1], dtype=np.int16))


def good(n=4):
    return bytes([0, 0, 0x08, 2]) + (n).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3 * n)


@pytest.mark.parametrize("raw, says", [
    (b"\x00", "too short"),
    (b"PK\x03\x04" + good()[4:], "not an IDX file"),
    (bytes([0, 0, 0x07, 2]) + good()[4:], "unknown IDX type byte 0x07"),
    (bytes([0, 0, 0x08, 0]), "no dimensions"),
    (good()[:9], "inside its header"),
    (good()[:-1], "cut short: dims (4, 3)"),
    (good() + b"\x00\x00", "2 bytes after the payload"),
])
def test_a_wrong_file_is_refused_naming_it_and_what_is_wrong(tmp_path, raw, says):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(raw)
    with pytest.raises(IdxError) as e:
        read_idx(str(p))
    assert str(p) in str(e.value) and says in str(e.value)


def test_a_broken_gzip_and_a_missing_file_are_refused(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(good())[:-6])  # the gzip trailer cut off
    with pytest.raises(IdxError, match="does not decompress"):
        read_idx(str(p))
    with pytest.raises(IdxError, match="cannot read it"):
        read_idx(str(tmp_path / "absent"))


def test_writing_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(IdxError, match="holds no uint16"):
        write_idx(str(tmp_path / "x"), np.zeros(3, dtype=np.uint16))
    with pytest.raises(IdxError, match="1 to 255 dimensions"):
        write_idx(str(tmp_path / "x"), np.array(5, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- the streams
from miro_runtime.engine import streams  # noqa: E402
from miro_runtime.engine.streams import FASHION_DIR, fashion_mnist, make_stream  # noqa: E402


def fixture_dir(root, per_class=(6, 2), raw=False, compress=True):
    """Fashion-MNIST's four IDX files, small (4x3 images), each image stamped with its class: a real
    directory of real files, as Debian or torchvision lays them out."""
    d = root / ("FashionMNIST/raw" if raw else "fm")
    d.mkdir(parents=True)
    for (images, labels), n in zip(streams.FASHION_FILES.values(), per_class):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        x = np.repeat(y[:, None, None], 4, axis=1).repeat(3, axis=2) * 20
        ext = ".gz" if compress else ""
        write_idx(str(d / (images + ext)), x, compress=compress)
        write_idx(str(d / (labels + ext)), y, compress=compress)
    return root if raw else d


def test_split_fashion_mnist_is_the_standard_protocol_on_the_official_split(tmp_path):
    st = make_stream("split-fashion-mnist", data_dir=str(fixture_dir(tmp_path)))
    assert st.name == "split-fashion-mnist" and len(st.tasks) == 5 and tuple(st.shape) == (1, 4, 3)
    assert st.info["class_order"] == list(range(10))  # seed 0: classes 0..9 in order, two a task
    assert [len(y) for _, y in st.train] == [12] * 5 and [len(y) for _, y in st.test] == [4] * 5  # 60k / 10k
    for (x, y), spec in zip(st.train, st.tasks):  # each image still carries its own class's stamp
        assert sorted(set(y.tolist())) == spec.classes
        assert (x[:, 0, 0, 0] == 20 * np.asarray(st.info["class_order"])[y]).all()
    seeded = fashion_mnist(str(fixture_dir(tmp_path / "b")), 5, seed=3, split=True)
    assert seeded.info["class_order"] == np.random.default_rng(3).permutation(10).tolist()  # as split-digits
    with pytest.raises(StreamError, match="standard protocol of 5 tasks.*--tasks 4"):
        make_stream("split-fashion-mnist", tasks=4, data_dir=str(fixture_dir(tmp_path / "c")))
    assert len(make_stream("fashion-mnist", tasks=10, data_dir=str(fixture_dir(tmp_path / "d"))).tasks) == 10


def test_torchvisions_raw_layout_and_plain_files_read_too(tmp_path):
    st = make_stream("fashion-mnist", data_dir=str(fixture_dir(tmp_path, raw=True, compress=False)))
    assert sum(len(y) for _, y in st.train) == 60 and all(f.endswith("ubyte") for f in st.info["files"])


def test_missing_or_wrong_files_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "FASHION_DIR", str(tmp_path / "none"))
    with pytest.raises(StreamError, match=r"no IDX files train-images-idx3-ubyte.*apt-get install "
                                          r"dataset-fashion-mnist.*--data-dir"):
        make_stream("split-fashion-mnist")
    d = fixture_dir(tmp_path)
    write_idx(str(d / "t10k-labels-idx1-ubyte.gz"), np.full(20, 12, dtype=np.uint8), compress=True)
    with pytest.raises(StreamError, match=r"t10k-labels-idx1-ubyte.gz holds labels outside 0..9 \(12..12\)"):
        make_stream("fashion-mnist", data_dir=str(d))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (20).to_bytes(4, "big")))
    with pytest.raises(StreamError, match=r"fashion-mnist: .*t10k-labels-idx1-ubyte.gz: cut short"):
        make_stream("fashion-mnist", data_dir=str(d))  # the reader's refusal, as the stream's own error
    write_idx(str(d / "t10k-labels-idx1-ubyte.gz"), np.zeros(19, dtype=np.uint8), compress=True)
    with pytest.raises(StreamError, match=r"not images \(N, H, W\) uint8 with N labels"):
        make_stream("fashion-mnist", data_dir=str(d))


def test_debians_dataset_reads_as_fashion_mnist():
    """The real files, where the install step (.ci/run: apt-get install dataset-fashion-mnist) put them:
    a CI without them fails here rather than skip past a missing install step."""
    if not os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        if os.environ.get("CI") and shutil.which("apt-get"):
            pytest.fail(f"no Fashion-MNIST in {FASHION_DIR}: .ci/run's apt-get install dataset-fashion-mnist")
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed here ({FASHION_DIR})")
    st = make_stream("split-fashion-mnist")
    assert tuple(st.shape) == (1, 28, 28)
    assert [len(y) for _, y in st.train] == [12000] * 5 and [len(y) for _, y in st.test] == [2000] * 5
    x, _ = st.train[0]
    assert x.dtype == np.uint8 and 0 < x.mean() < 255
