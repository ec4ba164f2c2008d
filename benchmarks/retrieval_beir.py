"""Index and evaluate BM25, dense and hybrid retrieval on BEIR SciFact and NFCorpus.

Prints, per dataset and retriever: index build time, document encode throughput, queries per second (batched,
and one query at a time), and nDCG@10 / R@100. Indexes are always rebuilt here so that build times are real.

    python benchmarks/retrieval_beir.py [--data ../shared/data/beir] [--datasets scifact nfcorpus] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.pipeline import DatasetWorkspace, compile_pipeline

from _table import markdown, save_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

logger = logging.getLogger("benchmarks.retrieval_beir")


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(data: Path, name: str, root: Path, single: int) -> list[dict]:
    """Each preset compiled and run by the executor (the path `rankstack eval` takes); index builds timed on
    their own first."""
    ds = load_beir(data / name)
    queries = list(ds.queries.values())
    ws = DatasetWorkspace(ds, root)
    shutil.rmtree(ws.root, ignore_errors=True)
    _, t_bm25 = _time(lambda: ws.retriever("bm25"))
    _, t_dense = _time(lambda: ws.retriever("dense"))
    rows = []
    builds = {"bm25": (t_bm25, None), "dense": (t_dense, len(ds.corpus) / t_dense), "hybrid-rrf": (None, None)}
    for label, (build_s, enc) in builds.items():
        pipe = compile_pipeline(label, ws)
        out, secs = _time(lambda: pipe.run(queries, 1000))
        _, s1 = _time(lambda: [pipe.run([q], 1000) for q in queries[:single]])
        agg = evaluate(out.run(), ds.qrels, ["nDCG@10", "R@100"]).aggregate
        rows.append({"dataset": name, "retriever": label, "docs": len(ds.corpus),
                     "index_s": build_s, "encode_docs_per_s": enc,
                     "qps_batched": len(queries) / secs, "qps_single": single / s1,
                     "nDCG@10": agg["nDCG@10"], "R@100": agg["R@100"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/beir")
    p.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.data.is_dir():
        print(f"no data at {args.data}: pass --data pointing at a folder of BEIR datasets", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="rankstack-bench-"))
    rows = []
    try:
        for name in args.datasets:
            rows += bench(args.data, name, root, args.single)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["dataset", "retriever", "docs", "index_s", "encode_docs_per_s", "qps_batched", "qps_single",
            "nDCG@10", "R@100"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(markdown(rows, cols, small=1.0))
    save_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
