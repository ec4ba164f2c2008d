"""The scipy engine of learned-sparse retrieval: exact integer dot products of query impacts with a
:class:`~rankstack.index.sparse.SparseIndex`'s impacts (transposed once, plus the rows appended since), beside the
Lucene impact engine (:mod:`rankstack.index.lucene_impact`) and Seismic (:mod:`rankstack.retrieval.sparse`)."""

from __future__ import annotations

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.base import check_k
from rankstack.records import TopK

__all__ = ["search", "search_matrix"]


def search(self, queries, k: int, *, batch: int = 64) -> TopK:
    """Exact top-``k`` by integer dot product. ``queries``: int CSR ``[nq, vocab]`` (see
    :meth:`quantize_queries`). Documents sharing no term with a query are not returned (as in Lucene)."""
    import scipy.sparse as sp

    check_k(k)
    if len(self) == 0:
        raise BadInput("the index is empty; add documents before searching")
    q = sp.csr_matrix(queries)
    if q.shape[1] != self.dim:
        raise BadInput(f"query vectors have {q.shape[1]} columns but this index's vocabulary has {self.dim}")
    base, fresh, dead = search_matrix(self)
    kk = min(k, len(self._rows))
    scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((q.shape[0], k), -1, dtype=np.int64)
    for s in range(0, q.shape[0], batch):
        qb = q[s:s + batch].astype(np.int64)
        block = (qb @ base).toarray()  # exact integer sums
        if fresh is not None:
            block = np.concatenate([block, (qb @ fresh).toarray()], axis=1)
        block[:, dead] = 0
        top = np.argpartition(-block, kk - 1, axis=1)[:, :kk] if kk < block.shape[1] else \
            np.tile(np.arange(block.shape[1]), (block.shape[0], 1))
        part = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        top, part = np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)
        hit = part > 0
        scores[s:s + block.shape[0], :kk] = np.where(hit, part, -np.inf)
        ids[s:s + block.shape[0], :kk] = np.where(hit, top, -1)
    return TopK(scores=scores, ids=ids)

def search_matrix(self):
    """``(base, fresh, dead)``: the impacts transposed to ``[vocab, rows]`` (int64: exact sums) for the rows
    indexed in full at the last rebuild, the same for the rows appended since (None when there are none), and the
    tombstone mask over all rows. The base is rebuilt after a compaction or once the appended rows pass an eighth
    of it, so a search after a write transposes only what was written."""
    n = len(self._rows)
    cached = getattr(self, "_search_cache", None)
    if cached is None or cached[0] != self._epoch or n - cached[1] > max(1024, cached[1] // 8):
        cached = self._search_cache = (self._epoch, n, self._impacts.T.tocsr().astype(np.int64))
    _, n0, base = cached
    fresh = self._impacts[n0:n].T.tocsr().astype(np.int64) if n > n0 else None
    return base, fresh, self._dead[:n]
