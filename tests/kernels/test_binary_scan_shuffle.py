"""The shuffle scan (4-bit tables in SIMD registers, bounded, rescored exactly) against brute force on its own tables,
against the codec's numpy reference, and against the byte-table scan it must agree with."""

from __future__ import annotations

import numpy as np
import pytest

from rankstack.errors import BadInput
from rankstack.kernels import binary_scan
from rankstack.kernels.binary_scan import shuffle
from rankstack.index.base import IndexSpec
from rankstack.index.binary import ResidualBinaryCodec
from rankstack.index.compressed import CompressedIndex

pytestmark = pytest.mark.skipif(not shuffle.available(),
                                reason="needs numba (pip install 'rankstack[fastscan]') and an x86-64 CPU with AVX2")


def test_the_shuffle_loop_sums_its_table_entries():
    rng = np.random.default_rng(0)
    fs = rng.integers(0, 256, (7, 13, 32), dtype=np.uint8)  # 7 blocks, 13 byte columns (odd)
    hi, lo = rng.integers(0, 256, (2, 13, 16), dtype=np.uint8)
    got = shuffle.scan_blocks(fs, np.concatenate([hi, hi, lo, lo], axis=1)).reshape(7, 32)
    j = np.arange(13)[None, :, None]
    want = hi[j, fs >> 4].astype(np.int64).sum(axis=1) + lo[j, fs & 15].astype(np.int64).sum(axis=1)
    np.testing.assert_array_equal(got, want)
    # documents 16-31 (the upper 128-bit lane) read the tables' second copies: other copies, other sums
    other = shuffle.scan_blocks(fs, rng.integers(0, 256, (13, 64), dtype=np.uint8)).reshape(7, 32)
    assert (other[:, 16:] != want[:, 16:]).any()
    # the loops for 2 and 4 queries read each column once for all of them: the same sums as one query at a time
    many = rng.integers(0, 256, (4, 13, 64), dtype=np.uint8)
    for g in (2, 4):
        np.testing.assert_array_equal(shuffle.scan_blocks(fs, many[:g]),
                                      np.stack([shuffle.scan_blocks(fs, many[i]) for i in range(g)]))



def test_the_loop_sums_the_largest_tables_without_overflow():
    """1024 dimensions: 256 tables of 255 each sum to 65,280, just under 2^16. The 16-bit accumulators wrap on the way
    (even + 256 * odd bytes overflow many times) and must still come back to each document's exact sum."""
    nj = shuffle.MAX_TABLES // 2
    rng = np.random.default_rng(7)
    fs = rng.integers(0, 256, (3, nj, 32), dtype=np.uint8)
    full = np.full((nj, 64), 255, np.uint8)
    np.testing.assert_array_equal(shuffle.scan_blocks(fs, full), np.full(3 * 32, 255 * 2 * nj))
    tabs = rng.integers(200, 256, (nj, 64), dtype=np.uint8)
    tabs[:, 16:32], tabs[:, 48:] = tabs[:, :16], tabs[:, 32:48]
    j = np.arange(nj)[None, :, None]
    want = (tabs[j, fs >> 4].astype(np.int64).sum(axis=1) + tabs[j, 32 + (fs & 15)].astype(np.int64).sum(axis=1))
    np.testing.assert_array_equal(shuffle.scan_blocks(fs, tabs).reshape(3, 32), want)

def test_quantized_tables_are_off_by_at_most_half_a_step():
    rng = np.random.default_rng(1)
    qe = rng.standard_normal((3, 64)).astype(np.float32)
    tables, scale, offset = shuffle.quantized_tables(qe)
    codes = rng.integers(0, 256, (500, 8), dtype=np.uint8)
    bits = np.unpackbits(codes, axis=1).astype(np.float32)
    for q in range(3):
        exact = bits @ qe[q]
        j = np.arange(8)[None, :]
        approx = offset[q] + scale[q] * (tables[q, :, :16][j, codes >> 4].astype(np.int64).sum(axis=1)
                                         + tables[q, :, 32:48][j, codes & 15].astype(np.int64).sum(axis=1))
        assert np.abs(approx - exact).max() <= 16 * scale[q] / 2 + 1e-5  # 16 tables of 4 dimensions
        assert np.abs(approx - exact).max() > 0  # it is an estimate, not the exact sum


def _codes(n, dim, bits, seed, clustered=True):
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((20, dim)).astype(np.float32)
        x = centres[rng.integers(0, 20, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    q = x[rng.integers(0, n, 6)] + 0.3 * rng.standard_normal((6, dim)).astype(np.float32)
    codec = ResidualBinaryCodec(dim, bits).fit(x)
    return codec, q, *codec.encode(x)


@pytest.mark.parametrize("bits,dim,n", [(1, 64, 2503), (2, 136, 3001), (3, 128, 4096), (4, 384, 2049)])
@pytest.mark.parametrize("k", [1, 37, 1000])
def test_topk_is_the_exact_top_k(bits, dim, n, k):
    codec, q, planes, scales = _codes(n, dim, bits, seed=bits)
    ref_s, ref_p = codec.topk(q, planes, scales, k, scan="numpy")
    lut_s, lut_p = codec.topk(q, planes, scales, k, scan="lut")
    lay = shuffle.layout(planes, scales)
    stats = {}
    got_s, got_p = shuffle.topk(q, q @ codec.mean, lay, k, stats=stats)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-4)
    assert all(set(a) == set(b) for a, b in zip(got_p, ref_p))
    # both are exact; they add a document's table entries in different orders (lut one chain, shuffle four), so
    # scores agree to float32 summation error, as with the reference
    np.testing.assert_allclose(got_s, lut_s, rtol=1e-5, atol=1e-4)
    assert all(set(a) == set(b) for a, b in zip(got_p, lut_p))
    assert (np.diff(got_s, axis=1) <= 0).all()
    # the bound rules documents out rather than scoring all of them exactly (clustered vectors, k well below n)
    if k <= 37:
        assert (stats["exact"] < n / 2).all(), stats["exact"]
    # the same through the codec and through the dispatcher, with and without the layout, in 1-5 ranges
    one_by_one = [shuffle.topk(q[i:i + 1], q[i:i + 1] @ codec.mean, lay, k) for i in range(6)]
    np.testing.assert_array_equal(np.concatenate([p for _, p in one_by_one]), got_p)  # groups of 4 + 2 queries
    seven = shuffle.topk(np.concatenate([q, q[:1]]), np.concatenate([q, q[:1]]) @ codec.mean, lay, k)
    np.testing.assert_array_equal(seven[1], np.concatenate([got_p, got_p[:1]]))  # 4 + 2 + 1
    for parts in (1, 2, 5):
        s, p = codec.topk(q, planes, scales, k, scan="shuffle", layout=lay)
        s2, p2 = binary_scan.topk(q[:, None], np.ones((6, 1)), q @ codec.mean, planes, scales, k, scan="shuffle",
                               parts=parts)
        np.testing.assert_array_equal(s2, got_s)
        np.testing.assert_array_equal(p2, got_p)
        np.testing.assert_array_equal(s, got_s)



@pytest.mark.parametrize("window", [1, 32])  # tiles per selection window: many windows, or the whole range in one
def test_windows_and_ranges_of_tiles_give_the_exact_top_k(monkeypatch, window):
    codec, q, planes, scales = _codes(9000, 64, 2, seed=9)  # 5 tiles of 2048 documents, the last partial
    monkeypatch.setattr(shuffle, "_WINDOW_FLOATS", window * 2048 * len(q))
    lay = shuffle.layout(planes, scales)
    for k in (1, 50, 3000):
        ref_s, ref_p = codec.topk(q, planes, scales, k, scan="numpy")
        for parts in (1, 3):
            got_s, got_p = shuffle.topk(q, q @ codec.mean, lay, k, parts=parts)
            np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-4)
            assert all(set(a) == set(b) for a, b in zip(got_p, ref_p))


def test_the_best_bounds_are_scored_first_so_few_documents_are_scored():
    """Scored best bound first, the k-th best exact score settles at once and rules out nearly everything else: on
    20k clustered documents, about k + a few more. (Scored in document order, until the k-th best settled, it took
    5-9x as many.)"""
    codec, q, planes, scales = _codes(20000, 128, 2, seed=11)
    lay = shuffle.layout(planes, scales)
    for k in (10, 100):
        stats = {}
        shuffle.topk(q, q @ codec.mean, lay, k, parts=1, stats=stats)
        assert (stats["exact"] >= k).all() and (stats["exact"] <= 2 * k + 10).all(), (k, stats["exact"])

def test_ties_go_by_position_as_the_table_scan_does():
    codec, q, planes, scales = _codes(300, 64, 2, seed=3)
    planes, scales = np.tile(planes[:10], (30, 1, 1)), np.tile(scales[:10], (30, 1))  # each code 30 times
    for k in (5, 31, 100):
        got = codec.topk(q, planes, scales, k, scan="shuffle", layout=shuffle.layout(planes, scales))
        want = codec.topk(q, planes, scales, k, scan="lut")
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)  # summation order


def test_symmetric_mode_equals_the_reference():
    codec, q, planes, scales = _codes(2000, 128, 2, seed=4)
    ref = codec.topk(q, planes, scales, 50, "symmetric", scan="numpy")
    got = codec.topk(q, planes, scales, 50, "symmetric", scan="shuffle")
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-4)
    assert all(set(a) == set(b) for a, b in zip(got[1], ref[1]))


def test_a_layout_follows_appended_rows():
    codec, q, planes, scales = _codes(3000, 128, 2, seed=5, clustered=False)
    lay = shuffle.layout(planes[:0], scales[:0])
    for end in (1, 31, 32, 33, 700, 1999, 3000):  # partial blocks, whole blocks, buffer growth
        lay.sync(planes[:end], scales[:end])
        whole = shuffle.layout(planes[:end], scales[:end])
        np.testing.assert_array_equal(lay.fs, whole.fs)
        np.testing.assert_array_equal(lay.at, whole.at)
        got = shuffle.topk(q, q @ codec.mean, lay, 20)
        want = codec.topk(q, planes[:end], scales[:end], 20, scan="lut")
        np.testing.assert_array_equal(got[1], want[1])


def test_bad_input_is_refused():
    codec, q, planes, scales = _codes(100, 64, 2, seed=6)
    lay = shuffle.layout(planes, scales)
    with pytest.raises(BadInput, match="do not continue"):
        lay.sync(planes[:50], scales[:50])  # rows removed: a new layout is needed
    with pytest.raises(BadInput, match="do not continue"):
        lay.sync(planes[:, :1], scales[:, :1])
    with pytest.raises(BadInput, match="non-negative"):
        shuffle.layout(planes, -scales.astype(np.float32))
    with pytest.raises(BadInput, match="1024 dimensions"):
        shuffle.ShuffleLayout(2, 1032 // 8)
    with pytest.raises(BadInput, match="query dimension"):
        shuffle.topk(q[:, :32], np.zeros(6), lay, 5)
    with pytest.raises(BadInput, match="layout holds"):
        binary_scan.topk(q[:, None], np.ones((6, 1)), np.zeros(6), planes[:90], scales[:90], 5, scan="shuffle",
                      layout=lay)


def test_the_index_keeps_its_layout_in_step_with_writes():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    q = x[:4] + 0.1 * rng.standard_normal((4, 64)).astype(np.float32)
    spec = IndexSpec.parse("binary:bits=4,mode=asymmetric,rescore=none")
    ix = CompressedIndex.build(spec, [f"d{i}" for i in range(2100)], x[:2100])
    assert 2100 * 4 >= binary_scan.SHUFFLE_FROM  # auto scans it with the shuffle loops

    def check():
        got = ix.search(q, 10)
        ids = np.array([int(d[1:]) for d in ix.docids])
        planes, scales = ix._codec.encode(x[ids])
        s, p = ix._codec.topk(q, planes, scales, 10, scan="numpy")
        want = [[f"d{ids[j]}" for j in row] for row in p]
        assert [[d for d, _ in row] for row in ix.docid_pairs(got)] == want
        assert ix._shuffle is not None and ix._shuffle.n == len(ix._codes)

    check()
    ix.add([f"d{i}" for i in range(2100, 2113)], x[2100:2113])  # a partial block
    check()
    ix.add([f"d{i}" for i in range(2113, 3000)], x[2113:3000])
    check()
    ix.remove([f"d{i}" for i in range(0, 600, 2)])  # past the purge threshold: the rows move, a new layout
    check()
    assert ix.memory_bytes() > ix._shuffle.nbytes


def test_documents_the_tables_cannot_tell_apart_are_ranked_exactly():
    """Four heavy query dimensions set the table step (about 4/255); the other 124 weigh 1e-3 each, well under a
    step, so the estimates of documents agreeing on the heavy bits tie while their exact scores differ. Only a
    correct bound keeps the right ones."""
    rng = np.random.default_rng(9)
    n, dim = 4000, 128
    qe = np.full((1, dim), 1e-3, np.float32) * rng.choice([-1.0, 1.0], dim).astype(np.float32)
    qe[0, :4] = 1.0
    planes = rng.integers(0, 256, (n, 2, dim // 8), dtype=np.uint8)
    planes[:, :, 0] |= 0xF0  # every document has the heavy bits set: the estimates hardly differ
    alphas = rng.uniform(0.5, 1.0, (n, 2)).astype(np.float32)
    bits = np.unpackbits(planes, axis=2).astype(np.float32)  # [n, 2, dim]
    exact = (alphas * (2 * bits @ qe[0] - qe.sum())).sum(axis=1)
    for k in (1, 10, 200):
        stats = {}
        s, p = shuffle.topk(qe, np.zeros(1), shuffle.layout(planes, alphas), k, stats=stats)
        want = np.lexsort((np.arange(n), -exact))[:k]
        np.testing.assert_array_equal(p[0], want)
        np.testing.assert_allclose(s[0], exact[want], rtol=1e-5)


def test_searches_racing_appends_see_consistent_rows():
    """Searches sync the layout with the rows appended so far while another thread keeps appending: no search may
    fail or return a row it was not given, and the last one equals the reference."""
    import threading

    rng = np.random.default_rng(10)
    x = rng.standard_normal((3500, 64)).astype(np.float32)
    q = x[:3] + 0.1 * rng.standard_normal((3, 64)).astype(np.float32)
    ix = CompressedIndex.build(IndexSpec.parse("binary:bits=4,mode=asymmetric,rescore=none"),
                               [f"d{i}" for i in range(2100)], x[:2100])
    errors, done = [], threading.Event()

    def search():
        try:
            while not done.is_set():
                for row in ix.docid_pairs(ix.search(q, 10)):
                    assert len(row) == 10 and all(d.startswith("d") for d, _ in row)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for s0 in range(2100, 3500, 7):
        ix.add([f"d{i}" for i in range(s0, min(3500, s0 + 7))], x[s0:min(3500, s0 + 7)])
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors
    planes, scales = ix._codec.encode(x)
    _, p = ix._codec.topk(q, planes, scales, 10, scan="numpy")
    assert [[d for d, _ in row] for row in ix.docid_pairs(ix.search(q, 10))] == [[f"d{j}" for j in r] for r in p]
