"""Multi-bit residual binary codes at 1M x 384: the compiled scans against the numpy path they replace and against
FAISS IndexPQ and IndexPQFastScan at (about) the same code bytes, all in one run, with Recall@100 against exact search.

    pip install -e '.[cpu,fastscan]'
    python benchmarks/binary_scan.py [--n 1000000] [--bits 2 4] [--out runs/binary_scan]
    python benchmarks/binary_scan.py --n 200000 --bits 2 --nq-sweep   # where decode + GEMM overtakes the tables
    python benchmarks/binary_scan.py --small --bits 2                  # single queries on 2k-100k documents

Rows: `numpy` (the codec's reference: every code unpacked to float32 signs, then matrix products), `lut` (the
compiled byte-table scan), `gemm` (blocks decoded once, multiplied with every query in a register-blocked kernel),
`shuffle` (4-bit uint8 tables in AVX2 registers, bounded, the rest scored exactly; x86-64 with AVX2), `index` (the
whole `binary:bits=<b>,mode=asymmetric` index search, docid slots included: `auto` takes `shuffle` where it runs,
else `lut` for single queries and `gemm` for the batch), FAISS `PQ<m>x8` with m = bits * dim / 8 sub-quantizers (2-bit: 96 bytes against our 96 bytes of
planes + 4 of scales) and FAISS `PQ<2m>x4fs`, the 4-bit fast-scan PQ (SIMD shuffles over uint8 tables) at the same
bytes. Synthetic clustered vectors as in `compressed_indexes.py` (no relevance labels); the FAISS PQs are trained
on the same 50k sample.
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

from rankstack.kernels.binary_scan import shuffle as shuffle_scan  # noqa: E402
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
    p.add_argument("--nq-sweep", action="store_true",
                   help="only time lut against gemm at 1-64 queries per call (how GEMM_FROM was chosen)")
    p.add_argument("--small", action="store_true",
                   help="only time single queries at 2k-100k documents: lut, shuffle, the index and FAISS fast-scan")
    p.add_argument("--out", type=Path, default=Path("runs/binary_scan"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.small:
        return small(args)
    import faiss

    x, q = synthetic(args.n)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    exact = [set(r.tolist()) for r in flat.search(q, K)[1]]
    del flat
    docids = [f"d{i}" for i in range(args.n)]
    if args.nq_sweep:
        return nq_sweep(args, x, q, docids)
    rows = []
    for bits in args.bits:
        spec = IndexSpec.parse(f"binary:bits={bits},mode=asymmetric")
        index, build_s = timed(lambda: build_vector_index(spec, docids, x))
        codec, planes, scales = index.binary_parts()
        code_bytes = index.code_bytes()
        # the shuffle scan's layout, as the index keeps it (built at its first search): its time and extra bytes
        lay, lay_s = timed(index.shuffle_layout) if shuffle_scan.available() else (None, 0.0)
        for scan in ("numpy", "lut", "gemm", "shuffle"):
            if scan == "shuffle" and lay is None:
                logger.warning("no shuffle rows: the shuffle scan needs numba and an x86-64 CPU with AVX2")
                continue
            nq_b = 50 if scan == "numpy" else len(q)
            nq_s = 3 if scan == "numpy" else args.single
            kw = {"layout": lay} if scan == "shuffle" else {}
            codec.topk(q[:1], planes, scales, K, scan=scan, **kw)  # warm (compiles the kernel once)
            (_, ids), secs = timed(lambda: codec.topk(q[:nq_b], planes, scales, K, scan=scan, **kw))  # noqa: B023
            _, s1 = timed(lambda: [codec.topk(q[i:i + 1], planes, scales, K, scan=scan, **kw)  # noqa: B023
                                   for i in range(nq_s)])
            rows.append({"bits": bits, "path": scan, "code_bytes": code_bytes, "build_s": build_s,
                         "qps_batched": nq_b / secs, "qps_single": nq_s / s1,
                         "R@100_vs_exact": recall(ids, exact[:nq_b])})
            if scan == "shuffle":  # what the bound leaves to score exactly, and what the layout costs
                stats = {}
                shuffle_scan.topk(q, q @ codec.mean, lay, K, stats=stats)
                rows[-1].update(exact_scored=float(stats["exact"].mean() / args.n), layout_s=lay_s,
                                layout_MB=lay.nbytes / 2**20, codes_MB=(planes.nbytes + scales.nbytes) / 2**20)
            logger.info("%s", rows[-1])
        index.search(q[:2], K)
        top, secs = timed(lambda: index.search(q, K))
        _, s1 = timed(lambda: [index.search(q[i:i + 1], K) for i in range(args.single)])
        rows.append({"bits": bits, "path": "index", "code_bytes": code_bytes, "build_s": build_s,
                     "qps_batched": len(q) / secs, "qps_single": args.single / s1,
                     "R@100_vs_exact": recall(top.ids, exact)})
        logger.info("%s", rows[-1])
        m = bits * x.shape[1] // 8  # the same bits per vector as our planes
        sample = x[np.sort(np.random.default_rng(0).choice(args.n, min(args.n, 50_000), replace=False))]
        for label in (f"faiss PQ{m}x8", f"faiss PQ{2 * m}x4fs"):
            if label.endswith("x8"):
                pq = faiss.IndexPQ(x.shape[1], m, 8, faiss.METRIC_INNER_PRODUCT)
                no_polysemous(pq)
            else:  # 4-bit sub-quantizers, twice as many: the same bytes
                pq = faiss.IndexPQFastScan(x.shape[1], 2 * m, 4, faiss.METRIC_INNER_PRODUCT)
            _, train_s = timed(lambda: pq.train(sample))  # noqa: B023 (called at once)
            _, add_s = timed(lambda: pq.add(x))  # noqa: B023
            pq.search(q[:2], K)
            (_, ids), secs = timed(lambda: pq.search(q, K))  # noqa: B023
            _, s1 = timed(lambda: [pq.search(q[i:i + 1], K) for i in range(args.single)])  # noqa: B023
            rows.append({"bits": bits, "path": label, "code_bytes": m, "build_s": train_s + add_s,
                         "qps_batched": len(q) / secs, "qps_single": args.single / s1,
                         "R@100_vs_exact": recall(ids, exact)})
            logger.info("%s", rows[-1])
            pq = None
        base = {r["path"]: r for r in rows if r["bits"] == bits}
        for r in rows:
            if r["bits"] == bits:
                r["batched_vs_numpy"] = r["qps_batched"] / base["numpy"]["qps_batched"]
                r["single_vs_numpy"] = r["qps_single"] / base["numpy"]["qps_single"]
                r["batched_vs_faiss"] = r["qps_batched"] / base[f"faiss PQ{m}x8"]["qps_batched"]
                r["single_vs_faiss"] = r["qps_single"] / base[f"faiss PQ{m}x8"]["qps_single"]
                r["batched_vs_fs"] = r["qps_batched"] / base[f"faiss PQ{2 * m}x4fs"]["qps_batched"]
                r["single_vs_fs"] = r["qps_single"] / base[f"faiss PQ{2 * m}x4fs"]["qps_single"]
    cols = ["bits", "path", "code_bytes", "build_s", "qps_batched", "qps_single", "R@100_vs_exact",
            "batched_vs_numpy", "single_vs_numpy", "batched_vs_faiss", "single_vs_faiss", "batched_vs_fs",
            "single_vs_fs"]
    table = markdown(rows, cols)
    print(table)
    lay_rows = [r for r in rows if "layout_MB" in r]
    if lay_rows:  # the shuffle scan's cost beside its gain: documents scored exactly, layout time and bytes
        print(markdown(lay_rows, ["bits", "exact_scored", "layout_s", "layout_MB", "codes_MB"]))
    save_results(args.out, {"n": args.n, "queries": len(q), "threads": os.cpu_count(), "machine": platform.machine(),
                            "faiss_threads": faiss.omp_get_max_threads(), "rows": rows, "table": table})
    return 0


def nq_sweep(args, x, q, docids) -> int:
    """lut against gemm at 1-64 queries per call, on the first --bits: where ``auto`` should switch."""
    from rankstack.kernels.binary_scan import GEMM_FROM

    index = build_vector_index(IndexSpec.parse(f"binary:bits={args.bits[0]},mode=asymmetric"), docids, x)
    codec, planes, scales = index.binary_parts()
    rows = []
    lay = index.shuffle_layout()
    scans = ("lut", "gemm") + (("shuffle",) if lay is not None else ())
    for nq in (1, 4, 8, 16, 24, 32, 64):
        row = {"bits": args.bits[0], "queries_per_call": nq}
        for scan in scans:
            kw = {"layout": lay} if scan == "shuffle" else {}
            codec.topk(q[:nq], planes, scales, K, scan=scan, **kw)
            calls = max(1, 64 // nq)
            _, secs = timed(lambda: [codec.topk(q[i * nq:(i + 1) * nq], planes, scales, K, scan=scan,  # noqa: B023
                                                **kw) for i in range(calls)])  # noqa: B023
            row[f"{scan}_qps"] = calls * nq / secs
        row["gemm_vs_lut"] = row["gemm_qps"] / row["lut_qps"]
        if lay is not None:
            row["shuffle_vs_best"] = row["shuffle_qps"] / max(row["gemm_qps"], row["lut_qps"])
        rows.append(row)
        logger.info("%s", row)
    table = markdown(rows, ["bits", "queries_per_call", *(f"{s}_qps" for s in scans), "gemm_vs_lut",
                            *(("shuffle_vs_best",) if lay is not None else ())])
    print(table)
    print(f"GEMM_FROM = {GEMM_FROM}")
    save_results(args.out.with_name(args.out.name + "_nq_sweep"), {"n": args.n, "rows": rows, "table": table,
                                                                    "gemm_from": GEMM_FROM})
    return 0


def small(args) -> int:
    """Single-query latency on 2k-100k documents, where per-call overhead weighs: ``lut`` and ``shuffle`` (the codec's
    scans), ``index`` (the whole ``binary:bits=<b>,mode=asymmetric`` index search, docids included) and FAISS's 4-bit
    fast-scan PQ at the same bytes (trained on the documents themselves), the best of three rounds of 200 queries
    each."""
    import faiss

    if not shuffle_scan.available():
        logger.error("the shuffle scan needs numba and an x86-64 CPU with AVX2")
        return 1
    bits = args.bits[0]
    rows = []
    for n in (2000, 5000, 20000, 100000):
        x, q = synthetic(n)
        index = build_vector_index(IndexSpec.parse(f"binary:bits={bits},mode=asymmetric"), [f"d{i}" for i in range(n)],
                                   x)
        codec, planes, scales = index.binary_parts()
        lay = shuffle_scan.layout(planes, scales)
        fs = faiss.IndexPQFastScan(x.shape[1], bits * x.shape[1] // 4, 4, faiss.METRIC_INNER_PRODUCT)
        fs.train(x)
        fs.add(x)
        for k in (10, 100):
            row = {"bits": bits, "n": n, "k": k}
            paths = {
                "lut": lambda qq, k=k: codec.topk(qq, planes, scales, k, scan="lut"),
                "shuffle": lambda qq, k=k: codec.topk(qq, planes, scales, k, scan="shuffle", layout=lay),
                "index": lambda qq, k=k: index.search(qq, k),
                "faiss_fs": lambda qq, k=k: fs.search(qq, k),
            }
            for name, fn in paths.items():
                fn(q[:1])
                rounds = [timed(lambda: [fn(q[i:i + 1]) for i in range(len(q))])[1] for _ in range(3)]  # noqa: B023
                row[f"{name}_us"] = min(rounds) / len(q) * 1e6
            row["shuffle_vs_lut"] = row["lut_us"] / row["shuffle_us"]
            row["shuffle_vs_fs"] = row["faiss_fs_us"] / row["shuffle_us"]
            row["index_vs_fs"] = row["faiss_fs_us"] / row["index_us"]
            rows.append(row)
            logger.info("%s", row)
        fs = index = None
    table = markdown(rows, ["bits", "n", "k", "lut_us", "shuffle_us", "index_us", "faiss_fs_us", "shuffle_vs_lut",
                            "shuffle_vs_fs", "index_vs_fs"])
    print(table)
    save_results(args.out.with_name(args.out.name + "_small"), {"rows": rows, "table": table,
                                                                "faiss_threads": faiss.omp_get_max_threads()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
