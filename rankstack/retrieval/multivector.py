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
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.index.base import IndexSpec, VectorIndex
from rankstack.index.multivector import MultiVectorIndex, PlaidIndex
from rankstack.index.muvera import FDEConfig, document_fdes, query_fdes
from rankstack.records import Candidate, Document, Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.spec import Item
from rankstack.retrieval.token_encoders import DEFAULT_TOKEN_MODEL, TOKEN_ENCODER_OPTIONS, TokenEncoder

logger = logging.getLogger(__name__)

__all__ = ["MaxSimRetriever", "MuveraRetriever", "PlaidRetriever", "build_token_index", "build_fde_index",
           "MultiVectorSettings", "MULTIVECTOR_OPTIONS"]

_COMMON = {"model": str, **TOKEN_ENCODER_OPTIONS}
MULTIVECTOR_OPTIONS: dict[str, dict[str, Any]] = {
    "maxsim": dict(_COMMON),
    "muvera": {**_COMMON, "k_sim": 5, "d_proj": 16, "reps": 20, "fill_empty": True, "seed": 0, "candidates": 1000,
               "index": Item},
    "plaid": {**_COMMON, "nbits": 2, "ncentroids": int, "nprobe": 4, "candidates": 1000, "seed": 0},
}


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


def _rankings(queries, scores, rows, docids) -> list[Ranking]:
    return [Ranking(query=q, candidates=tuple(Candidate(docid=docids[int(r)], score=float(s))
                                              for s, r in zip(ss, rr) if r >= 0 and np.isfinite(s)))
            for q, ss, rr in zip(queries, scores, rows)]


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
        scores, rows = self.index.search(q, k)
        return _rankings(queries, scores, rows, self.index.row_docids)


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
            return [Ranking(query=qq, candidates=tuple(Candidate(docid=d, score=s) for d, s in ps[:k]))
                    for qq, ps in zip(queries, pairs)]
        width = max(1, max(len(ps) for ps in pairs))
        rows = np.full((len(q), width), -1, np.int64)
        for i, ps in enumerate(pairs):
            rows[i, :len(ps)] = self.index.rows([d for d, _ in ps])
        scores = self.index.score(q, rows)
        order = np.lexsort((rows, -scores), axis=1)[:, :k]
        return _rankings(queries, np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1),
                         self.index.row_docids)


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
        scores, rows, self.last_stats = self.index.search(q, k, nprobe=self.nprobe, candidates=self.candidates)
        return _rankings(queries, scores, rows, self.index.row_docids)


@dataclass(frozen=True)
class MultiVectorSettings:
    """A ``maxsim``/``muvera``/``plaid`` item resolved: the token encoder, the token vectors it makes
    (``tokens_key``) and the kind's own parameters."""

    kind: str
    model: str
    encoder_options: dict
    params: dict = field(default_factory=dict)
    tokens_key: str = field(init=False)

    def __post_init__(self):
        dl = self.encoder_options.get("document_length")
        object.__setattr__(self, "tokens_key", f"{self.model}|document_length={dl or 'model'}")

    @classmethod
    def of(cls, item, default_model: str = DEFAULT_TOKEN_MODEL) -> MultiVectorSettings:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        enc = {k: item.get(k) for k in TOKEN_ENCODER_OPTIONS if item.get(k) is not None}
        params = {k: item.get(k, None if isinstance(v, type) else v)
                  for k, v in MULTIVECTOR_OPTIONS[item.kind].items() if k not in _COMMON}
        return cls(kind=item.kind, model=item.get("model") or default_model, encoder_options=enc, params=params)

    def encoder(self, models) -> TokenEncoder:
        return models.token_encoder(self.model, **self.encoder_options)

    @property
    def fde(self) -> FDEConfig:
        p = self.params
        return FDEConfig(k_sim=p["k_sim"], d_proj=p["d_proj"], reps=p["reps"], fill_empty=p["fill_empty"],
                         seed=p["seed"])

    @property
    def fde_index_spec(self) -> IndexSpec:
        return IndexSpec.parse(self.params["index"]) if self.params.get("index") is not None else IndexSpec("flat")

    @property
    def derived_key(self) -> str | None:
        """What this kind's second index (built from the token vectors) depends on; None for ``maxsim``."""
        if self.kind == "muvera":
            return f"{self.fde.label()}|seed={self.fde.seed}|{self.fde_index_spec.build_key()}"
        if self.kind == "plaid":
            p = self.params
            return f"nbits={p['nbits']}|ncentroids={p['ncentroids'] or 'auto'}|seed={p['seed']}"
        return None

    def derive(self, tokens: MultiVectorIndex, *, meta: dict | None = None):
        """This kind's second index, built from ``tokens``: MUVERA's FDE index or PLAID's codes."""
        if self.kind == "muvera":
            return build_fde_index(tokens, self.fde, self.fde_index_spec, meta=meta)
        if self.kind == "plaid":
            p = self.params
            return PlaidIndex.build(tokens, nbits=p["nbits"], ncentroids=p["ncentroids"], seed=p["seed"], meta=meta)
        raise BadInput("maxsim searches the token vectors themselves; it derives no index")

    def document_fdes(self, encoded) -> np.ndarray:
        """MUVERA FDEs of newly encoded documents, from their tokens rounded to the token index's float16 (what
        :meth:`derive` reads), so an FDE index updated with them equals one derived afresh."""
        return document_fdes(np.asarray(encoded.vectors, np.float16), encoded.offsets, self.fde)

    def retriever(self, encoder: TokenEncoder, tokens: MultiVectorIndex | None, derived=None, *,
                  documents: Mapping[str, Document] | None = None) -> Retriever:
        """The retriever of this kind over ``tokens`` and, for muvera/plaid, the ``derived`` index
        (:meth:`derive`; PLAID searches its codes alone, so ``tokens`` may be None there)."""
        p = self.params
        if self.kind == "maxsim":
            return MaxSimRetriever(encoder, tokens, documents=documents)
        if self.kind == "muvera":
            return MuveraRetriever(encoder, tokens, derived, self.fde, candidates=p["candidates"],
                                   search_params=self.fde_index_spec.search_params(), documents=documents)
        return PlaidRetriever(encoder, derived, nprobe=p["nprobe"], candidates=p["candidates"], documents=documents)
