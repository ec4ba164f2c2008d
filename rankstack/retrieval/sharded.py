"""Retrievers over a sharded collection (:mod:`rankstack.index.sharded`), and the pipeline resources that name them.

``bm25``, ``dense`` and ``splade`` items resolve as they do over one index; the pipeline (fusion, filters,
rerankers) runs unchanged over the merged rankings. Runs equal the single-index runs: BM25 gives Pyserini's docids
and scores (Lucene's statistics taken collection-wide), dense the exact inner products, splade the exact integer
impact scores (``engine=scipy``; IDF queries weighted by the collection's document frequencies).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from rankstack.errors import BadInput
from rankstack.index.base import IndexSpec, sort_pairs
from rankstack.index.sharded import ShardedDocuments, ShardedIndex
from rankstack.pipeline.resources import DenseSettings, Resources
from rankstack.records import Candidate, Query, Ranking
from rankstack.rerank.factory import ModelCache
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["ShardedBM25Retriever", "ShardedDenseRetriever", "ShardedSparseRetriever", "ShardedResources"]


class ShardedBM25Retriever(Retriever):
    """Lucene's BM25 across shards: queries are analysed here, once, by the analyser the shards were built with."""

    kind = "bm25"

    def __init__(self, router, *, k1: float = 0.9, b: float = 0.4, documents=None):
        from rankstack.index.bm25_matrix import QueryAnalyzer

        self.router, self.k1, self.b = router, float(k1), float(b)
        self._analyzer = QueryAnalyzer()
        self.documents = documents
        self.name = f"bm25(k1={k1},b={b},{len(router.index.shards)} shards)"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        from rankstack.index.bm25_matrix import tiebreak

        validate_queries(queries, k)
        if not queries:
            return []
        analysed = [self._analyzer(q.text) for q in queries]
        docids = self.router.index.docids
        out = []
        for q, (pos, scores) in zip(queries, self.router.bm25(analysed, k, self.k1, self.b)):
            pairs = sort_pairs(tiebreak([(docids[p], s) for p, s in zip(pos.tolist(), scores)]))
            out.append(Ranking(query=q, candidates=tuple(Candidate(docid=d, score=s) for d, s in pairs)))
        return out


class ShardedDenseRetriever(Retriever):
    """Queries encoded here, once; every shard searches its vectors; the best ``k`` over all shards."""

    kind = "dense"

    def __init__(self, encoder, router, *, search_params: dict | None = None, documents=None):
        dim = router.index.dense.get("dim")
        if dim is not None and encoder.dim != dim:
            from rankstack.errors import DimensionMismatch

            raise DimensionMismatch(f"encoder {encoder.model_name!r} makes {encoder.dim}-d vectors but the shards hold "
                                    f"{dim}-d ones; use the model they were built with "
                                    f"({router.index.dense.get('model')})")
        self.encoder, self.router = encoder, router
        self.search_params = dict(search_params or {})
        self.documents = documents
        self.name = (f"dense({encoder.model_name.split('/')[-1]},{router.index.dense.get('spec', 'flat')},"
                     f"{len(router.index.shards)} shards)")

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        qv = self.encoder.encode_queries([q.text for q in queries])
        docids = self.router.index.docids
        # ties in trec_eval order (score, then docid, descending), as one vector index returns them
        return [Ranking(query=q, candidates=tuple(Candidate(docid=d, score=s) for d, s in sort_pairs(
                    [(docids[p], float(s)) for p, s in zip(pos.tolist(), scores.tolist())])))
                for q, (pos, scores) in zip(queries, self.router.dense(qv, k, self.search_params))]


class ShardedSparseRetriever(Retriever):
    """Queries sparse-encoded here (or weighted by the collection's IDF), once; every shard scores its impacts."""

    kind = "splade"

    def __init__(self, encoder, router, *, query: str = "model", documents=None):
        from rankstack.index.sharded import read_sparse_stats
        from rankstack.retrieval.sparse_encoders import QUERY_MODES

        built = router.index.splade
        if encoder.fingerprint != built.get("vocab_fingerprint"):
            raise BadInput(f"vocabulary mismatch: the shards were built with {built.get('model')!r} (vocabulary "
                           f"{built.get('vocab_fingerprint')}) but the encoder {encoder.model_name!r} has "
                           f"{encoder.fingerprint}; query with the model the shards were built with")
        if query not in QUERY_MODES:
            raise BadInput(f"query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
        self.encoder, self.router, self.query_mode, self.scale = encoder, router, query, float(built["scale"])
        self.df, self.doc_count = read_sparse_stats(router.index.path) if query == "idf" else (None, 0)
        self.documents = documents
        short = encoder.model_name.rstrip("/").split("/")[-1]
        self.name = f"splade({short},{query} queries,{len(router.index.shards)} shards)"

    def encode(self, texts: Sequence[str]):
        from rankstack.index.sparse import idf_impacts, quantize

        if self.query_mode == "idf":
            return idf_impacts(self.encoder.query_tokens(texts), self.df, self.doc_count, self.scale)
        return quantize(self.encoder.encode_queries(texts), self.scale)

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        docids = self.router.index.docids
        out = []
        for q, (pos, scores) in zip(queries, self.router.sparse(self.encode([x.text for x in queries]), k)):
            pairs = sort_pairs([(docids[p], float(s)) for p, s in zip(pos.tolist(), scores.tolist())])
            out.append(Ranking(query=q, candidates=tuple(Candidate(docid=d, score=s) for d, s in pairs)))
        return out


class ShardedResources(Resources):
    """A sharded collection as pipeline resources: ``bm25`` and ``dense`` items over its shards, documents from
    the shards' stores. ``address``: None serves every shard in this process; a Ray address serves each shard
    from ``replicas`` Ray actors (see :class:`~rankstack.distributed.router.ShardRouter` for failures)."""

    def __init__(self, path: str | os.PathLike | ShardedIndex, *, address: str | None = None, replicas: int = 1,
                 allow_partial: bool = False, timeout_s: float = 120.0, models: ModelCache | None = None):
        from rankstack.distributed.router import ShardRouter

        super().__init__(models)
        self.index = path if isinstance(path, ShardedIndex) else ShardedIndex.load(Path(path))
        self.router = ShardRouter(self.index, address=address, replicas=replicas, allow_partial=allow_partial,
                                  timeout_s=timeout_s)
        self.documents = ShardedDocuments(self.index)
        self.default_model = self.index.dense.get("model") or self.default_model
        self.stats: dict[str, dict[str, float]] = {}
        self.paths = [str(self.index.path)]
        self._cache: dict[str, Retriever] = {}

    def default_spec(self) -> str:
        parts = list(self.index.indexes)
        return parts[0] if len(parts) == 1 else "rrf(" + ", ".join(parts) + ")"

    def retriever(self, item: Item | str) -> Retriever:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        key = str(item)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._make(item)
            return self._cache[key]

    def _make(self, item: Item) -> Retriever:
        if item.kind not in self.index.indexes:
            raise BadInput(f"the pipeline uses {item.kind} but the sharded collection {self.index.path} holds "
                           f"{' and '.join(self.index.indexes)}; rebuild it with --kind {item.kind}")
        if item.kind == "bm25":
            if item.get("engine") not in (None, "matrix", "lucene"):
                raise BadInput(f"bm25 engine {item.get('engine')!r}: choose lucene or matrix")
            return ShardedBM25Retriever(self.router, k1=item.get("k1", 0.9), b=item.get("b", 0.4),
                                        documents=self.documents)
        if item.kind == "splade":
            return self._sparse(item)
        built = self.index.dense
        model = item.get("model") or built.get("model")
        s = DenseSettings.of(item.updated(model=model))
        want = s.index.build_key()
        have = IndexSpec.parse(built.get("spec", "flat")).build_key()
        if item.get("index") is not None and want != have:
            raise BadInput(f"the pipeline asks for a dense index {want!r} but the shards hold {have!r}; rebuild with "
                           f"--kind 'dense:index=({want})' or drop index=")
        if model != built.get("model"):
            raise BadInput(f"the shards were encoded with {built.get('model')!r}, not {model!r}; drop model= or "
                           f"rebuild the collection with that model")
        opts = dict(built.get("options") or {})
        opts.update(s.encoder_options)
        encoder = self.models.encoder(model, **opts)
        return ShardedDenseRetriever(encoder, self.router, search_params=s.search_params, documents=self.documents)

    def _sparse(self, item: Item) -> Retriever:
        from rankstack.pipeline.resources import SparseSettings

        built = self.index.splade
        s = SparseSettings.of(item, built.get("model"))
        if s.engine != "scipy":
            raise BadInput(f"splade engine {s.engine!r} is not served over shards; each shard scores its impacts "
                           f"exactly (engine=scipy): drop engine=")
        if s.model != built.get("model") or s.max_seq_length != built.get("max_seq_length"):
            raise BadInput(f"the shards were sparse-encoded with {built.get('model')!r} at max_seq_length "
                           f"{built.get('max_seq_length')}, not {s.model!r} at {s.max_seq_length}; drop model= and "
                           f"max_seq_length= or rebuild the collection")
        return ShardedSparseRetriever(s.encoder(self.models), self.router, query=s.query, documents=self.documents)

    def health(self) -> list[dict]:
        return self.router.health()

    def close(self) -> None:
        self.router.close()
