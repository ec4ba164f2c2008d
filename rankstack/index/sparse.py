"""Learned-sparse impact index: documents as integer term impacts over an encoder's vocabulary.

:class:`SparseIndex` is the store of record for sparse vectors (add, upsert and remove by docid, atomic save/load)
and the exact ``scipy`` engine: a CSR matrix of quantized impacts multiplied by the query's. Weights are quantized
the way Pyserini's impact indexes expect (``round(weight * scale)`` as integers, ``scale`` recorded in the index),
so the same impacts indexed by Lucene (:mod:`rankstack.index.lucene_impact`) give the same integer scores.
Two more engines read the impacts: Lucene's impact searcher (``engine=lucene``) and Seismic (``engine=seismic``,
approximate), see :mod:`rankstack.retrieval.sparse`.

The index also counts, per vocabulary id, how many live documents contain it in their text (not in their
expansion): the IDF table of inference-free queries, kept correct as documents come and go.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput, IndexCorrupt, UnknownDocid
from rankstack.index.base import sort_pairs
from rankstack.index import sparse_io, sparse_scipy
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["SparseIndex", "quantize", "idf_impacts", "idf_table", "DEFAULT_SCALE"]

DEFAULT_SCALE = 100.0


def quantize(weights, scale: float):
    """Float CSR -> int32 CSR of ``round(w * scale)``, zeros dropped (what Pyserini's impact indexes store)."""
    import scipy.sparse as sp

    m = sp.csr_matrix(weights, dtype=np.float32, copy=True)
    if m.nnz and (m.data < 0).any():
        raise BadInput("sparse weights must be non-negative (SPLADE weights are log-saturated ReLUs)")
    m.data = np.rint(m.data * np.float32(scale))
    m = m.astype(np.int32)
    m.eliminate_zeros()
    m.sort_indices()
    return m


def idf_table(df: np.ndarray, n: int) -> np.ndarray:
    """BM25-style IDF of every vocabulary id: ln(1 + (N - df + .5) / (df + .5))."""
    return np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)


def idf_impacts(token_ids: Sequence[np.ndarray], df: np.ndarray, n: int, scale: float):
    """Inference-free query impacts: each distinct token weighted by its IDF under document frequencies ``df`` of
    ``n`` documents (quantized with ``scale``); tokens no document contains are dropped. A sharded collection passes
    its collection-wide ``df``, so every shard sees the query one index would."""
    import scipy.sparse as sp

    idf = idf_table(df, n)
    dim = df.size
    rows, cols, vals = [], [], []
    for r, ids in enumerate(token_ids):
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < dim)]
        ids = ids[df[ids] > 0]
        rows.append(np.full(ids.size, r))
        cols.append(ids)
        vals.append(idf[ids])
    m = sp.csr_matrix((np.concatenate(vals) if vals else [], (np.concatenate(rows) if rows else [],
                                                             np.concatenate(cols) if cols else [])),
                      shape=(len(token_ids), dim), dtype=np.float32)
    return quantize(m, scale)


_HASH_MOD = 1 << 128


def _row_hash(docid: str, indices: np.ndarray, data: np.ndarray) -> int:
    """A 128-bit hash of one document's docid and nonzero impacts, whatever the order of its entries."""
    import hashlib

    keep = data != 0
    idx, val = indices[keep].astype("<i4"), data[keep].astype("<i4")
    order = np.argsort(idx, kind="stable")
    h = hashlib.blake2b(docid.encode() + b"\0", digest_size=16)
    h.update(idx[order].tobytes())
    h.update(val[order].tobytes())
    return int.from_bytes(h.digest(), "little")


class _Rows:
    """A CSR matrix that grows by appended rows in O(their entries) amortised (data, column and row-pointer buffers
    grown by doubling; scipy's ``vstack`` copies every earlier row). :meth:`matrix` is a scipy CSR view, no copy."""

    def __init__(self, m):
        n, nnz = m.shape[0], m.nnz
        self.cols, self.dtype = m.shape[1], m.dtype
        self.data = np.empty(max(nnz, 1024), m.dtype)
        self.indices = np.empty(max(nnz, 1024), np.int32)
        self.indptr = np.empty(max(n + 1, 64), np.int64)
        self.data[:nnz], self.indices[:nnz], self.indptr[:n + 1] = m.data, m.indices, m.indptr
        self.n, self.nnz = n, nnz
        self._view = None

    def append(self, m) -> None:
        n, nnz = m.shape[0], m.nnz
        if self.nnz + nnz > self.data.size:
            size = max(2 * self.data.size, self.nnz + nnz)
            self.data = np.concatenate([self.data[:self.nnz], np.empty(size - self.nnz, self.dtype)])
            self.indices = np.concatenate([self.indices[:self.nnz], np.empty(size - self.nnz, np.int32)])
        if self.n + n + 1 > self.indptr.size:
            size = max(2 * self.indptr.size, self.n + n + 1)
            self.indptr = np.concatenate([self.indptr[:self.n + 1], np.empty(size - self.n - 1, np.int64)])
        self.data[self.nnz:self.nnz + nnz] = m.data
        self.indices[self.nnz:self.nnz + nnz] = m.indices
        self.indptr[self.n + 1:self.n + n + 1] = self.nnz + m.indptr[1:]
        self.n, self.nnz, self._view = self.n + n, self.nnz + nnz, None

    def matrix(self):
        import scipy.sparse as sp

        if self._view is None:
            self._view = sp.csr_matrix((self.data[:self.nnz], self.indices[:self.nnz], self.indptr[:self.n + 1]),
                                       shape=(self.n, self.cols), copy=False)
        return self._view


class SparseIndex:
    """Integer impacts ``[n, vocab]`` with string docids, tombstoned removals, and document-frequency counts.

    ``vocab``: the encoder's token list (column ``i`` is ``vocab[i]``); ``fingerprint`` names it, so queries from
    an encoder with another vocabulary are refused. ``meta`` records the model and how the weights were made.
    """

    KIND = "sparse-impact"
    FORMAT_VERSION = 1

    def __init__(self, vocab: Sequence[str], *, fingerprint: str, scale: float = DEFAULT_SCALE,
                 meta: dict | None = None):
        import scipy.sparse as sp

        if not vocab:
            raise BadInput("a sparse index needs the encoder's vocabulary")
        if not scale > 0:
            raise BadInput(f"scale must be positive, got {scale}")
        self.vocab = list(vocab)
        self.fingerprint = fingerprint
        self.scale = float(scale)
        self.meta = dict(meta or {})
        self._impacts = sp.csr_matrix((0, self.dim), dtype=np.int32)
        self._tokens = sp.csr_matrix((0, self.dim), dtype=np.uint8)
        self._dead = np.zeros(64, bool)  # per row (buffer grown by doubling): True for a tombstone
        self._rows: list[str | None] = []  # None: a removed row (tombstone) until compaction
        self._row: dict[str, int] = {}
        self._df = np.zeros(self.dim, dtype=np.int64)
        self.version = 0  # bumps on every write; engines built from the impacts compare it
        # which documents each write touched, for engines that follow writes instead of rebuilding (the Lucene
        # impact index): (version after the write, docids), the oldest dropped past JOURNAL_DOCS docids; changes
        # after version ``_journal_floor`` are all known
        self._journal: deque[tuple[int, tuple[str, ...]]] = deque()
        self._journal_docs = 0
        self._journal_floor = 0
        self._hashes: dict[str, int] | None = None  # per live document, for signature(); made at its first call
        self._hash_sum = 0
        self._signed: dict[str, int] = {}  # signatures handed out -> the latest version they describe
        self._collection: tuple[np.ndarray, int] | None = None  # a shard's collection-wide (df, documents)

    # Writes append rows and tombstone old ones in O(the documents written): the impacts and the text tokens are
    # growable CSR buffers, and search keeps the transposed impacts of the rows it last indexed in full plus the
    # rows added since (transposed at each search while they stay under an eighth of the index), so neither an
    # upsert nor the search after it copies the collection.
    @property
    def _impacts(self):
        return self._impacts_rows.matrix()

    @_impacts.setter
    def _impacts(self, m) -> None:
        self._impacts_rows = _Rows(m.tocsr().astype(np.int32))

    @property
    def _tokens(self):
        return self._tokens_rows.matrix()

    @_tokens.setter
    def _tokens(self, m) -> None:
        self._tokens_rows = _Rows(m.tocsr().astype(np.uint8))
        self._epoch = getattr(self, "_epoch", 0) + 1  # row numbers were reassigned (build, load, compaction)

    def _mark_rows(self) -> None:
        """Grow the tombstone mask to cover every row (after appends)."""
        n = len(self._rows)
        if self._dead.size < n:
            self._dead = np.concatenate([self._dead, np.zeros(max(n, 2 * self._dead.size) - self._dead.size, bool)])

    # ---- shape ---------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, docid: str) -> bool:
        return docid in self._row

    @property
    def docids(self) -> list[str]:
        return [d for d in self._rows if d is not None]

    @property
    def tombstones(self) -> int:
        """Removed rows still held (dropped by the next compaction or save)."""
        return len(self._rows) - len(self._row)

    def check_encoder(self, encoder) -> None:
        if encoder.fingerprint != self.fingerprint:
            raise BadInput(f"vocabulary mismatch: the index was built with {self.meta.get('model')!r} (vocabulary "
                           f"{self.fingerprint}, {self.dim} tokens) but the encoder {encoder.model_name!r} has "
                           f"vocabulary {encoder.fingerprint} ({encoder.dim} tokens); query with the model the index "
                           f"was built with, or rebuild the index")

    # ---- writes --------------------------------------------------------------------------------------------

    def add(self, docids: Sequence[str], weights, tokens=None, *, upsert: bool = False) -> None:
        """Add documents: ``weights`` float CSR ``[n, vocab]`` (quantized here), ``tokens`` the binary CSR of the
        vocabulary ids in each document's text (for IDF; None: no IDF contribution)."""
        import scipy.sparse as sp

        docids = [str(d) for d in docids]
        w = sp.csr_matrix(weights)
        if w.shape[1] != self.dim:
            raise BadInput(f"sparse vectors have {w.shape[1]} columns but this index's vocabulary has {self.dim}; "
                           f"encode with the model the index was built with")
        if w.shape[0] != len(docids):
            raise BadInput(f"{len(docids)} docids for {w.shape[0]} vectors")
        if len(set(docids)) != len(docids):
            raise BadInput("duplicate docids in one add() call")
        t = sp.csr_matrix((len(docids), self.dim), dtype=np.uint8) if tokens is None else sp.csr_matrix(tokens)
        if t.shape != w.shape:
            raise BadInput(f"token matrix {t.shape} does not match the weights {w.shape}")
        existing = [d for d in docids if d in self._row]
        if existing and not upsert:
            raise BadInput(f"docids already in the index: {existing[:5]}; pass upsert=True to replace them")
        if existing:
            self.remove(existing)
        q = quantize(w, self.scale)
        t = t.astype(np.uint8)
        t.data[:] = 1
        t.eliminate_zeros()
        self._impacts_rows.append(q.astype(np.int32))
        self._tokens_rows.append(t)
        for d in docids:
            self._row[d] = len(self._rows)
            self._rows.append(d)
        self._mark_rows()
        np.add.at(self._df, t.indices, 1)
        if self._hashes is not None:
            q = q.tocsr()
            for i, d in enumerate(docids):
                s, e = q.indptr[i], q.indptr[i + 1]
                self._hashes[d] = h = _row_hash(d, q.indices[s:e], q.data[s:e])
                self._hash_sum = (self._hash_sum + h) % _HASH_MOD
        self.version += 1
        self._note(docids)

    def remove(self, docids: Sequence[str]) -> None:
        docids = list(dict.fromkeys(str(d) for d in docids))
        missing = [d for d in docids if d not in self._row]
        if missing:
            raise UnknownDocid(f"unknown docids {missing[:5]}: not in this index")
        for d in docids:
            r = self._row.pop(d)
            self._rows[r] = None
            self._dead[r] = True
            t = self._tokens
            np.subtract.at(self._df, t.indices[t.indptr[r]:t.indptr[r + 1]], 1)
            if self._hashes is not None:
                self._hash_sum = (self._hash_sum - self._hashes.pop(d)) % _HASH_MOD
        self.version += 1
        self._note(docids)
        if len(self._rows) > 64 and len(self._row) < 0.75 * len(self._rows):
            self.compact()

    def compact(self) -> None:
        """Drop tombstoned rows (keeps the order of the others)."""
        if len(self._row) == len(self._rows):
            return
        keep = np.array([i for i, d in enumerate(self._rows) if d is not None], dtype=np.int64)
        self.version += 1  # row numbers change: cached search matrices and engines are stale
        self._impacts = self._impacts[keep]
        self._tokens = self._tokens[keep]
        self._rows = [self._rows[i] for i in keep]
        self._row = {d: i for i, d in enumerate(self._rows)}
        self._dead = np.zeros(max(64, len(self._rows)), bool)

    # ---- reads ---------------------------------------------------------------------------------------------

    def impacts(self):
        """Live documents' integer impacts (CSR ``[len, vocab]``) in :attr:`docids` order."""
        self.compact()
        return self._impacts

    # ---- change tracking ----------------------------------------------------------------------------------

    JOURNAL_DOCS = 1 << 16  # docids the write journal keeps; an engine further behind is rebuilt

    def _note(self, docids: Sequence[str]) -> None:
        self._journal.append((self.version, tuple(docids)))
        self._journal_docs += len(docids)
        while self._journal_docs > self.JOURNAL_DOCS:
            self._journal_floor, dropped = self._journal.popleft()
            self._journal_docs -= len(dropped)

    def changed_since(self, version: int) -> set[str] | None:
        """The docids added, replaced or removed by the writes after ``version`` (an earlier :attr:`version` of
        this object); None when the journal no longer reaches back that far (then rebuild whatever follows)."""
        if not self._journal_floor <= version <= self.version:
            return None
        return {d for v, ds in self._journal if v > version for d in ds}

    def signature(self) -> str:
        """A hash of the live documents (docid and impacts, in any order): engines built from this index (a
        Lucene impact index on disk) record it, so a reopened engine is used only if it holds these documents.
        It is an order-free sum of per-document hashes, computed over the index once and then kept up to date by
        each write in O(the documents written), so checking it after a write does not cost a pass over the
        collection."""
        import hashlib

        if self._hashes is None:  # built aside, then published: two searches may get here at once
            m = self._impacts
            hashes = {}
            for d, r in self._row.items():
                s, e = m.indptr[r], m.indptr[r + 1]
                hashes[d] = _row_hash(d, m.indices[s:e], m.data[s:e])
            self._hash_sum, self._hashes = sum(hashes.values()) % _HASH_MOD, hashes
        key = f"{self.fingerprint}:{self.scale}:{len(self)}:{self._hash_sum:032x}"
        sig = hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
        self._signed.pop(sig, None)
        self._signed[sig] = self.version
        while len(self._signed) > 256:
            del self._signed[next(iter(self._signed))]
        return sig

    def version_of(self, signature: str | None) -> int | None:
        """The latest :attr:`version` of this object that :meth:`signature` described as ``signature`` (one of
        the last 256 it handed out); None for a signature it did not make: an engine recording it holds other
        documents."""
        return self._signed.get(signature) if signature else None

    def snapshot(self):
        """``(docids, impacts)``: the live documents and a copy of their integer impacts (CSR ``[len, vocab]``),
        taken without compacting, so a search holding only a read lock may call it; an engine built from the copy
        in the background does not see later writes (compare :attr:`version` and :meth:`changed_since`)."""
        keep = np.flatnonzero(~self._dead[:len(self._rows)])
        return [self._rows[i] for i in keep], self._impacts[keep]

    def rows_of(self, docids: Sequence[str]):
        """The integer impacts of live ``docids`` (CSR ``[len(docids), vocab]``, in that order)."""
        missing = [d for d in docids if d not in self._row]
        if missing:
            raise UnknownDocid(f"unknown docids {missing[:5]}: not in this index")
        return self._impacts[np.asarray([self._row[d] for d in docids], dtype=np.int64)]

    def doc_vector(self, docid: str) -> dict[str, int]:
        if docid not in self._row:
            raise UnknownDocid(f"unknown docid {docid!r}: not in this index")
        r = self._row[docid]
        m = self._impacts
        s, e = m.indptr[r], m.indptr[r + 1]
        return {self.vocab[i]: int(v) for i, v in zip(m.indices[s:e], m.data[s:e])}

    @property
    def document_frequencies(self) -> np.ndarray:
        """Per vocabulary id, how many live documents contain it in their text."""
        return self._df.copy()

    def idf(self) -> np.ndarray:
        """BM25-style IDF of every vocabulary id over the live documents' text: ln(1 + (N - df + .5) / (df + .5))."""
        return idf_table(self._df, len(self))

    def quantize_queries(self, weights):
        import scipy.sparse as sp

        w = sp.csr_matrix(weights)
        if w.shape[1] != self.dim:
            raise BadInput(f"query vectors have {w.shape[1]} columns but this index's vocabulary has {self.dim}; "
                           f"encode with the model the index was built with")
        return quantize(w, self.scale)

    def idf_queries(self, token_ids: Sequence[np.ndarray]):
        """Inference-free query impacts (see :func:`idf_impacts`) under this index's document frequencies (or the
        collection's, for a shard: :meth:`use_collection_stats`)."""
        df, n = self._collection if self._collection is not None else (self._df, len(self))
        return idf_impacts(token_ids, df, n, self.scale)

    def use_collection_stats(self, df: np.ndarray, doc_count: int) -> None:
        """Weight inference-free queries as one index over a whole collection of which this is one shard would:
        ``df`` is each vocabulary id's document frequency in the collection, ``doc_count`` its size."""
        df = np.asarray(df, dtype=np.int64)
        if df.shape != self._df.shape or (df < self._df).any() or doc_count < len(self):
            raise IndexCorrupt("collection statistics do not cover this shard (a document frequency below the "
                               "shard's own, or fewer documents); rebuild the sharded index")
        self._collection = (df, int(doc_count))

    def search(self, queries, k: int, *, batch: int = 64) -> TopK:
        """Exact top-``k`` by integer dot product (the scipy engine, :mod:`rankstack.index.sparse_scipy`).
        ``queries``: int CSR ``[nq, vocab]`` (see :meth:`quantize_queries`). Documents sharing no term with a query
        are not returned (as in Lucene)."""
        return sparse_scipy.search(self, queries, k, batch=batch)

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        return [sort_pairs([(self._rows[i], float(s)) for s, i in zip(srow, irow) if i >= 0])
                for srow, irow in zip(topk.scores, topk.ids)]

    def bytes_per_doc(self) -> float:
        return sparse_io.bytes_per_doc(self)

    # ---- persistence: rankstack.index.sparse_io ---------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a failure leaves any previous index at ``path`` intact)."""
        return sparse_io.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseIndex:
        return sparse_io.load(cls, path)
