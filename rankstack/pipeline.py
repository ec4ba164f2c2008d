"""Stage composition: a retriever, then rerankers and cutoffs, as one retriever.

``bm25 >> reranker % 10`` retrieves with BM25, reranks, and keeps the top 10 (PyTerrier's operators, no pandas).
Any callable ``Sequence[Ranking] -> list[Ranking]`` is a stage, so rerankers plug in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from rankstack.errors import BadInput
from rankstack.records import Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries

__all__ = ["Cutoff", "Pipeline", "Stage"]

Stage = Callable[[Sequence[Ranking]], list[Ranking]]


@dataclass(frozen=True)
class Cutoff:
    """Keep the first ``k`` candidates of every ranking."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise BadInput(f"cutoff must be a positive integer, got {self.k!r}")

    @property
    def name(self) -> str:
        return f"%{self.k}"

    def __call__(self, rankings: Sequence[Ranking]) -> list[Ranking]:
        return [r.top(self.k) for r in rankings]


class Pipeline(Retriever):
    """``first`` retrieves ``depth`` candidates; each stage then transforms the rankings in order."""

    def __init__(self, first: Retriever, stages: Sequence[Stage] = (), *, depth: int = 100):
        self.first = first
        self.stages = list(stages)
        self.depth = depth

    @property
    def name(self) -> str:  # type: ignore[override]
        return " >> ".join([self.first.name, *(getattr(s, "name", type(s).__name__) for s in self.stages)])

    def __rshift__(self, stage: Stage) -> Pipeline:
        return Pipeline(self.first, [*self.stages, stage], depth=self.depth)

    def __mod__(self, k: int) -> Pipeline:
        return self >> Cutoff(k)

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        rankings = self.first.retrieve(queries, max(k, self.depth))
        for stage in self.stages:
            rankings = stage(rankings)
        return [r.top(k) for r in rankings]
