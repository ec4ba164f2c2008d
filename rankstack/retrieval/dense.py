"""Dense retrieval: a text encoder over a :class:`DenseFlatIndex`."""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

from rankstack.errors import DimensionMismatch
from rankstack.index.faiss_flat import DenseFlatIndex
from rankstack.records import Candidate, Document, Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.retrieval.encoders import SentenceTransformerEncoder

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever", "build_dense_index"]


def build_dense_index(encoder: SentenceTransformerEncoder, documents: Sequence[Document]) -> DenseFlatIndex:
    """Encode ``documents`` (with a progress bar) into a new in-memory index; call ``save()`` to persist it."""
    t0 = time.perf_counter()
    vecs = encoder.encode_documents(documents)
    index = DenseFlatIndex(encoder.dim, meta={"model": encoder.model_name, "normalized": encoder.normalize,
                                              "encode_seconds": round(time.perf_counter() - t0, 3)})
    index.add([d.docid for d in documents], vecs)
    logger.info("encoded %d documents in %.1f s", len(documents), time.perf_counter() - t0)
    return index


class DenseRetriever(Retriever):
    """Encode queries, search the index exactly, return rankings with string docids.

    ``documents`` (any docid -> Document mapping, e.g. a corpus or a DocStore) attaches passages to candidates.
    """

    def __init__(self, encoder: SentenceTransformerEncoder, index: DenseFlatIndex, *,
                 documents: Mapping[str, Document] | None = None):
        if encoder.dim != index.dim:
            raise DimensionMismatch(f"encoder {encoder.model_name!r} makes {encoder.dim}-d vectors but the index "
                                    f"holds {index.dim}-d ones; use the model the index was built with")
        built_with = index.meta.get("model")
        if built_with and built_with != encoder.model_name:
            logger.warning("index was built with %r but queries are encoded with %r", built_with, encoder.model_name)
        self.encoder = encoder
        self.index = index
        self.documents = documents
        self.name = f"dense({encoder.model_name.split('/')[-1]})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        qv = self.encoder.encode_queries([q.text for q in queries])
        pairs = self.index.docid_pairs(self.index.search(qv, k))
        docs = self.documents
        return [
            Ranking(query=q, candidates=tuple(Candidate(docid=d, score=s, document=docs.get(d) if docs else None)
                                              for d, s in ps))
            for q, ps in zip(queries, pairs)
        ]
