"""Would a popcount scan close the gap to FAISS's 4-bit fast-scan PQ? A probe, not a feature.

    pip install -e '.[cpu,fastscan]'
    python benchmarks/popcount_probe.py [--n 1000000] [--bits 2] [--query-bits 4] [--queries 10]

FAISS `PQ<2m>x4fs` runs 12-15x faster than our compiled scans at the same code bytes (`binary_scan.py`). One
route to close that without SIMD byte shuffles is a RaBitQ-style scan: quantize the query to U bits, AND each
query bit-plane with each document code plane and popcount, weighting by 2^t. This script times only that
counting pass (numba, LLVM `ctpop`, which becomes `vpopcntq` on AVX-512 VPOPCNTDQ) against the index's exact
`lut` scan (heaps included) on the same random codes, one query per call, and prints the ratio. The popcount pass
here has no heaps and no rescoring, which a real scan would need, so its ratio is an upper bound on what it buys.
Its counts are checked against `np.bitwise_count` first. The query bit-planes are random (the time of a counting
pass does not depend on their values); `lut` gets random float queries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, p50_ms  # noqa: E402

L = 16  # documents per block: one uint64 lane group


def _kernel():
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def popcnt64(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])
        return types.uint64(types.uint64), codegen

    @numba.njit(parallel=True, fastmath=True, nogil=True)
    def counts(q, blocks, out):
        # q [U, W] uint64 query bit-planes; blocks [nblk, B, W, L] uint64; out [nblk * L, B] weighted counts
        u, w_ = q.shape
        nblk, b_ = blocks.shape[0], blocks.shape[1]
        for blk in numba.prange(nblk):
            acc = np.zeros((b_, L), np.int64)
            for b in range(b_):
                for w in range(w_):
                    for t in range(u):
                        qv = q[t, w]
                        for lane in range(L):
                            acc[b, lane] += popcnt64(qv & blocks[blk, b, w, lane]) << t
            for b in range(b_):
                for lane in range(L):
                    out[blk * L + lane, b] = acc[b, lane]

    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--bits", type=int, default=2, help="document code planes")
    ap.add_argument("--query-bits", type=int, default=4, help="U: query quantization bits")
    ap.add_argument("--queries", type=int, default=10)
    a = ap.parse_args(argv)
    from rankstack.kernels import binary_scan as lut_scan

    n = a.n // L * L
    w = a.dim // 64
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (n, a.bits, a.dim // 8), dtype=np.uint8)
    alphas = rng.random((n, a.bits), dtype=np.float32) + 0.5
    blocks = planes.view(np.uint64).reshape(n // L, L, a.bits, w).transpose(0, 2, 3, 1).copy()
    qbits = rng.integers(0, 2**63, (a.queries, a.query_bits, w), dtype=np.uint64)
    qvecs = rng.standard_normal((a.queries, 1, 1, a.dim)).astype(np.float32)
    counts = _kernel()
    out = np.zeros((n, a.bits), np.int64)

    counts(qbits[0], blocks, out)  # compile
    words = planes[:1000].view(np.uint64).reshape(1000, a.bits, w)
    ref = sum(np.bitwise_count(words & qbits[0, t][None, None, :]).sum(-1).astype(np.int64) << t
              for t in range(a.query_bits))
    assert np.array_equal(ref, out[:1000]), "popcount counts differ from np.bitwise_count"
    lut_scan.topk(qvecs[0], np.ones((1, 1), np.float32), np.zeros(1, np.float32), planes, alphas, 100, scan="lut")

    t_pc = p50_ms(lambda i: counts(qbits[i], blocks, out), a.queries) / 1e3
    t_lut = p50_ms(lambda i: lut_scan.topk(qvecs[i], np.ones((1, 1), np.float32), np.zeros(1, np.float32),
                                          planes, alphas, 100, scan="lut"), a.queries) / 1e3
    print(f"n={n} dim={a.dim} code planes={a.bits} query bits={a.query_bits}, one query per call, median of "
          f"{a.queries}")
    rows = [{"path": "lut (exact, heaps, k=100)", "ms/query": t_lut * 1e3, "QPS": 1 / t_lut, "vs lut": 1.0},
            {"path": "popcount counts only (no heaps, no rescoring)", "ms/query": t_pc * 1e3, "QPS": 1 / t_pc,
             "vs lut": t_lut / t_pc}]
    print(markdown(rows, ["path", "ms/query", "QPS", "vs lut"]))


if __name__ == "__main__":
    main()
