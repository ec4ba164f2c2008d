"""The byte-lookup-table scan of multi-bit binary codes against the codec's numpy reference (unpacked signs times
the query) and against brute force on the tables themselves."""

from __future__ import annotations

import numpy as np
import pytest

from rankstack.errors import BadInput
from rankstack.index import lut_scan
from rankstack.index.binary import ResidualBinaryCodec

pytestmark = pytest.mark.skipif(not lut_scan.available(), reason="needs numba: pip install 'rankstack[fastscan]'")


def test_tables_sum_the_set_bits():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 24)).astype(np.float32)
    luts = lut_scan.byte_luts(v)
    assert luts.shape == (3, 3, 256)
    for byte in (0, 1, 128, 0b10100101, 255):
        bits = np.unpackbits(np.array([byte], np.uint8))  # most significant bit = first dimension, as packbits
        for j in range(3):
            assert luts[1, j, byte] == pytest.approx(float(v[1, 8 * j:8 * j + 8] @ bits), abs=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_scores_equal_the_numpy_reference(bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((2503, 64)).astype(np.float32)  # not a whole number of 256-document blocks
    q = rng.standard_normal((5, 64)).astype(np.float32)
    codec = ResidualBinaryCodec(64, bits).fit(x)
    planes, scales = codec.encode(x)
    got = lut_scan.scan_scores(lut_scan.byte_luts(q)[:, None], np.ones((5, 1)), q.sum(1, keepdims=True),
                               q @ codec.mean, planes, scales)
    np.testing.assert_allclose(got, codec.asymmetric_scores(q, planes, scales), rtol=1e-5, atol=1e-4)
    # the serial kernel (small scans) computes what the parallel one does
    assert 5 * 2503 < lut_scan.SERIAL_BELOW <= 5 * 2503 * 8
    big = np.tile(planes, (8, 1, 1)), np.tile(scales, (8, 1))
    got_big = lut_scan.scan_scores(lut_scan.byte_luts(q)[:, None], np.ones((5, 1)), q.sum(1, keepdims=True),
                                   q @ codec.mean, *big)
    np.testing.assert_allclose(got_big, np.tile(got, (1, 8)), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("k", [1, 37, 3000])
def test_topk_equals_the_reference_across_chunks(mode, k):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2503, 128)).astype(np.float32)
    q = rng.standard_normal((4, 128)).astype(np.float32)
    codec = ResidualBinaryCodec(128, 2).fit(x)
    planes, scales = codec.encode(x)
    ref_s, ref_p = codec.topk(q, planes, scales, k, mode, scan="numpy")
    got_s, got_p = codec.topk(q, planes, scales, k, mode, scan="lut")
    assert got_p.shape == (4, min(k, 2503))
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-4)
    # same documents (float32 summation order may swap two near-equal neighbours, never change the set)
    assert all(set(a) == set(b) for a, b in zip(got_p, ref_p))
    assert (np.diff(got_s, axis=1) <= 0).all()
    # chunking: a scan in chunks of 500 keeps what one pass keeps
    from rankstack.index.lut_scan import scan_topk

    luts = lut_scan.byte_luts(q)[:, None] if mode == "asymmetric" else None
    if luts is not None:
        one = scan_topk(luts, np.ones((4, 1)), q.sum(1, keepdims=True), q @ codec.mean, planes, scales, k,
                        chunk=1 << 20)
        many = scan_topk(luts, np.ones((4, 1)), q.sum(1, keepdims=True), q @ codec.mean, planes, scales, k, chunk=500)
        np.testing.assert_array_equal(one[1], many[1])
        np.testing.assert_array_equal(one[0], many[0])


def test_unknown_scan():
    codec = ResidualBinaryCodec(8, 2)
    with pytest.raises(BadInput, match="unknown binary scan"):
        codec.topk(np.zeros((1, 8)), np.zeros((1, 2, 1), np.uint8), np.ones((1, 2), np.float16), 1, scan="simd")
