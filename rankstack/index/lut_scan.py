"""Byte-lookup-table scan of multi-bit binary codes (the way FAISS's PQ scan reads codes, on bit-planes).

A bit-plane packs 8 dimensions per byte, so a query's inner product with a plane is a sum of one table entry per
byte: ``L[j, v] = sum_k q[8j + k] * bit_k(v)`` (256 entries for each of the ``dim/8`` byte positions), and
``q . s = 2 * q . bits - sum(q)`` for the +-1 signs. Per document and plane that is ``dim/8`` table reads instead of
unpacking ``dim`` signs to floats and multiplying. One compiled kernel (numba, ``rankstack[fastscan]``) serves both
modes of :class:`~rankstack.index.binary.ResidualBinaryCodec`:

- asymmetric (float query): one set of tables from ``q``, plus ``q . mean``;
- symmetric (encoded query): one set of tables per query plane ``a``, weighted by its scale ``beta_a``.

Scores equal the codec's numpy reference up to float32 summation order; documents are scanned in chunks, each
chunk's top-k kept, so memory stays ``O(queries x chunk)`` at any corpus size.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["available", "byte_luts", "scan_scores", "scan_topk"]

_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)  # [256, 8], MSB first
_BLOCK = 256  # documents per inner block: their codes stay in L1 while one query's tables are read
# below this many (query, document) pairs the scan runs on the calling thread: a single query over a small index
# costs well under a millisecond serially, while handing blocks to numba's threads waits for every core, which on a
# busy server is a scheduler time slice (measured: 0.53 ms serial against 8 ms with two threads, one core taken)
SERIAL_BELOW = 1 << 15


def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def byte_luts(v: np.ndarray) -> np.ndarray:
    """``[m, dim]`` float vectors -> ``[m, dim/8, 256]`` tables: entry ``v`` of table ``j`` is the sum of the vector's
    components ``8j..8j+7`` whose bit is set in byte ``v`` (numpy's ``packbits`` order, most significant first)."""
    v = np.ascontiguousarray(v, np.float32)
    m, dim = v.shape
    return np.ascontiguousarray(v.reshape(m, dim // 8, 8) @ _BITS.T)


@lru_cache(maxsize=2)
def _kernel(parallel: bool = True):
    import numba

    @numba.njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def scan(luts, qw, qsum, base, codes, alphas, out):
        nq, na, nj = luts.shape[0], luts.shape[1], luts.shape[2]
        n, nb = codes.shape[0], codes.shape[1]
        nblocks = (n + _BLOCK - 1) // _BLOCK
        for blk in numba.prange(nblocks):
            lo = blk * _BLOCK
            hi = min(n, lo + _BLOCK)
            for q in range(nq):
                for i in range(lo, hi):
                    s = base[q]
                    for a in range(na):
                        for b in range(nb):
                            p = np.float32(0.0)
                            for j in range(nj):
                                p += luts[q, a, j, codes[i, b, j]]
                            s += qw[q, a] * alphas[i, b] * (np.float32(2.0) * p - qsum[q, a])
                    out[q, i] = s

    return scan


def scan_scores(luts, qw, qsum, base, codes, alphas) -> np.ndarray:
    """``[nq, n]`` scores: ``base + sum_a qw_a sum_b alpha_b (2 * sum_j luts[a, j, codes[b, j]] - qsum_a)``.

    ``luts [nq, A, J, 256]`` float32, ``qw``/``qsum`` ``[nq, A]``, ``base [nq]``, ``codes [n, B, J]`` uint8,
    ``alphas [n, B]`` (any float dtype)."""
    out = np.empty((luts.shape[0], codes.shape[0]), np.float32)
    _kernel(out.size >= SERIAL_BELOW)(np.ascontiguousarray(luts, np.float32), np.ascontiguousarray(qw, np.float32),
              np.ascontiguousarray(qsum, np.float32), np.ascontiguousarray(base, np.float32),
              np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(alphas, np.float32), out)
    return out


def scan_topk(luts, qw, qsum, base, codes, alphas, k: int, *, chunk: int = 1 << 17) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` (``min(k, n)``) documents per query as ``(scores [nq, k], positions [nq, k])``, best first,
    ties by position; the scan runs chunk by chunk, keeping each chunk's best ``k``."""
    n, nq = codes.shape[0], luts.shape[0]
    kk = min(k, n)
    best_s = np.empty((nq, 0), np.float32)
    best_p = np.empty((nq, 0), np.int64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        s = scan_scores(luts, qw, qsum, base, codes[lo:hi], alphas[lo:hi])
        if hi - lo > kk:
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            s = np.take_along_axis(s, part, axis=1)
        else:
            part = np.broadcast_to(np.arange(hi - lo), s.shape)
        best_s = np.concatenate([best_s, s], axis=1)
        best_p = np.concatenate([best_p, part + lo], axis=1)
        if best_s.shape[1] > kk:
            keep = np.argpartition(-best_s, kk - 1, axis=1)[:, :kk]
            best_s = np.take_along_axis(best_s, keep, axis=1)
            best_p = np.take_along_axis(best_p, keep, axis=1)
    order = np.lexsort((best_p, -best_s), axis=1)
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_p, order, axis=1)
