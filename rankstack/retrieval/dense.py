"""Dense retrieval: a text encoder over any :class:`~rankstack.index.base.VectorIndex` (exact or compressed)."""

from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import DimensionMismatch
from rankstack.index.base import IndexSpec, VectorIndex
from rankstack.index.registry import build_vector_index
from rankstack.records import Document, Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever", "build_dense_index"]


def build_dense_index(encoder, documents: Sequence[Document], spec: IndexSpec | str = "flat", *,
                      meta: dict | None = None) -> VectorIndex:
    """Encode ``documents`` (with a progress bar) into a new in-memory index of the kind ``spec`` names; call
    ``save()`` to persist it."""
    spec = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    t0 = time.perf_counter()
    vecs = encoder.encode_documents(documents)
    secs = time.perf_counter() - t0
    info = {"model": encoder.model_name, "normalized": encoder.normalize, "encode_seconds": round(secs, 3),
            **(meta or {})}
    index = build_vector_index(spec, [d.docid for d in documents], vecs, meta=info)
    logger.info("encoded %d documents in %.1f s", len(documents), secs)
    return index


class DenseRetriever(Retriever):
    """Encode queries, search the index, return rankings with string docids.

    ``search_params``: search-time settings passed to the index (``nprobe``, ``ef_search``, ``rescore_multiplier``
    ...). ``device``: when given, query vectors are handed to the index as torch tensors on that device, so
    indexes with GPU kernels run them there (and under ``TRITON_INTERPRET=1`` on any device). ``documents`` (any
    docid -> Document mapping) is where pipelines find candidate texts.
    """

    kind = "dense"

    def __init__(self, encoder, index: VectorIndex, *, search_params: Mapping | None = None,
                 device: str | None = None, documents: Mapping[str, Document] | None = None):
        if not (hasattr(index, "search") and hasattr(index, "docid_pairs")):
            raise TypeError(f"DenseRetriever needs a vector index (a VectorIndex, or a sharded one), got "
                            f"{type(index).__name__}")
        if encoder.dim != index.dim:
            raise DimensionMismatch(f"encoder {encoder.model_name!r} makes {encoder.dim}-d vectors but the index "
                                    f"holds {index.dim}-d ones; use the model the index was built with")
        built_with = index.meta.get("model")
        if built_with and built_with != encoder.model_name:
            logger.warning("index was built with %r but queries are encoded with %r", built_with, encoder.model_name)
        self.encoder = encoder
        self.index = index
        self.search_params = dict(search_params or {})
        self.device = device
        self.documents = documents
        self.name = f"dense({encoder.model_name.split('/')[-1]},{index.spec})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        if not queries:
            return []
        qv = self.encoder.encode_queries([q.text for q in queries])
        if self.device is not None:
            import torch

            qv = torch.from_numpy(np.ascontiguousarray(qv)).to(self.device)
        pairs = self.index.docid_pairs(self.index.search(qv, k, **self.search_params))
        return [Ranking.from_arrays(q, [d for d, _ in ps], [s for _, s in ps])
                for q, ps in zip(queries, pairs)]
