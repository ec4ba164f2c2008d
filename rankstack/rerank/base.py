"""The reranker interface: batch-first, returns new rankings, never mutates its input."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from rankstack.records import Ranking

__all__ = ["Reranker"]


class Reranker(ABC):
    name: str = "reranker"

    @abstractmethod
    def rerank_batch(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        """Reorder (and rescore) each ranking's candidates; candidates need their ``document`` attached."""

    def rerank(self, ranking: Ranking) -> Ranking:
        return self.rerank_batch([ranking])[0]

    def __call__(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        return self.rerank_batch(rankings)
