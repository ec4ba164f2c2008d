"""Multi-bit residual binary codes at 1M x 384: the byte-lookup-table scan against the numpy path it replaces and
against FAISS IndexPQ at (about) the same code bytes, all in one run, with Recall@100 against exact search.

    pip install -e '.[cpu,fastscan]'
    python benchmarks/binary_scan.py [--n 1000000] [--bits 2 4] [--out runs/binary_scan]

Rows: `numpy` (the codec's reference: every code unpacked to float32 signs, then matrix products), `lut` (the
compiled table scan the index uses with rankstack[fastscan]), `index` (the whole `binary:bits=<b>,mode=asymmetric` index
search, lut scan inside, docid slots included) and FAISS `PQ<m>x8` with m = bits * dim / 8 sub-quantizers (2-bit:
96 bytes against our 96 bytes of planes + 4 of scales). Synthetic clustered vectors as in
`compressed_indexes.py` (no relevance labels); the FAISS PQ is trained on the same 50k sample, not timed.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, save_results  # noqa: E402
from compressed_indexes import synthetic  # noqa: E402

from rankstack.index.base import IndexSpec  # noqa: E402
from rankstack.index.compressed import no_polysemous  # noqa: E402
from rankstack.index.registry import build_vector_index  # noqa: E402

logger = logging.getLogger("benchmarks.binary_scan")
K = 100


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def recall(ids: np.ndarray, exact: list[set]) -> float:
    return float(np.mean([len({int(i) for i in r if i >= 0} & e) / len(e) for r, e in zip(ids, exact)]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--single", type=int, default=20, help="queries searched one at a time (numpy: 3)")
    p.add_argument("--out", type=Path, default=Path("runs/binary_scan"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import faiss

    x, q = synthetic(args.n)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    exact = [set(r.tolist()) for r in flat.search(q, K)[1]]
    del flat
    docids = [f"d{i}" for i in range(args.n)]
    rows = []
    for bits in args.bits:
        spec = IndexSpec.parse(f"binary:bits={bits},mode=asymmetric")
        index, build_s = timed(lambda: build_vector_index(spec, docids, x))
        codec, planes, scales = index._codec, index._planes, index._scales
        code_bytes = index.code_bytes()
        for scan in ("numpy", "lut"):
            nq_b = 50 if scan == "numpy" else len(q)
            nq_s = 3 if scan == "numpy" else args.single
            codec.topk(q[:1], planes, scales, K, scan=scan)  # warm (compiles the kernel once)
            (_, ids), secs = timed(lambda: codec.topk(q[:nq_b], planes, scales, K, scan=scan))
            _, s1 = timed(lambda: [codec.topk(q[i:i + 1], planes, scales, K, scan=scan) for i in range(nq_s)])
            rows.append({"bits": bits, "path": scan, "code_bytes": code_bytes, "build_s": build_s,
                         "qps_batched": nq_b / secs, "qps_single": nq_s / s1,
                         "R@100_vs_exact": recall(ids, exact[:nq_b])})
            logger.info("%s", rows[-1])
        index.search(q[:2], K)
        top, secs = timed(lambda: index.search(q, K))
        _, s1 = timed(lambda: [index.search(q[i:i + 1], K) for i in range(args.single)])
        rows.append({"bits": bits, "path": "index", "code_bytes": code_bytes, "build_s": build_s,
                     "qps_batched": len(q) / secs, "qps_single": args.single / s1,
                     "R@100_vs_exact": recall(top.ids, exact)})
        logger.info("%s", rows[-1])
        m = bits * x.shape[1] // 8  # the same bits per vector as our planes
        pq = faiss.IndexPQ(x.shape[1], m, 8, faiss.METRIC_INNER_PRODUCT)
        no_polysemous(pq)
        sample = x[np.sort(np.random.default_rng(0).choice(args.n, min(args.n, 50_000), replace=False))]
        _, train_s = timed(lambda: pq.train(sample))
        _, add_s = timed(lambda: pq.add(x))
        pq.search(q[:2], K)
        (_, ids), secs = timed(lambda: pq.search(q, K))
        _, s1 = timed(lambda: [pq.search(q[i:i + 1], K) for i in range(args.single)])
        rows.append({"bits": bits, "path": f"faiss PQ{m}x8", "code_bytes": m, "build_s": train_s + add_s,
                     "qps_batched": len(q) / secs, "qps_single": args.single / s1,
                     "R@100_vs_exact": recall(ids, exact)})
        logger.info("%s", rows[-1])
        base = {r["path"]: r for r in rows if r["bits"] == bits}
        for r in rows:
            if r["bits"] == bits:
                r["batched_vs_numpy"] = r["qps_batched"] / base["numpy"]["qps_batched"]
                r["single_vs_numpy"] = r["qps_single"] / base["numpy"]["qps_single"]
                r["batched_vs_faiss"] = r["qps_batched"] / base[f"faiss PQ{m}x8"]["qps_batched"]
                r["single_vs_faiss"] = r["qps_single"] / base[f"faiss PQ{m}x8"]["qps_single"]
    cols = ["bits", "path", "code_bytes", "build_s", "qps_batched", "qps_single", "R@100_vs_exact",
            "batched_vs_numpy", "single_vs_numpy", "batched_vs_faiss", "single_vs_faiss"]
    table = markdown(rows, cols)
    print(table)
    save_results(args.out, {"n": args.n, "queries": len(q), "threads": os.cpu_count(), "machine": platform.machine(),
                            "faiss_threads": faiss.omp_get_max_threads(), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
