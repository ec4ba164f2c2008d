"""BM25 engines side by side at depth 1000 on SciFact and NFCorpus test queries: Pyserini (Lucene), RankStack's
Lucene-exact matrix engine (`bm25:engine=matrix`), the default `bm25` through the retriever API (rankings out), and
bm25s, single-threaded and batched, with nDCG@10, the share of queries whose run equals Pyserini's (ties at the cut
aside), and every row's QPS as a multiple of bm25s's `retrieve` (arrays out) in the same run. Times include query
analysis/tokenization.

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


def bench(data: Path, name: str, root: Path, repeat: int) -> list[dict]:
    """Two levels, each engine timed the same way: ``arrays`` (text in, top-k document rows and scores out: what
    bm25s's ``retrieve`` returns) and ``rankings`` (the same turned into RankStack :class:`Ranking` objects, the
    retriever API). Times are the best of ``repeat`` passes over all test queries (batched: one call; single: one
    call per query). Every time includes query analysis/tokenization."""
    import bm25s

    ds = load_beir(data / name)
    queries = list(ds.queries.values())
    texts = [q.text for q in queries]
    ws = DatasetWorkspace(ds, root)
    rows = []

    def best(fn):
        out, secs = timed(fn)
        for _ in range(repeat - 1):
            secs = min(secs, timed(fn)[1])
        return out, secs

    def row(engine, level, threads, batch_fn, single_fn, rankings):
        _, secs = best(batch_fn)
        _, s1 = best(single_fn)
        rows.append({"dataset": name, "engine": engine, "level": level, "threads": threads,
                     "qps_batched": len(queries) / secs, "qps_single": len(queries) / s1,
                     "nDCG@10": evaluate(Run.from_rankings(rankings), ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                     "runs_equal_pyserini": sum(same(a, b) for a, b in zip(rankings, ref)) / len(queries)})

    ref = None
    for threads in (1, 2):
        r = ws.retriever(f"bm25:engine=lucene,threads={threads}")
        r.retrieve(queries[:5], K)  # warm
        out = r.retrieve(queries, K)
        ref = ref or out
        row("pyserini (Lucene)", "rankings", threads, lambda: r.retrieve(queries, K),
            lambda: [r.retrieve([q], K) for q in queries], out)
    for threads in (1, 2):
        r = ws.retriever(f"bm25:engine=matrix,threads={threads}")
        m = r.matrix
        r.retrieve(queries, K)  # warm: impact matrix, docid order, and Lucene's analyzer for non-ASCII queries
        out = r.retrieve(queries, K)
        row("rankstack matrix", "arrays", threads,
            lambda: m.search_arrays([m.analyze(t) for t in texts], K, threads=threads),
            lambda: [m.search_arrays([m.analyze(t)], K) for t in texts], out)
        row("rankstack matrix", "rankings", threads, lambda: r.retrieve(queries, K),
            lambda: [r.retrieve([q], K) for q in queries], out)
        # the default: `bm25` (engine=auto takes the matrix over an index that does not change), through the
        # retriever API a user calls, rankings out
        d = ws.retriever("bm25" if threads == 1 else f"bm25:threads={threads}")
        assert type(d).__name__ == "BM25MatrixRetriever"
        out = d.retrieve(queries, K)
        row("rankstack bm25 (default)", "retriever API", threads, lambda: d.retrieve(queries, K),
            lambda: [d.retrieve([q], K) for q in queries], out)
    docs = list(ds.corpus.values())
    ids = [d.docid for d in docs]
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize([d.contents for d in docs], stopwords="en", show_progress=False),
                    show_progress=False)

    def bm25s_arrays(batch, threads):
        toks = bm25s.tokenize(batch, stopwords="en", show_progress=False)
        return retriever.retrieve(toks, k=min(K, len(ids)), n_threads=threads, show_progress=False)

    def bm25s_rankings(qs, threads):
        res, scores = bm25s_arrays([q.text for q in qs], threads)
        return [Ranking(query=q, candidates=Candidate.many([ids[i] for i in ri.tolist()], si.tolist()))
                for q, ri, si in zip(qs, res, scores)]

    for threads in (1, 2):
        out = bm25s_rankings(queries, threads)
        row("bm25s 0.2.14", "arrays", threads, lambda: bm25s_arrays(texts, threads),
            lambda: [bm25s_arrays([t], 1) for t in texts], out)
        row("bm25s 0.2.14", "rankings", threads, lambda: bm25s_rankings(queries, threads),
            lambda: [bm25s_rankings([q], 1) for q in queries], out)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/beir")
    p.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--index-root", type=Path, default=Path(DEFAULT_INDEX_ROOT))
    p.add_argument("--repeat", type=int, default=3, help="passes per measurement; the best is kept")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets:
        rows += bench(args.data, name, args.index_root, args.repeat)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, depth {K}")
    for r in rows:  # every row against bm25s's own retrieve (arrays out) at the same threads, in this run
        base = next(b for b in rows if b["dataset"] == r["dataset"] and b["engine"].startswith("bm25s")
                    and b["level"] == "arrays" and b["threads"] == r["threads"])
        r["x_bm25s_batched"] = r["qps_batched"] / base["qps_batched"]
        r["x_bm25s_single"] = r["qps_single"] / base["qps_single"]
    print(markdown(rows, ["dataset", "engine", "level", "threads", "qps_batched", "qps_single", "x_bm25s_batched",
                          "x_bm25s_single", "nDCG@10", "runs_equal_pyserini"], small=1.5))
    save_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
