"""Compiled scans of multi-bit binary codes: a byte-lookup-table scan for a few queries, decode + dot products for
batches.

Both compute, for query vectors ``v_a`` with weights ``w_a`` (one vector for a float query, one per plane for an
encoded one), ``score = base + sum_a w_a sum_b alpha_b v_a . s_b`` over the document's +-1 planes ``s_b``, and keep
each query's best ``k`` in heaps as the documents stream past (``rankstack[fastscan]``, numba):

- ``lut`` (the way FAISS's PQ scan reads codes, on bit-planes): a plane packs 8 dimensions per byte, so
  ``v . bits`` is one table entry per byte, ``L[j, c] = sum_k v[8j + k] * bit_k(c)``, and ``v . s = 2 v . bits -
  sum(v)``: ``dim/8`` table reads per document and plane instead of ``dim`` multiplications. Four documents are
  summed side by side, so the reads of one never wait on the additions of another.
- ``gemm``: a tile of documents is decoded once to ``y = sum_b alpha_b bits_b`` (the planes' set bits weighted by
  their scales), kept in cache, and multiplied with every query by a 4 x 4 register-blocked kernel, since
  ``sum_b alpha_b s_b = 2y - sum_b alpha_b``. The decode costs about one table scan, so this wins from a handful of
  queries per call (:data:`GEMM_FROM`).
(The third scan, ``shuffle``, is :mod:`.shuffle`; :func:`rankstack.kernels.binary_scan.topk` chooses.)

Each thread scans one contiguous range of documents into its own heaps (``min(k, n)`` per query); the heaps are
merged at the end. Decoding, scoring and selection run in one parallel region, so nothing of size ``queries x
documents`` is ever materialised and no other thread pool (BLAS, torch) takes turns with numba's. Scores equal the
codec's numpy reference up to float32 summation order; ties are broken by position, as a stable sort would.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from rankstack.kernels import topk_heap
from rankstack.kernels.topk_heap import SERIAL_BELOW, TILE, byte_luts

logger = logging.getLogger(__name__)

__all__ = ["scan"]

@lru_cache(maxsize=2)
def _lut_kernel(parallel: bool):
    import numba

    push = topk_heap.heap_push()
    f32 = np.float32

    @numba.njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def scan(luts, qw, qsum, base, codes, alphas, bounds, hs, hp, fill):
        nq, na, nj = luts.shape[0], luts.shape[1], luts.shape[2]
        nb, k = codes.shape[1], hs.shape[2]
        for t in numba.prange(bounds.shape[0] - 1):
            for lo in range(bounds[t], bounds[t + 1], TILE):
                hi = min(bounds[t + 1], lo + TILE)
                for q in range(nq):
                    h, p = hs[t, q], hp[t, q]
                    f = fill[t, q]
                    i = lo
                    while i < hi:  # four documents at a time: four independent sums per plane
                        m = min(4, hi - i)
                        i1, i2, i3 = i + min(1, m - 1), i + min(2, m - 1), i + min(3, m - 1)  # repeats at the tail
                        s0 = base[q]
                        s1, s2, s3 = s0, s0, s0
                        for a in range(na):
                            tab = luts[q, a]
                            w = qw[q, a]
                            qs = qsum[q, a]
                            for b in range(nb):
                                p0, p1, p2, p3 = f32(0.0), f32(0.0), f32(0.0), f32(0.0)
                                for j in range(nj):
                                    p0 += tab[j, codes[i, b, j]]
                                    p1 += tab[j, codes[i1, b, j]]
                                    p2 += tab[j, codes[i2, b, j]]
                                    p3 += tab[j, codes[i3, b, j]]
                                s0 += w * alphas[i, b] * (f32(2.0) * p0 - qs)
                                s1 += w * alphas[i1, b] * (f32(2.0) * p1 - qs)
                                s2 += w * alphas[i2, b] * (f32(2.0) * p2 - qs)
                                s3 += w * alphas[i3, b] * (f32(2.0) * p3 - qs)
                        f = push(h, p, f, k, s0, i)
                        if m > 1:
                            f = push(h, p, f, k, s1, i1)
                        if m > 2:
                            f = push(h, p, f, k, s2, i2)
                        if m > 3:
                            f = push(h, p, f, k, s3, i3)
                        i += 4
                    fill[t, q] = f

    return scan


@lru_cache(maxsize=2)
def _gemm_kernel(parallel: bool):
    import numba

    push = topk_heap.heap_push()
    bits = topk_heap.BITS
    f32 = np.float32

    @numba.njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def scan(qe, nq, qsum, base, codes, alphas, bounds, hs, hp, fill):
        """``qe [nq4, dim]``: the queries padded with zero rows to a multiple of 4; ``nq`` of them are real."""
        nq4, dim = qe.shape
        nb, nj, k = codes.shape[1], codes.shape[2], hs.shape[2]
        for t in numba.prange(bounds.shape[0] - 1):
            y = np.zeros((TILE, dim), f32)  # this thread's decoded tile, rows past the range's end stay zero
            asum = np.zeros(TILE, f32)
            sc = np.empty((nq4, TILE), f32)
            for lo in range(bounds[t], bounds[t + 1], TILE):
                c = min(bounds[t + 1], lo + TILE) - lo
                for r in range(c):  # y[r] = sum_b alpha_b bits_b, asum[r] = sum_b alpha_b
                    i = lo + r
                    a = f32(0.0)
                    for b in range(nb):
                        a += alphas[i, b]
                    asum[r] = a
                    for j in range(nj):
                        for e in range(8):
                            y[r, 8 * j + e] = f32(0.0)
                        for b in range(nb):
                            row = bits[codes[i, b, j]]
                            w = alphas[i, b]
                            for e in range(8):
                                y[r, 8 * j + e] += w * row[e]
                if c < TILE:
                    y[c:] = f32(0.0)
                for q in range(0, nq4, 4):  # 4 queries x 4 documents per register block
                    for r in range(0, c, 4):
                        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = f32(0.0)
                        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = f32(0.0)
                        for d in range(dim):
                            y0, y1, y2, y3 = y[r, d], y[r + 1, d], y[r + 2, d], y[r + 3, d]
                            q0, q1, q2, q3 = qe[q, d], qe[q + 1, d], qe[q + 2, d], qe[q + 3, d]
                            a00 += q0 * y0
                            a01 += q0 * y1
                            a02 += q0 * y2
                            a03 += q0 * y3
                            a10 += q1 * y0
                            a11 += q1 * y1
                            a12 += q1 * y2
                            a13 += q1 * y3
                            a20 += q2 * y0
                            a21 += q2 * y1
                            a22 += q2 * y2
                            a23 += q2 * y3
                            a30 += q3 * y0
                            a31 += q3 * y1
                            a32 += q3 * y2
                            a33 += q3 * y3
                        sc[q, r], sc[q, r + 1], sc[q, r + 2], sc[q, r + 3] = a00, a01, a02, a03
                        sc[q + 1, r], sc[q + 1, r + 1], sc[q + 1, r + 2], sc[q + 1, r + 3] = a10, a11, a12, a13
                        sc[q + 2, r], sc[q + 2, r + 1], sc[q + 2, r + 2], sc[q + 2, r + 3] = a20, a21, a22, a23
                        sc[q + 3, r], sc[q + 3, r + 1], sc[q + 3, r + 2], sc[q + 3, r + 3] = a30, a31, a32, a33
                for q in range(nq):
                    h, p = hs[t, q], hp[t, q]
                    f = fill[t, q]
                    for r in range(c):
                        f = push(h, p, f, k, base[q] + f32(2.0) * sc[q, r] - asum[r] * qsum[q], lo + r)
                    fill[t, q] = f

    return scan


def scan(vecs, qw, base, codes, alphas, k: int, *, kind: str = "lut", parts: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """The ``lut`` or ``gemm`` scan (``kind``) of :func:`rankstack.kernels.binary_scan.topk`'s arguments."""
    import numba

    vecs = np.ascontiguousarray(vecs, np.float32)
    qw = np.ascontiguousarray(qw, np.float32)
    base = np.ascontiguousarray(base, np.float32)
    codes = np.ascontiguousarray(codes, np.uint8)
    alphas = np.ascontiguousarray(alphas, np.float32)
    nq, na, dim = vecs.shape
    n = codes.shape[0]
    kk = min(k, n)
    if kk <= 0 or nq == 0:
        return topk_heap.none(nq, kk)
    parallel = nq * n >= SERIAL_BELOW
    parts = parts or (numba.get_num_threads() if parallel else 1)
    bounds = topk_heap.bounds(n, parts)
    hs, hp, fill = topk_heap.heaps(parts, nq, kk)
    if kind == "gemm":
        qe = np.einsum("na,nad->nd", qw, vecs)  # sum_a w_a v_a: one vector per query
        qe4 = np.zeros((-(-nq // 4) * 4, dim), np.float32)
        qe4[:nq] = qe
        _gemm_kernel(parallel)(qe4, nq, qe.sum(axis=1), base, codes, alphas, bounds, hs, hp, fill)
    else:
        luts = byte_luts(vecs.reshape(-1, dim)).reshape(nq, na, dim // 8, 256)
        _lut_kernel(parallel)(luts, qw, vecs.sum(axis=2), base, codes, alphas, bounds, hs, hp, fill)
    return topk_heap.merge(hs, hp, fill, kk)
