"""BM25 engines side by side at depth 1000 on SciFact and NFCorpus test queries: Pyserini (Lucene), RankStack's
Lucene-exact matrix engine (`bm25:engine=matrix`) and bm25s, single-threaded and batched, with nDCG@10 and the
number of queries whose run equals Pyserini's (ties at the cut aside). Times include query analysis/tokenization.

    pip install -e '.[bench]'    # bm25s
    python benchmarks/bm25_engines.py [--datasets scifact nfcorpus] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

from rankstack.eval.datasets import load_beir
from rankstack.eval.metrics import evaluate
from rankstack.pipeline import DatasetWorkspace
from rankstack.pipeline.workspace import DEFAULT_INDEX_ROOT
from rankstack.records import Candidate, Ranking, Run

from _table import markdown, save_results  # noqa: E402

K = 1000


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def same(a: Ranking, b: Ranking) -> bool:
    x, y = [(c.docid, c.score) for c in a.candidates], [(c.docid, c.score) for c in b.candidates]
    if sorted(s for _, s in x) != sorted(s for _, s in y):
        return False
    cut = min((s for _, s in y), default=0.0) + 1e-4
    return {p for p in x if p[1] > cut} == {p for p in y if p[1] > cut}


def bench(data: Path, name: str, root: Path) -> list[dict]:
    import bm25s

    ds = load_beir(data / name)
    queries = list(ds.queries.values())
    ws = DatasetWorkspace(ds, root)
    rows = []
    ref = None
    for label, spec, threads in (("pyserini (Lucene)", "bm25:threads=1", 1), ("pyserini (Lucene)", "bm25:threads=2", 2),
                                 ("rankstack matrix", "bm25:engine=matrix,threads=1", 1),
                                 ("rankstack matrix", "bm25:engine=matrix,threads=2", 2)):
        r = ws.retriever(spec)
        r.retrieve(queries[:5], K)  # warm
        out, secs = timed(lambda: r.retrieve(queries, K))
        _, s1 = timed(lambda: [r.retrieve([q], K) for q in queries])
        ref = ref or out
        rows.append({"dataset": name, "engine": label, "threads": threads, "qps_batched": len(queries) / secs,
                     "qps_single": len(queries) / s1,
                     "nDCG@10": evaluate(Run.from_rankings(out), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                     "runs_equal_pyserini": sum(same(a, b) for a, b in zip(out, ref)) / len(queries)})
    docs = list(ds.corpus.values())
    ids = [d.docid for d in docs]
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize([d.contents for d in docs], stopwords="en", show_progress=False),
                    show_progress=False)
    for threads in (1, 2):
        def run_batch():
            toks = bm25s.tokenize([q.text for q in queries], stopwords="en", show_progress=False)
            return retriever.retrieve(toks, k=K, n_threads=threads, show_progress=False)

        (res, scores), secs = timed(run_batch)
        _, s1 = timed(lambda: [retriever.retrieve(bm25s.tokenize([q.text], stopwords="en", show_progress=False),
                                                  k=K, show_progress=False) for q in queries])
        out = [Ranking(query=q, candidates=tuple(Candidate(docid=ids[i], score=float(s)) for i, s in zip(ri, si)))
               for q, ri, si in zip(queries, res, scores)]
        rows.append({"dataset": name, "engine": "bm25s 0.2.14", "threads": threads,
                     "qps_batched": len(queries) / secs, "qps_single": len(queries) / s1,
                     "nDCG@10": evaluate(Run.from_rankings(out), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                     "runs_equal_pyserini": sum(same(a, b) for a, b in zip(out, ref)) / len(queries)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/beir")
    p.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--index-root", type=Path, default=Path(DEFAULT_INDEX_ROOT))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets:
        rows += bench(args.data, name, args.index_root)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, depth {K}")
    print(markdown(rows, ["dataset", "engine", "threads", "qps_batched", "qps_single", "nDCG@10",
                          "runs_equal_pyserini"], small=1.5))
    save_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
