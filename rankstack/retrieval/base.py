"""The retriever interface (:class:`~rankstack.pipeline.core.Retriever`, defined beside the executor that composes
retrievers: ``bm25 + dense`` fuses them, ``>> reranker`` reranks, ``% k`` keeps the top ``k``), and what every
retriever shares: turning an index's top-k rows into rankings."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rankstack.pipeline.core import Retriever, validate_queries
from rankstack.records import Query, Ranking

__all__ = ["Retriever", "validate_queries", "rankings_from_topk"]


def rankings_from_topk(queries: Sequence[Query], topk, docids: Sequence[str | None]) -> list[Ranking]:
    """One ranking per query from a :class:`~rankstack.records.TopK` of rows (``docids[row]``), dropping ``-1``
    and ``-inf`` pads; equal scores in trec_eval's order (docid descending), sorted only where there are ties."""
    out = []
    for q, ids, scores in zip(queries, topk.ids, topk.scores):
        ok = (ids >= 0) & np.isfinite(scores)
        if not ok.all():
            ids, scores = ids[ok], scores[ok]
        names = [docids[i] for i in ids.tolist()]
        values = scores.tolist()
        if len(values) > 1 and (scores[:-1] == scores[1:]).any():
            pairs = sorted(zip(names, values), key=lambda p: (p[1], p[0]), reverse=True)
            names, values = [p[0] for p in pairs], [p[1] for p in pairs]
        out.append(Ranking.from_arrays(q, names, values))
    return out
