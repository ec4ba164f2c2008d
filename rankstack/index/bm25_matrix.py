"""Lucene's BM25, computed outside Lucene: the same runs as Pyserini at score-matrix speed.

Documents and queries are analysed by the Lucene analyzer Pyserini indexes with (English, Porter, stopwords), and
every quantity is computed the way Lucene's ``BM25Similarity`` computes it, in the same float32 steps:

- ``idf = (float) ln(1 + (docCount - df + 0.5) / (df + 0.5))``, ``weight = (float) queryTermCount * idf``;
- document lengths kept as Lucene keeps them, lossy, in one byte (``SmallFloat.intToByte4``), and
  ``normInverse[len] = 1f / (k1 * ((1 - b) + b * byte4ToInt(len) / avgdl))`` with
  ``avgdl = (float) (sumTotalTermFreq / (double) docCount)``;
- a term's score ``weight - weight / (1f + freq * normInverse)`` (float32), summed over query terms in double and
  rounded to float32, as Lucene's disjunction scorers do;
- Lucene's top k (score descending, ties to the earlier document in index order), then what Pyserini's searcher
  does to it (:func:`rankstack.kernels.bm25_scores.tiebreak`): scores rounded to 1e-4, each tie lowered by 1e-6.

Each term's score for a query term that occurs once is precomputed into a sparse (terms x documents) matrix, so a
batch of queries is one sparse product (the float32 term scores are held in float64: a sum of a few of them is exact
in double whatever the order, so the product gives Lucene's double sums); terms repeated in a query are added
exactly per posting. Queries are analysed in pure Python when they are ASCII (:mod:`rankstack.index.english_analyzer`,
tested equal to Lucene's analyzer), by Lucene otherwise. The Lucene index stays the index of record; this engine is
checked against it when built (document frequencies and total term count must match) and tested against
Pyserini's runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, IndexCorrupt
from rankstack.index.base import check_k
from rankstack.index.english_analyzer import analyze as english_analyze
from rankstack.index.jvm import import_pyserini
from rankstack.index import bm25_matrix_io
from rankstack.kernels.bm25_scores import block_topk, lowered_scores, lucene_cut
from rankstack.records import Document, TopK

logger = logging.getLogger(__name__)

__all__ = ["BM25Matrix", "QueryAnalyzer", "lucene_length_table", "encode_length"]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count. A pool made per call starts fresh threads, and glibc gives each new
    thread's allocations their own arena, whose freshly mapped pages fault in on every batch: measured on NFCorpus,
    two threads then took 2x longer than one (27 ms against 13.5 ms for all 323 queries at depth 1000); with the
    threads kept, 8 ms."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rankstack-bm25")
        return pool


def _analyzer():
    analysis = import_pyserini("pyserini.analysis")
    return analysis.Analyzer(analysis.get_lucene_analyzer())


class QueryAnalyzer:
    """Query terms as Pyserini's Lucene analyzer makes them: in pure Python for ASCII text (tested equal to Lucene's
    on every query and ASCII document of our collections), through Lucene (started on first need) otherwise."""

    def __init__(self):
        self._lucene = None

    def __call__(self, text: str) -> list[str]:
        terms = english_analyze(text)
        if terms is None:
            if self._lucene is None:
                self._lucene = _analyzer()
            terms = list(self._lucene.analyze(text))
        return terms


def lucene_length_table() -> np.ndarray:
    """``SmallFloat.byte4ToInt(b)`` for the 256 byte values, taken from Lucene itself."""
    import_pyserini("pyserini.search.lucene")
    from jnius import autoclass

    sf = autoclass("org.apache.lucene.util.SmallFloat")
    return np.array([sf.byte4ToInt(b if b < 128 else b - 256) for b in range(256)], dtype=np.int64)


def encode_length(lengths: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Lucene's one-byte length code (``SmallFloat.intToByte4``): the largest code whose decoded length is <= the
    length (the table is increasing)."""
    return (np.searchsorted(table, np.asarray(lengths, dtype=np.int64), side="right") - 1).astype(np.uint8)


class BM25Matrix:
    """Postings (term -> documents, frequencies) with Lucene's length codes, searchable with any ``k1``/``b``."""

    KIND = "bm25-matrix"
    FORMAT_VERSION = 1

    def __init__(self, docids: list[str], terms: list[str], indptr: np.ndarray, docs: np.ndarray,
                 freqs: np.ndarray, length_codes: np.ndarray, sum_ttf: int, meta: dict | None = None):
        self.docids, self.terms = docids, terms
        self.term_id = {t: i for i, t in enumerate(terms)}
        self.indptr, self.docs, self.freqs = indptr, docs, freqs
        self.length_codes = length_codes
        self.sum_ttf = int(sum_ttf)
        # Lucene's docCount: documents with at least one term in the field
        self.doc_count = int(np.count_nonzero(np.bincount(docs, minlength=len(docids))))
        # the statistics IDF and the average length come from: these postings, or a whole collection of which
        # they are one shard (use_collection_stats)
        self.stats_doc_count, self.stats_sum_ttf = self.doc_count, self.sum_ttf
        self.meta = dict(meta or {})
        self._table = None
        self._idf_table = None
        self._prepared: dict[tuple[float, float], np.ndarray] = {}
        self._analyzer = None

    def __len__(self) -> int:
        return len(self.docids)

    # ---- building ------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, documents: Iterable[Document], *, show_progress: bool | None = None,
              meta: dict | None = None) -> BM25Matrix:
        """Analyse ``documents`` (their ``contents``, as the Lucene index holds them) into postings."""
        analyzer = _analyzer()
        docs = list(documents)
        if not docs:
            raise BadInput("cannot build a BM25 matrix from an empty corpus")
        vocab: dict[str, int] = {}
        rows, cols, vals, lengths = [], [], [], np.zeros(len(docs), dtype=np.int64)
        t0 = time.perf_counter()
        for i, d in enumerate(tqdm(docs, desc="analyse for bm25 matrix", unit=" docs",
                                   disable=not progress_enabled(show_progress))):
            counts: dict[int, int] = {}
            tokens = analyzer.analyze(d.contents)
            for tok in tokens:
                j = vocab.setdefault(tok, len(vocab))
                counts[j] = counts.get(j, 0) + 1
            lengths[i] = len(tokens)
            rows.append(np.fromiter(counts.keys(), dtype=np.int64, count=len(counts)))
            vals.append(np.fromiter(counts.values(), dtype=np.int32, count=len(counts)))
            cols.append(np.full(len(counts), i, dtype=np.int32))
        term_of = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        doc_of = np.concatenate(cols) if cols else np.zeros(0, np.int32)
        freq = np.concatenate(vals) if vals else np.zeros(0, np.int32)
        order = np.lexsort((doc_of, term_of))  # by term, then document
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.add.at(indptr, term_of + 1, 1)
        indptr = np.cumsum(indptr)
        table = lucene_length_table()
        out = cls([d.docid for d in docs], list(vocab), indptr, doc_of[order].astype(np.int32),
                  freq[order].astype(np.int32), encode_length(lengths, table), int(lengths.sum()), meta)
        out._table = table
        logger.info("analysed %d documents (%d terms) for the BM25 matrix in %.1f s", len(docs), len(vocab),
                    time.perf_counter() - t0)
        return out

    def check_against(self, lucene_index) -> None:
        """Raise :class:`IndexCorrupt` unless the Lucene index has the same documents, total term count and
        document frequencies (a sample of terms) as these postings."""
        reader_mod = import_pyserini("pyserini.index.lucene")
        reader = reader_mod.LuceneIndexReader(str(lucene_index.lucene_dir))
        stats = reader.stats()
        if stats["documents"] != len(self) or stats["total_terms"] != self.sum_ttf:
            raise IndexCorrupt(f"the BM25 matrix ({len(self)} documents, {self.sum_ttf} terms) does not match the "
                               f"Lucene index ({stats['documents']} documents, {stats['total_terms']} terms); "
                               f"rebuild it from the same corpus")
        rng = np.random.default_rng(0)
        for t in rng.choice(len(self.terms), size=min(200, len(self.terms)), replace=False):
            df, _ = reader.get_term_counts(self.terms[t], analyzer=None)
            if df != self.indptr[t + 1] - self.indptr[t]:
                raise IndexCorrupt(f"term {self.terms[t]!r}: df {self.indptr[t + 1] - self.indptr[t]} here, {df} in "
                                   f"Lucene; the analysers differ, rebuild the BM25 matrix")

    # ---- searching -----------------------------------------------------------------------------------------

    def _norm_part(self, k1: float, b: float) -> np.ndarray:
        """Per posting ``1f + freq * normInverse[len code]`` (float32, as Lucene rounds it)."""
        key = (float(k1), float(b))
        if key not in self._prepared:
            if self._table is None:
                self._table = lucene_length_table()
            f32 = np.float32
            avgdl = f32(self.stats_sum_ttf / float(self.stats_doc_count))
            cache = f32(1) / (f32(k1) * ((f32(1) - f32(b)) + f32(b) * self._table.astype(f32) / avgdl))
            inv = cache[self.length_codes[self.docs]]
            self._prepared[key] = (f32(1) + self.freqs.astype(f32) * inv).astype(f32)
        return self._prepared[key]

    def _idf(self) -> np.ndarray:
        """Every term's ``(float) ln(1 + (docCount - df + 0.5) / (df + 0.5))``, computed once."""
        if self._idf_table is None:
            self._idf_table = self._idf_of(np.diff(self.indptr), self.stats_doc_count)
        return self._idf_table

    @staticmethod
    def _idf_of(df: np.ndarray, doc_count: int) -> np.ndarray:
        df = np.asarray(df, dtype=np.float64)
        return np.log(1 + (float(doc_count) - df + 0.5) / (df + 0.5)).astype(np.float32)

    def use_collection_stats(self, df: np.ndarray, doc_count: int, sum_ttf: int) -> None:
        """Score as one shard of a larger collection: ``df`` holds each of this shard's terms' document frequency
        in the whole collection (aligned with :attr:`terms`), ``doc_count``/``sum_ttf`` the collection's document
        count and total term count. Scores then equal those of one index over the whole collection."""
        df = np.asarray(df, dtype=np.int64)
        if df.shape != (len(self.terms),) or (df < np.diff(self.indptr)).any() or doc_count < self.doc_count:
            raise IndexCorrupt("collection statistics do not cover this shard (a term's collection-wide document "
                               "frequency below the shard's own, or fewer documents); rebuild the sharded index")
        self.stats_doc_count, self.stats_sum_ttf = int(doc_count), int(sum_ttf)
        self._idf_table = self._idf_of(df, doc_count)
        self._prepared.clear()

    def analyze(self, text: str) -> list[str]:
        """The query terms Lucene's analyzer makes of ``text`` (see :class:`QueryAnalyzer`)."""
        if self._analyzer is None:
            self._analyzer = QueryAnalyzer()
        return self._analyzer(text)

    def _impacts(self, k1: float, b: float):
        """The (terms x documents) matrix of Lucene's per-term scores for a query term that occurs once,
        ``weight - weight / (1f + freq * normInverse)`` in float32, held as float64 so that a sparse product sums
        them in double as Lucene does (a sum of a few float32 values is exact in double, whatever the order)."""
        import scipy.sparse as sp

        key = ("impacts", float(k1), float(b))
        if key not in self._prepared:
            y = self._norm_part(k1, b)
            w = np.repeat(self._idf(), np.diff(self.indptr))
            imp = (w - w / y).astype(np.float32)
            self._prepared[key] = sp.csr_matrix((imp.astype(np.float64), self.docs, self.indptr),
                                                shape=(len(self.terms), len(self.docids)))
        return self._prepared[key]

    def _score_rows(self, analysed: Sequence[Sequence[str]], k1: float, b: float):
        """Every query's double-precision score sums as the rows of one sparse (queries x documents) matrix: one
        sparse product for the terms that occur once in their query, exact per-posting values for repeated
        terms (whose weight is ``count * idf``, rounded in float32)."""
        import scipy.sparse as sp

        cols: list[int] = []
        rowptr = [0]
        repeated: list[tuple[int, int, int]] = []
        for qi, terms in enumerate(analysed):
            counts: dict[int, int] = {}
            for t in terms:
                j = self.term_id.get(t)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            for j, c in counts.items():
                if c == 1:
                    cols.append(j)
                else:
                    repeated.append((qi, j, c))
            rowptr.append(len(cols))
        q = sp.csr_matrix((np.ones(len(cols)), np.asarray(cols, dtype=np.int64), np.asarray(rowptr)),
                          shape=(len(analysed), len(self.terms)))
        scores = (q @ self._impacts(k1, b)).tocsr()
        if repeated:
            y, idf = self._norm_part(k1, b), self._idf()
            rows, docs, vals = [], [], []
            for qi, j, c in repeated:
                s, e = self.indptr[j], self.indptr[j + 1]
                w = np.float32(c) * idf[j]
                rows.append(np.full(e - s, qi))
                docs.append(self.docs[s:e])
                vals.append((w - w / y[s:e]).astype(np.float32).astype(np.float64))
            scores = (scores + sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(docs))),
                                             shape=scores.shape)).tocsr()
        return scores

    def top_rows(self, terms: Sequence[str], k: int, k1: float = 0.9, b: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
        """Lucene's top ``k`` for analysed query ``terms`` before Pyserini's rounding: (rows, float32 scores),
        score descending, ties to the earlier row. A sharded search merges these across shards by (score, global
        position) and applies :func:`rankstack.kernels.bm25_scores.tiebreak` once."""
        m = self._score_rows([terms], k1, b)
        idx, scores = lucene_cut(m.indices.astype(np.int64), m.data, k)
        order = np.lexsort((idx, -scores))
        return idx[order], scores[order]

    def _docid_rank(self) -> np.ndarray:
        """Each row's position in lexicographic docid order (Anserini breaks score ties by docid)."""
        return self._docid_order()[0]

    def _docid_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(rank of each row, row of each rank) in lexicographic docid order, computed once."""
        if getattr(self, "_rank", None) is None:
            by_rank = np.array(sorted(range(len(self.docids)), key=self.docids.__getitem__), dtype=np.int64)
            rank = np.empty(len(self.docids), dtype=np.int64)
            rank[by_rank] = np.arange(len(self.docids))
            self._rank = rank, by_rank
        return self._rank

    # a batch of queries is scored into a dense (queries x documents) block when it stays this small
    DENSE_CELLS = 8_000_000

    def _dense_sums(self, part: Sequence[Sequence[str]], k1: float, b: float) -> np.ndarray:
        """(queries x documents) float64 sums of Lucene's term scores, straight from the postings in one
        ``bincount`` (a repeated query term gets its own float32 weight ``count * idf``)."""
        n = len(self.docids)
        q_of, t_of, c_of = [], [], []
        term_id = self.term_id
        for qi, terms in enumerate(part):
            counts: dict[int, int] = {}
            for t in terms:
                j = term_id.get(t)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            q_of += [qi] * len(counts)
            t_of += counts.keys()
            c_of += counts.values()
        if not t_of:
            return np.zeros((len(part), n))
        terms_ = np.asarray(t_of, dtype=np.int64)
        starts = self.indptr[terms_]
        lens = self.indptr[terms_ + 1] - starts
        ends = np.cumsum(lens)
        pos = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
        flat = self.docs[pos] + np.repeat(np.asarray(q_of, dtype=np.int64) * n, lens)
        vals = self._impacts(k1, b).data[pos]  # float64 of Lucene's float32 term scores
        counts_ = np.asarray(c_of)
        if (counts_ > 1).any():
            rep = np.repeat(counts_ > 1, lens)
            w = np.repeat((counts_.astype(np.float32) * self._idf()[terms_]).astype(np.float32), lens)[rep]
            vals[rep] = (w - w / self._norm_part(k1, b)[pos[rep]]).astype(np.float32)
        return np.bincount(flat, weights=vals, minlength=len(part) * n).reshape(len(part), n)

    def _chunk_dense(self, part: Sequence[Sequence[str]], k: int, k1: float, b: float,
                     rank: np.ndarray, by_rank: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search_arrays` for a block of queries at once (:func:`rankstack.kernels.bm25_scores.block_topk`
        over the block's dense sums)."""
        return block_topk(self._dense_sums(part, k1, b), k, rank, by_rank)

    def search_arrays(self, analysed: Sequence[Sequence[str]], k: int, *, k1: float = 0.9, b: float = 0.4,
                      threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """Pyserini's top-``k`` for analysed queries as (rows, reported scores) arrays, in Pyserini's order."""
        check_k(k)
        rank, by_rank = self._docid_order()
        block = max(1, min(256, self.DENSE_CELLS // max(1, len(self.docids))))

        def chunk(part: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
            if len(self.docids) <= self.DENSE_CELLS:
                return [r for i in range(0, len(part), block)
                        for r in self._chunk_dense(part[i:i + block], k, k1, b, rank, by_rank)]
            m = self._score_rows(part, k1, b)  # very large collections: one sparse row at a time
            out = []
            for qi in range(len(part)):
                s, e = m.indptr[qi], m.indptr[qi + 1]
                idx, scores = lucene_cut(m.indices[s:e], m.data[s:e], k)
                order = np.lexsort((rank[idx], -scores))  # Anserini: score descending, ties by docid
                out.append((idx[order], lowered_scores(scores[order])))
            return out

        if threads <= 1 or len(analysed) < 2:
            return chunk(analysed)
        size = -(-len(analysed) // threads)
        parts = _pool(threads).map(chunk, [analysed[i:i + size] for i in range(0, len(analysed), size)])
        return [r for part in parts for r in part]

    def topk(self, analysed: Sequence[Sequence[str]], k: int, *, k1: float = 0.9, b: float = 0.4,
             threads: int = 1) -> TopK:
        """:meth:`search_arrays` as a :class:`TopK` (rows, Pyserini's scores; ``-1`` pads a query with fewer hits):
        the surface every retrieval kind's index has, so a sharded index of matrices stands in for one."""
        res = self.search_arrays(analysed, k, k1=k1, b=b, threads=threads)
        width = min(k, len(self.docids))
        scores = np.full((len(res), width), -np.inf, np.float32)
        ids = np.full((len(res), width), -1, np.int64)
        for i, (rows, sc) in enumerate(res):
            scores[i, :len(rows)], ids[i, :len(rows)] = sc, rows
        return TopK(scores=scores, ids=ids)

    def search(self, queries: Sequence[str], k: int, *, k1: float = 0.9, b: float = 0.4,
               threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` (docid, score) per query text, Pyserini's scores; ``threads`` > 1 splits the batch."""
        check_k(k)
        res = self.search_arrays([self.analyze(q) for q in queries], k, k1=k1, b=b, threads=threads)
        return [list(zip([self.docids[i] for i in idx.tolist()], scores.tolist())) for idx, scores in res]

    # ---- persistence: rankstack.index.bm25_matrix_io -----------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: postings, Lucene's length table (searching needs no JVM), terms, docids, params."""
        if self._table is None:
            self._table = lucene_length_table()
        return bm25_matrix_io.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BM25Matrix:
        return bm25_matrix_io.load(cls, path)
