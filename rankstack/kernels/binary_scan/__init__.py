"""Scans of multi-bit binary codes, one op with one dispatch: :func:`topk` chooses among

- ``lut`` and ``gemm`` (:mod:`.lut`): byte lookup tables for a few queries, decode + dot products for batches;
- ``shuffle`` (:mod:`.shuffle`, x86-64 with AVX2): 4-bit tables in SIMD registers, bounded, with the documents the
  bound cannot rule out scored exactly;

and the codec's numpy scoring (:meth:`rankstack.index.binary.BinaryCodec.asymmetric_scores`) is their plain
reference. Indexes keep their data (codes, scales, and for the shuffle scan a layout of them) and call :func:`topk`.
"""

from __future__ import annotations

import numpy as np

from rankstack.errors import BadInput
from rankstack.kernels.binary_scan import lut, shuffle
from rankstack.kernels.topk_heap import SERIAL_BELOW, byte_luts

__all__ = ["topk", "available", "SCANS", "GEMM_FROM", "SHUFFLE_FROM", "SERIAL_BELOW", "byte_luts", "lut", "shuffle"]

SCANS = ("auto", "lut", "gemm", "shuffle")
# queries per call from which ``auto`` decodes and multiplies instead of reading tables: chosen on synthetic
# clustered vectors (benchmarks/binary_scan.py --nq-sweep, 200k x 384 on 2 cores), not on any evaluation set
GEMM_FROM = 8
# documents x code planes from which ``auto`` takes the shuffle scan when it can: below, its per-call work (tables,
# bounds, the exact scores of the best bounds) costs more than reading byte tables. Chosen on synthetic clustered
# vectors, single queries at k = 10 and 100, not on any evaluation set: at 1,000 documents x 1 plane the shuffle scan
# took 0.83-1.46x lut's speed, at 1,000 x 2 planes 1.36-2.14x, at 3,000 x 1 1.51-2.73x (8,192 before the shuffle
# scan kept its bounds per window and merged its heaps compiled)
SHUFFLE_FROM = 2000


def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def topk(vecs, qw, base, codes, alphas, k: int, *, scan: str = "auto", parts: int | None = None,
         layout=None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``min(k, n)`` documents per query as ``(scores [nq, k], positions [nq, k])``, best first, ties by
    position.

    ``vecs [nq, A, dim]`` float32 query vectors, ``qw [nq, A]`` their weights, ``base [nq]`` a per-query offset;
    ``codes [n, B, dim/8]`` uint8 planes, ``alphas [n, B]`` their scales. ``scan``: ``lut`` (tables), ``gemm``
    (decode + dot products), ``shuffle`` (4-bit tables in SIMD registers, bounded and rescored exactly:
    :mod:`.shuffle`, x86-64 with AVX2) or ``auto``: ``shuffle`` where it runs, ``layout`` (the
    codes laid out for it, :func:`.shuffle.layout`, which an index keeps) is given and the codes
    hold at least :data:`SHUFFLE_FROM` document planes; else ``gemm`` from :data:`GEMM_FROM` queries and ``lut``
    below. ``parts``: document ranges scanned in parallel, each into its own heaps (default: numba's thread count;
    tests vary it)."""
    if scan not in SCANS:
        raise BadInput(f"unknown binary scan {scan!r}; choose one of {', '.join(SCANS)} (or numpy)")
    vecs = np.ascontiguousarray(vecs, np.float32)
    qw = np.ascontiguousarray(qw, np.float32)
    if scan == "auto":
        if layout is not None and layout.n * codes.shape[1] >= SHUFFLE_FROM and shuffle.available():
            scan = "shuffle"
        else:
            scan = "gemm" if vecs.shape[0] >= GEMM_FROM else "lut"
    if scan == "shuffle":
        qe = np.einsum("na,nad->nd", qw, vecs)  # sum_a w_a v_a: one vector per query
        shuffle.require()
        lay = layout if layout is not None else shuffle.layout(codes, alphas)
        if lay.n > len(codes):  # (fewer is a search racing an append: it scans the rows laid out when it began)
            raise BadInput(f"the shuffle layout holds {lay.n} documents, the codes {len(codes)}; make a new layout")
        return shuffle.topk(qe, base, lay, k, parts=parts)
    return lut.scan(vecs, qw, base, codes, alphas, k, kind=scan, parts=parts)
