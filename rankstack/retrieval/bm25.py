"""BM25 over a :class:`LuceneIndex` through Pyserini's LuceneSearcher, single and multi-threaded batched."""

from __future__ import annotations

import os
from typing import Sequence

from rankstack.index.jvm import import_pyserini, lift_clause_limit
from rankstack.index.lucene import LuceneIndex
from rankstack.records import Query, Ranking
from rankstack.retrieval.base import Retriever, rankings_from_topk, validate_queries

__all__ = ["BM25Retriever", "BM25MatrixRetriever"]


class BM25Retriever(Retriever):
    """BM25 with Pyserini's BEIR defaults ``k1=0.9, b=0.4``.

    ``threads`` parallelises batched search in the JVM (default: all cores). Queries of any length are accepted
    (Lucene's 1,024-clause limit is lifted: argument-retrieval queries are whole documents). Candidates carry no
    text; a pipeline attaches it from ``documents`` (the index's document store) when a stage needs it.
    """

    kind = "bm25"

    def __init__(self, index: LuceneIndex | str | os.PathLike, *, k1: float = 0.9, b: float = 0.4,
                 threads: int | None = None):
        # a LuceneIndex, or a LiveLuceneIndex (searched on its latest commit)
        self.index = index if hasattr(index, "lucene_dir") else LuceneIndex(index)
        searcher_mod = import_pyserini("pyserini.search.lucene")
        lift_clause_limit()
        self._searcher = searcher_mod.LuceneSearcher(str(self.index.lucene_dir))
        self._searcher.set_bm25(float(k1), float(b))
        self.k1, self.b = k1, b
        self.threads = threads or os.cpu_count() or 1
        self.documents = self.index.docstore
        self.name = f"bm25(k1={k1},b={b})"

    def close(self) -> None:
        """Close the Lucene reader (searching afterwards fails)."""
        self._searcher.close()

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        if len(queries) == 1:
            hits = {queries[0].qid: self._searcher.search(queries[0].text, k)}
        else:
            hits = self._searcher.batch_search([q.text for q in queries], [q.qid for q in queries], k,
                                               threads=self.threads)
        out = []
        for q in queries:
            pairs = [(h.docid, float(h.score)) for h in hits.get(q.qid, [])]
            pairs.sort(key=lambda p: (p[1], p[0]), reverse=True)
            out.append(Ranking.from_arrays(q, [d for d, _ in pairs], [s for _, s in pairs]))
        return out


class BM25MatrixRetriever(Retriever):
    """``bm25:engine=matrix``: Lucene's BM25 computed from a :class:`~rankstack.index.bm25_matrix.BM25Matrix` of the
    same documents, returning the runs Pyserini returns (docids and float32 scores; documents tied at the cut
    may differ) at score-matrix speed. ``threads`` > 1 searches a batch's queries in parallel."""

    kind = "bm25"

    def __init__(self, matrix, *, k1: float = 0.9, b: float = 0.4, threads: int | None = None, documents=None):
        self.matrix, self.k1, self.b = matrix, k1, b
        self.threads = threads or 1
        self.documents = documents
        self.name = f"bm25(k1={k1},b={b},matrix)"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        m = self.matrix  # one BM25Matrix, or a sharded index of them (rankstack.retrieval.sharded)
        top = m.topk([m.analyze(q.text) for q in queries], k, k1=self.k1, b=self.b, threads=self.threads)
        return rankings_from_topk(queries, top, m.docids)
