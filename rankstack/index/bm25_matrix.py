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
  does to it (:func:`tiebreak`): scores rounded to 1e-4, each tie lowered by 1e-6.

The per-posting part that does not depend on the query (``1f + freq * normInverse``) is precomputed, so a query
costs one vectorised pass over its terms' postings. The Lucene index stays the index of record; this engine is
checked against it when built (document frequencies and total term count must match) and tested against
Pyserini's runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from rankstack._atomic import atomic_dir, write_json
from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, IndexCorrupt
from rankstack.index.base import check_k, read_params
from rankstack.index.jvm import import_pyserini
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["BM25Matrix", "lucene_length_table", "encode_length", "tiebreak"]


def tiebreak(pairs: list[tuple[str, np.float32]]) -> list[tuple[str, float]]:
    """The scores Pyserini's searcher reports for Lucene's top k: Anserini orders hits by score, ties by docid
    (lexicographic), rounds each score to 1e-4 (in double) and lowers a score within 1e-4 of the previous (already
    lowered) one by 1e-6 per tie, in float32, so that the scores sort in rank order. Matched against Pyserini's
    runs on every SciFact and NFCorpus test query (tests/index/test_bm25_matrix.py)."""
    f32 = np.float32
    if not pairs:
        return []
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i][1], pairs[i][0]))
    raw = np.array([pairs[i][1] for i in order], dtype=np.float32)
    rounded = (np.floor(raw.astype(np.float64) * 1e4 + 0.5) / 1e4).astype(np.float32).tolist()
    lim = float(f32(1e-4))
    out, dup, prev = [], 0, 0.0
    for i, cur in zip(order, rounded):
        # float32 values in Python floats: a difference of two nearby float32 values is exact (Sterbenz), so the
        # comparison matches Java's float arithmetic; only a tie needs a float32 operation
        if prev == 0.0 or prev - cur > lim:
            dup = 0
        else:
            dup += 1
            cur = float(f32(f32(cur) - f32(f32(1e-6) * f32(dup))))
        out.append((pairs[i][0], cur))
        prev = cur
    return out


def _analyzer():
    analysis = import_pyserini("pyserini.analysis")
    return analysis.Analyzer(analysis.get_lucene_analyzer())


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
        if self._analyzer is None:
            self._analyzer = _analyzer()
        return self._analyzer.analyze(text)

    def _one(self, terms: Sequence[str], k: int, k1: float, b: float) -> list[tuple[str, float]]:
        idx, scores = self.top_rows(terms, k, k1, b)
        return tiebreak([(self.docids[i], s) for i, s in zip(idx.tolist(), scores)])

    def top_rows(self, terms: Sequence[str], k: int, k1: float = 0.9, b: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
        """Lucene's top ``k`` for analysed query ``terms`` before Pyserini's rounding: (rows, float32 scores),
        score descending, ties to the earlier row. A sharded search merges these across shards by (score, global
        position) and applies :func:`tiebreak` once."""
        y = self._norm_part(k1, b)
        counts: dict[int, int] = {}
        for t in terms:
            j = self.term_id.get(t)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        acc = np.zeros(len(self.docids), dtype=np.float64)
        hit = np.zeros(len(self.docids), dtype=bool)
        idf = self._idf()
        for j, c in counts.items():
            s, e = self.indptr[j], self.indptr[j + 1]
            w = np.float32(c) * idf[j]
            d = self.docs[s:e]
            acc[d] += (w - w / y[s:e]).astype(np.float64)
            hit[d] = True
        idx = np.flatnonzero(hit)
        scores = acc[idx].astype(np.float32)
        if idx.size > k:  # Lucene's top k: score descending, ties to the earlier document
            kth = np.partition(scores, idx.size - k)[idx.size - k]
            keep = scores > kth
            tied = np.flatnonzero(scores == kth)[: k - int(keep.sum())]
            keep[tied] = True
            idx, scores = idx[keep], scores[keep]
        order = np.lexsort((idx, -scores))
        return idx[order], scores[order]

    def search(self, queries: Sequence[str], k: int, *, k1: float = 0.9, b: float = 0.4,
               threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` (docid, score) per query text, Lucene's scores; ``threads`` > 1 runs queries in parallel."""
        check_k(k)
        analysed = [self.analyze(q) for q in queries]  # the JVM analyser, in this thread
        self._norm_part(k1, b)
        if threads <= 1 or len(queries) < 2:
            return [self._one(t, k, k1, b) for t in analysed]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda t: self._one(t, k, k1, b), analysed))

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_dir(path) as tmp:
            if self._table is None:
                self._table = lucene_length_table()
            # Lucene's length table travels with the postings: searching needs no JVM (shard servers have none)
            np.savez(tmp / "postings.npz", indptr=self.indptr, docs=self.docs, freqs=self.freqs,
                     length_codes=self.length_codes, length_table=self._table)
            (tmp / "terms.json").write_text(json.dumps(self.terms), encoding="utf-8")
            (tmp / "docids.json").write_text(json.dumps(self.docids), encoding="utf-8")
            write_json(tmp / "params.json", {"kind": self.KIND, "format_version": self.FORMAT_VERSION,
                                             "num_docs": len(self), "num_terms": len(self.terms),
                                             "sum_total_term_freq": self.sum_ttf, "meta": self.meta})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BM25Matrix:
        path = Path(path)
        params = read_params(path, cls.KIND, cls.FORMAT_VERSION)
        try:
            with np.load(path / "postings.npz") as z:
                arrays = {k: z[k] for k in ("indptr", "docs", "freqs", "length_codes")}
                table = z["length_table"] if "length_table" in z.files else None
            terms = json.loads((path / "terms.json").read_text(encoding="utf-8"))
            docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise IndexCorrupt(f"{path}: the BM25 matrix files are missing or corrupt ({exc}); rebuild it") from None
        if (len(docids) != params.get("num_docs") or len(terms) != params.get("num_terms")
                or arrays["indptr"].size != len(terms) + 1 or arrays["indptr"][-1] != arrays["docs"].size
                or arrays["length_codes"].size != len(docids)):
            raise IndexCorrupt(f"{path}: postings, terms and docids disagree; rebuild the BM25 matrix")
        out = cls(docids, terms, arrays["indptr"], arrays["docs"], arrays["freqs"], arrays["length_codes"],
                  params["sum_total_term_freq"], params.get("meta"))
        if table is not None:
            if table.shape != (256,):
                raise IndexCorrupt(f"{path}: the stored length table is corrupt; rebuild the BM25 matrix")
            out._table = table.astype(np.int64)
        return out
