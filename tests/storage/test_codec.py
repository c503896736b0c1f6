import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from miro_runtime.storage import CorruptRecordError, BadRecordError, decode_record, encode_record, \
    encode_blob, decode_blob

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]


@settings(max_examples=200, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from(DTYPES), shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)),
       label=st.integers(-2**31, 2**31 - 1), task=st.integers(0, 1000), sid=st.integers(0, 2**64 - 1),
       ts=st.floats(allow_nan=False, allow_infinity=False),
       aux=st.none() | hnp.arrays(np.float32, st.integers(1, 12), elements=st.floats(-1e6, 1e6, width=32)))
def test_round_trip(arr, label, task, sid, ts, aux):
    rec = decode_record(encode_record(arr, label, task, sid, ts, aux))
    assert rec.array.dtype == arr.dtype and rec.array.shape == arr.shape
    np.testing.assert_array_equal(rec.array, arr)
    assert (rec.label, rec.task, rec.sample_id, rec.timestamp) == (label, task, sid, ts)
    if aux is None:
        assert rec.aux is None
    else:
        np.testing.assert_array_equal(rec.aux, aux)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_byte_flip_is_detected(data):
    arr = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    buf = bytearray(encode_record(arr, 3, 1, 77, 1.5))
    pos = data.draw(st.integers(0, len(buf) - 1))
    bit = data.draw(st.integers(0, 7))
    buf[pos] ^= 1 << bit
    with pytest.raises(CorruptRecordError, match="77|record"):
        decode_record(bytes(buf), key="samples/77")


@given(st.binary(max_size=300))
def test_random_bytes_never_decode_silently(buf):
    try:
        rec = decode_record(buf)
    except CorruptRecordError:
        return
    # only a valid encoding decodes; re-encoding must give the same bytes
    assert encode_record(rec.array, rec.label, rec.task, rec.sample_id, rec.timestamp, rec.aux) == buf


def test_truncated_record_names_key():
    buf = encode_record(np.zeros((2, 2), np.uint8), 0, 0, 5)
    with pytest.raises(CorruptRecordError, match="samples/5"):
        decode_record(buf[:-1], key="samples/5")


def test_bad_input_is_rejected():
    with pytest.raises(BadRecordError, match="dims"):
        encode_record(np.zeros((1, 1, 1, 1, 1), np.uint8), 0, 0, 0)
    with pytest.raises(BadRecordError, match="dtype"):
        encode_record(np.zeros(2, np.complex64), 0, 0, 0)
    with pytest.raises(BadRecordError, match="label"):
        encode_record(np.zeros(2, np.uint8), 2**40, 0, 0)


@given(st.binary(max_size=2000))
def test_blob_round_trip(payload):
    assert decode_blob(encode_blob(payload)) == payload
    if payload:
        bad = bytearray(encode_blob(payload))
        bad[-1] ^= 0xFF
        with pytest.raises(CorruptRecordError):
            decode_blob(bytes(bad))


def test_any_malformed_record_raises_the_codec_error_type():
    """Hand-made headers with a valid crc (huge shapes, trailing dims, ndim 0 with dims) and random
    bytes: every one is CorruptRecordError (a StoreError), never ValueError or a numpy error."""
    import struct
    import zlib

    from hypothesis import given, settings
    from hypothesis import strategies as hs

    from miro_runtime.storage import CorruptRecordError, StoreError, decode_record
    from miro_runtime.storage.codec import _CRC_OFFSET, _HEADER, HEADER_SIZE

    def forged(code, ndim, shape, payload, n_aux):
        head = _HEADER.pack(b"MR", 1, code, ndim, 0, *shape, 1, 0, 7, 0.0, n_aux, len(payload), 0)
        body = payload + b"\0" * (4 * n_aux)
        crc = zlib.crc32(body, zlib.crc32(head[:_CRC_OFFSET]))
        return head[:_CRC_OFFSET] + struct.pack("<I", crc) + body

    @settings(max_examples=400, deadline=None)
    @given(hs.integers(0, 10), hs.integers(0, 5), hs.lists(hs.integers(0, 2**32 - 1), min_size=4, max_size=4),
           hs.binary(max_size=64), hs.integers(0, 3))
    def check(code, ndim, shape, payload, n_aux):
        try:
            decode_record(forged(code, ndim, shape, payload, n_aux), key="t")
        except CorruptRecordError:
            pass
    check()
    huge = forged(1, 4, [2**16, 2**16, 2**16, 2**16], b"\0" * 16, 0)  # 2^64 elements: wraps to 0 in int64
    with pytest.raises(StoreError):
        decode_record(huge, key="t")

    @settings(max_examples=300, deadline=None)
    @given(hs.binary(max_size=HEADER_SIZE + 40))
    def garbage(buf):
        try:
            decode_record(buf, key="g")
        except CorruptRecordError:
            pass
    garbage()
