"""What a single-document upsert, and the search right after it, cost the compressed dense indexes (binary codes,
PQ, IVF-PQ, SQ8) at two collection sizes.

    python benchmarks/compressed_upserts.py [--sizes 5000 50000] [--kinds binary pq:m=48 ...] [--upserts 200]
    PYTHONPATH=<checkout of an older commit> python benchmarks/compressed_upserts.py --label old ...

The index work only, through the calls a service's dense index makes (`CompressedIndex.add(upsert=True)`, then a
search of one query, k=10); the encoder is left out (it costs the same either way). Vectors are synthetic 384-d unit
vectors around 50 centres. Run it once per checkout (`--label`) to compare implementations on the same machine;
each run checks that its searches after the writes equal those of the same index with the removed rows dropped
from its codes (FAISS ``remove_ids``, or the binary arrays filtered).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import markdown, p50_ms, save_results  # noqa: E402

logger = logging.getLogger("benchmarks.compressed_upserts")
DIM = 384


def unit(rng, centres, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run(kind: str, n: int, upserts: int, label: str) -> dict:
    import faiss

    from rankstack.index.compressed import IndexSpec
    from rankstack.index.registry import build_vector_index

    rng = np.random.default_rng(n)
    centres = rng.standard_normal((50, DIM))
    x = unit(rng, centres, n)
    ids = [f"d{i}" for i in range(n)]
    index = build_vector_index(IndexSpec.parse(kind), ids, x)
    # one thread for the timed writes and searches: a one-vector call gains nothing from OpenMP, and on a loaded
    # machine each parallel region waits for a time slice (training set the pool to every core)
    faiss.omp_set_num_threads(1)
    queries = unit(rng, centres, 50)
    index.search(queries[:1], 10)
    up, se = [], []
    for j in range(upserts):
        v = unit(rng, centres, 1)
        t0 = time.perf_counter()
        index.add([f"d{int(rng.integers(0, n))}"], v, upsert=True)
        t1 = time.perf_counter()
        index.search(queries[j % 50:j % 50 + 1], 10)
        t2 = time.perf_counter()
        up.append((t1 - t0) * 1000)
        se.append((t2 - t1) * 1000)
    got = index.docid_pairs(index.search(queries[:5], 10))
    if getattr(index, "_tombstones", None) and kind.split(":")[0] != "hnsw":
        index.purge_tombstones()
        assert index.docid_pairs(index.search(queries[:5], 10)) == got, "tombstone filtering != removal"
    row = {"code": label, "kind": kind, "docs": n, "upserts": upserts,
           "upsert_ms_p50": float(np.percentile(up, 50)), "upsert_ms_p95": float(np.percentile(up, 95)),
           "search_after_write_ms_p50": float(np.percentile(se, 50))}
    row["idle_search_ms_p50"] = p50_ms(lambda j: index.search(queries[j:j + 1], 10), 50)
    logger.info("%s", row)
    return row


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--kinds", nargs="+", default=["binary", "binary:bits=2,mode=asymmetric", "pq:m=48",
                                                   "ivf-pq:nlist=64,m=48,nprobe=8", "sq8"])
    p.add_argument("--upserts", type=int, default=200)
    p.add_argument("--label", default="this checkout")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import rankstack

    logger.info("rankstack from %s", Path(rankstack.__file__).parent)
    rows = [run(kind, n, args.upserts, args.label) for kind in args.kinds for n in args.sizes]
    table = markdown(rows, ["code", "kind", "docs", "upserts", "upsert_ms_p50", "upsert_ms_p95",
                            "search_after_write_ms_p50", "idle_search_ms_p50"])
    print(table)
    save_results(args.out, {"machine": platform.machine(), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
