"""The byte-lookup-table scan of multi-bit binary codes against the codec's numpy reference (unpacked signs times
the query) and against brute force on the tables themselves."""

from __future__ import annotations

import numpy as np
import pytest

from rankstack.errors import BadInput
from rankstack.kernels import binary_scan
from rankstack.index.binary import ResidualBinaryCodec

pytestmark = pytest.mark.skipif(not binary_scan.available(), reason="needs numba: pip install 'rankstack[fastscan]'")


def test_tables_sum_the_set_bits():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 24)).astype(np.float32)
    luts = binary_scan.byte_luts(v)
    assert luts.shape == (3, 3, 256)
    for byte in (0, 1, 128, 0b10100101, 255):
        bits = np.unpackbits(np.array([byte], np.uint8))  # most significant bit = first dimension, as packbits
        for j in range(3):
            assert luts[1, j, byte] == pytest.approx(float(v[1, 8 * j:8 * j + 8] @ bits), abs=1e-6)


def full_scores(scores, positions, n):
    out = np.full((scores.shape[0], n), np.nan, np.float32)
    np.put_along_axis(out, positions, scores, axis=1)
    return out


@pytest.mark.parametrize("scan", ["lut", "gemm"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_scores_equal_the_numpy_reference(bits, scan):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((2503, 64)).astype(np.float32)  # not a whole number of tiles, nor of 4 documents
    q = rng.standard_normal((5, 64)).astype(np.float32)  # not a whole number of 4-query blocks
    codec = ResidualBinaryCodec(64, bits).fit(x)
    planes, scales = codec.encode(x)
    args = q[:, None], np.ones((5, 1)), q @ codec.mean, planes, scales, 2503
    got = full_scores(*binary_scan.topk(*args, scan=scan), 2503)  # k = n: every score, each position once
    np.testing.assert_allclose(got, codec.asymmetric_scores(q, planes, scales), rtol=1e-5, atol=1e-4)
    # on the calling thread (small scans), and in 1, 2 or 7 document ranges merged afterwards, the same scores
    assert 5 * 2503 < binary_scan.SERIAL_BELOW
    for parts in (1, 2, 7):
        np.testing.assert_array_equal(full_scores(*binary_scan.topk(*args, scan=scan, parts=parts), 2503), got)
    big = np.tile(planes, (8, 1, 1)), np.tile(scales, (8, 1))
    assert 5 * 2503 * 8 >= binary_scan.SERIAL_BELOW
    got_big = full_scores(*binary_scan.topk(q[:, None], np.ones((5, 1)), q @ codec.mean, *big, 8 * 2503, scan=scan),
                          8 * 2503)
    np.testing.assert_allclose(got_big, np.tile(got, (1, 8)), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("scan", ["lut", "gemm"])
@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("k", [1, 37, 3000])
def test_topk_equals_the_reference_across_ranges(mode, k, scan):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2503, 128)).astype(np.float32)
    q = rng.standard_normal((30, 128)).astype(np.float32)  # more than GEMM_FROM: the heaps merge in parallel
    codec = ResidualBinaryCodec(128, 2).fit(x)
    planes, scales = codec.encode(x)
    ref_s, ref_p = codec.topk(q, planes, scales, k, mode, scan="numpy")
    got_s, got_p = codec.topk(q, planes, scales, k, mode, scan=scan)
    assert got_p.shape == (30, min(k, 2503))
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-4)
    # same documents (float32 summation order may swap two near-equal neighbours, never change the set)
    assert all(set(a) == set(b) for a, b in zip(got_p, ref_p))
    assert (np.diff(got_s, axis=1) <= 0).all()
    # ranges scanned into their own heaps and merged keep what one range keeps; so does one query at a time
    if mode == "asymmetric":
        vecs, qw, base = q[:, None], np.ones((30, 1)), q @ codec.mean
        one = binary_scan.topk(vecs, qw, base, planes, scales, k, scan=scan, parts=1)
        many = binary_scan.topk(vecs, qw, base, planes, scales, k, scan=scan, parts=5)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
        single = binary_scan.topk(vecs[3:4], qw[3:4], base[3:4], planes, scales, k, scan=scan)
        np.testing.assert_allclose(single[0][0], one[0][3], rtol=1e-5, atol=1e-4)
        assert set(single[1][0]) == set(one[1][3])


@pytest.mark.parametrize("scan", ["lut", "gemm"])
def test_equal_scores_keep_the_earliest_positions_across_blocks(scan):
    """The heaps evict, of equal scores, the later position, within a range and across merged ranges."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    codec = ResidualBinaryCodec(64, 3).fit(x)
    planes, scales = codec.encode(x)
    # 5 distinct documents, each stored 9 times (positions d, d+5, d+10, ...): every score is a 9-way tie
    planes, scales = np.tile(planes, (9, 1, 1)), np.tile(scales, (9, 1))
    q = rng.standard_normal((2, 64)).astype(np.float32)
    for parts in (1, 2, 3):
        s, p = binary_scan.topk(q[:, None], np.ones((2, 1)), q @ codec.mean, planes, scales, 12, scan=scan, parts=parts)
        for qi in range(2):
            best = np.argsort(-codec.asymmetric_scores(q[qi:qi + 1], planes[:5], scales[:5])[0], kind="stable")
            # the best document's 9 copies in position order, then the second best's first 3 copies
            expected = [best[0] + 5 * c for c in range(9)] + [best[1] + 5 * c for c in range(3)]
            assert p[qi].tolist() == expected, (parts, qi)  # every copy is summed in the same order: exact ties
            assert s[qi, 0] == s[qi, 8] > s[qi, 9] == s[qi, 11]


@pytest.mark.parametrize("scan", ["lut", "gemm"])
def test_fewer_documents_than_k_and_than_the_unrolled_four(scan):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    q = rng.standard_normal((2, 16)).astype(np.float32)
    codec = ResidualBinaryCodec(16, 2).fit(x)
    planes, scales = codec.encode(x)
    s, p = codec.topk(q, planes, scales, 10, scan=scan)
    ref = codec.asymmetric_scores(q, planes, scales)
    assert p.shape == (2, 3)
    np.testing.assert_allclose(s, -np.sort(-ref, axis=1), rtol=1e-5, atol=1e-5)
    assert all(sorted(r) == [0, 1, 2] for r in p.tolist())
    s0, p0 = codec.topk(q[:0], planes, scales, 10, scan=scan)
    assert s0.shape == p0.shape == (0, 3)


def test_auto_decodes_and_multiplies_from_gemm_from_queries():
    """``auto`` is the table scan below GEMM_FROM queries and decode + dot products from there: the two sum in
    different orders, so their float32 scores tell them apart."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 128)).astype(np.float32)
    codec = ResidualBinaryCodec(128, 4).fit(x)
    planes, scales = codec.encode(x)
    for nq, path in ((binary_scan.GEMM_FROM - 1, "lut"), (binary_scan.GEMM_FROM, "gemm")):
        q = rng.standard_normal((nq, 128)).astype(np.float32)
        auto = codec.topk(q, planes, scales, 50)
        other = "gemm" if path == "lut" else "lut"
        np.testing.assert_array_equal(auto[0], codec.topk(q, planes, scales, 50, scan=path)[0])
        assert not np.array_equal(auto[0], codec.topk(q, planes, scales, 50, scan=other)[0])


def test_unknown_scan():
    codec = ResidualBinaryCodec(8, 2)
    with pytest.raises(BadInput, match="unknown binary scan"):
        codec.topk(np.zeros((1, 8)), np.zeros((1, 2, 1), np.uint8), np.ones((1, 2), np.float16), 1, scan="simd")
    with pytest.raises(BadInput, match="unknown binary scan"):
        binary_scan.topk(np.zeros((1, 1, 8)), np.ones((1, 1)), np.zeros(1), np.zeros((1, 2, 1), np.uint8),
                      np.ones((1, 2)), 1, scan="numpy")
