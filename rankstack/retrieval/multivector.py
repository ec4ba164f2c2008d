"""Late-interaction retrievers over multi-vector indexes: exact MaxSim, MUVERA (FDE search + exact rescoring) and
PLAID-style compressed search; plus the builders that make their indexes from a corpus.

Spec strings (:mod:`rankstack.pipeline.spec`)::

    maxsim                                   exact MaxSim over the whole corpus
    muvera:k_sim=5,d_proj=16,reps=20,candidates=500,index=(hnsw)
    plaid:nbits=2,nprobe=4,candidates=1000
"""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.base import IndexSpec, VectorIndex
from rankstack.index.multivector import MultiVectorIndex, PlaidIndex
from rankstack.index.muvera import FDEConfig, document_fdes, query_fdes
from rankstack.records import Document, Query, Ranking, TopK
from rankstack.retrieval.base import Retriever, rankings_from_topk, validate_queries
from rankstack.retrieval.token_encoders import TokenEncoder

logger = logging.getLogger(__name__)

__all__ = ["MaxSimRetriever", "MuveraRetriever", "PlaidRetriever", "build_token_index", "build_fde_index"]


def build_token_index(encoder: TokenEncoder, documents: Sequence[Document], *, meta: dict | None = None
                      ) -> MultiVectorIndex:
    """Encode ``documents`` into a new in-memory :class:`MultiVectorIndex` (``save()`` persists it)."""
    if not documents:
        raise BadInput("cannot build a multi-vector index of an empty corpus; give it some documents")
    t0 = time.perf_counter()
    enc = encoder.encode_documents(documents)
    secs = time.perf_counter() - t0
    info = {"model": encoder.model_name, "document_length": encoder.document_length, "encode_seconds": round(secs, 3),
            **(meta or {})}
    logger.info("token-encoded %d documents (%d tokens, %d truncated) in %.1f s", len(documents), len(enc.vectors),
                enc.truncated, secs)
    return MultiVectorIndex.build([d.docid for d in documents], enc, meta=info)


def build_fde_index(index: MultiVectorIndex, cfg: FDEConfig, spec: IndexSpec, *, meta: dict | None = None
                    ) -> VectorIndex:
    """MUVERA document encodings of ``index`` in a single-vector index of the kind ``spec`` names."""
    from rankstack.index.registry import build_vector_index

    index = index.compacted()
    fdes = document_fdes(index.tokens, index.offsets, cfg)
    return build_vector_index(spec, index.docids, fdes, meta={"fde": cfg.label(), **(meta or {})})


class _TokenRetriever(Retriever):
    def __init__(self, encoder: TokenEncoder, dim: int, documents: Mapping[str, Document] | None):
        if encoder.dim != dim:
            from rankstack.errors import DimensionMismatch

            raise DimensionMismatch(f"token encoder {encoder.model_name!r} makes {encoder.dim}-d vectors but the index "
                                    f"holds {dim}-d ones; use the model the index was built with")
        self.encoder = encoder
        self.documents = documents

    def _encode(self, queries: Sequence[Query], k: int) -> list[np.ndarray]:
        validate_queries(queries, k)
        return self.encoder.encode_queries([q.text for q in queries]) if queries else []


class MaxSimRetriever(_TokenRetriever):
    """Exact late interaction over every document of a :class:`MultiVectorIndex`."""

    kind = "maxsim"

    def __init__(self, encoder: TokenEncoder, index: MultiVectorIndex, *,
                 documents: Mapping[str, Document] | None = None):
        super().__init__(encoder, index.dim, documents)
        self.index = index
        self.name = f"maxsim({encoder.model_name.split('/')[-1]})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        q = self._encode(queries, k)
        if not q:
            return []
        return rankings_from_topk(queries, self.index.topk(q, k), self.index.row_docids)


class MuveraRetriever(_TokenRetriever):
    """MUVERA: search ``fde_index`` (any single-vector index of document FDEs) for ``candidates`` documents per
    query, then rescore them with exact MaxSim (``candidates=0``: return the FDE ranking itself)."""

    kind = "muvera"

    def __init__(self, encoder: TokenEncoder, index: MultiVectorIndex, fde_index: VectorIndex, cfg: FDEConfig, *,
                 candidates: int = 1000, search_params: Mapping | None = None,
                 documents: Mapping[str, Document] | None = None):
        super().__init__(encoder, index.dim, documents)
        if candidates < 0:
            raise BadInput(f"muvera: candidates must be >= 0 (0: no rescoring), got {candidates}")
        if fde_index.dim != cfg.dim(index.dim):
            raise BadInput(f"the FDE index holds {fde_index.dim}-d vectors but {cfg.label()} makes "
                           f"{cfg.dim(index.dim)}-d ones; rebuild it with these parameters")
        self.index, self.fde_index, self.cfg = index, fde_index, cfg
        self.candidates = candidates
        self.search_params = dict(search_params or {})
        self.name = f"muvera({cfg.label()},{fde_index.spec},c={candidates})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        q = self._encode(queries, k)
        if not q:
            return []
        fetch = max(k, self.candidates)
        pairs = self.fde_index.docid_pairs(self.fde_index.search(query_fdes(q, self.cfg), fetch, **self.search_params))
        if self.candidates == 0:
            return [Ranking.from_arrays(qq, [d for d, _ in ps[:k]], [s for _, s in ps[:k]])
                    for qq, ps in zip(queries, pairs)]
        width = max(1, max(len(ps) for ps in pairs))
        rows = np.full((len(q), width), -1, np.int64)
        for i, ps in enumerate(pairs):
            rows[i, :len(ps)] = self.index.rows([d for d, _ in ps])
        scores = self.index.score(q, rows)
        order = np.lexsort((rows, -scores), axis=1)[:, :k]
        top = TopK(scores=np.take_along_axis(scores, order, 1), ids=np.take_along_axis(rows, order, 1))
        return rankings_from_topk(queries, top, self.index.row_docids)


class PlaidRetriever(_TokenRetriever):
    """PLAID-style search over a :class:`PlaidIndex`: centroid postings, centroid interaction, then exact MaxSim
    on the ``candidates`` best documents, decompressed."""

    kind = "plaid"

    def __init__(self, encoder: TokenEncoder, index: PlaidIndex, *, nprobe: int = 4, candidates: int = 1000,
                 documents: Mapping[str, Document] | None = None):
        super().__init__(encoder, index.dim, documents)
        if nprobe <= 0 or candidates <= 0:
            raise BadInput(f"plaid: nprobe and candidates must be positive, got {nprobe} and {candidates}")
        self.index, self.nprobe, self.candidates = index, nprobe, candidates
        self.last_stats: dict = {}
        self.name = f"plaid(nbits={index.nbits},nprobe={nprobe},c={candidates})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        q = self._encode(queries, k)
        if not q:
            return []
        top = self.index.topk(q, k, nprobe=self.nprobe, candidates=self.candidates)
        self.last_stats = dict(getattr(self.index, "last_stats", {}))
        return rankings_from_topk(queries, top, self.index.row_docids)
