"""The IDX reader (engine/idx.py): round trips of real files, plain and gzipped, and every way a file can
be wrong refused by name -- never read as fewer or more samples."""
import gzip

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
    assert isinstance(e.value, StreamError)  # the stream layer's own error: the CLI reports it as such


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
