"""The reranker interface: batch-first, returns new rankings, never mutates its input.

A reranker reorders *every* candidate it is given. How many candidates it gets (the rerank depth) and what happens
to the ones below (kept in input order, scored below the reranked head) is the rerank stage's business, decided in
one place: :class:`rankstack.pipeline.Rerank`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from rankstack.records import Ranking

__all__ = ["Reranker"]


class Reranker(ABC):
    """``batch_queries``: how many queries one :meth:`rerank_batch` call should take when a pipeline shows
    progress (None: all at once, e.g. a cross-encoder batching pairs across queries; 1 for LLMs)."""

    name: str = "reranker"
    batch_queries: int | None = None

    @abstractmethod
    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        """Reorder and rescore all candidates of each ranking (they need their ``document`` attached); the result
        holds the same docids, best first."""

    def rerank(self, ranking: Ranking) -> Ranking:
        return self.rerank_batch([ranking])[0]

    def __call__(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        return self.rerank_batch(rankings)

    def __mod__(self, k: int):
        """``reranker % k``: rerank (the default depth), then keep the top ``k``."""
        from rankstack.pipeline.core import Rerank

        return Rerank(self) % k

    def __rshift__(self, stage):
        from rankstack.pipeline.core import Rerank

        return Rerank(self) >> stage
