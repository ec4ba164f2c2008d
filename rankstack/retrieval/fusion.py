"""Fusion of runs as pure functions (reciprocal rank fusion, normalised interpolation), and a hybrid retriever."""

from __future__ import annotations

from typing import Sequence

from rankstack.errors import BadInput
from rankstack.records import Candidate, Document, Query, Ranking, Run, trec_order
from rankstack.retrieval.base import Retriever, validate_queries

__all__ = ["rrf", "interpolate", "HybridRetriever", "fuse_rankings"]


def _ranked(run: Run, qid: str, depth: int | None) -> list[tuple[str, float]]:
    return run.ranked(qid)[:depth]


def rrf(runs: Sequence[Run], *, k: int = 60, depth: int | None = 1000, name: str = "rrf") -> Run:
    """Reciprocal rank fusion (Cormack et al., 2009): ``score(d) = sum_r 1 / (k + rank_r(d))``, ranks from 1."""
    if not runs:
        raise BadInput("rrf needs at least one run")
    if k < 0:
        raise BadInput(f"rrf k must be >= 0, got {k}")
    qids = list(dict.fromkeys(q for r in runs for q in r.qids))
    fused: dict[str, dict[str, float]] = {}
    for q in qids:
        acc: dict[str, float] = {}
        for r in runs:
            for rank, (d, _) in enumerate(_ranked(r, q, depth), 1):
                acc[d] = acc.get(d, 0.0) + 1.0 / (k + rank)
        fused[q] = acc
    return Run(scores=fused, name=name)


def _minmax(pairs: list[tuple[str, float]]) -> dict[str, float]:
    if not pairs:
        return {}
    vals = [s for _, s in pairs]
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return {d: 1.0 for d, _ in pairs}
    return {d: (s - lo) / (hi - lo) for d, s in pairs}


def interpolate(a: Run, b: Run, *, alpha: float = 0.5, depth: int | None = 1000, name: str = "interp") -> Run:
    """``alpha * norm(a) + (1 - alpha) * norm(b)`` with per-query min-max normalisation over the top ``depth``.

    A document missing from one run gets that run's minimum normalised score (0).
    """
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"alpha must lie in [0, 1], got {alpha}")
    fused: dict[str, dict[str, float]] = {}
    for q in dict.fromkeys([*a.qids, *b.qids]):
        na, nb = _minmax(_ranked(a, q, depth)), _minmax(_ranked(b, q, depth))
        fused[q] = {d: alpha * na.get(d, 0.0) + (1 - alpha) * nb.get(d, 0.0) for d in {*na, *nb}}
    return Run(scores=fused, name=name)


def fuse_rankings(queries: Sequence[Query], fused: Run, sources: Sequence[Sequence[Ranking]], k: int) -> list[Ranking]:
    """Turn a fused run back into rankings, keeping any documents the source rankings carried."""
    docs: dict[str, Document] = {}
    for rankings in sources:
        for r in rankings:
            for c in r.candidates:
                if c.document is not None:
                    docs.setdefault(c.docid, c.document)
    return [Ranking(query=q, candidates=tuple(Candidate(docid=d, score=s, document=docs.get(d))
                                              for d, s in trec_order(fused.scores.get(q.qid, {}).items())[:k]))
            for q in queries]


class HybridRetriever(Retriever):
    """Retrieve ``depth`` candidates from each retriever and fuse them: ``method`` is ``"rrf"`` or ``"interp"``.

    For ``interp``, ``alpha`` weights the first retriever (``alpha * first + (1 - alpha) * second``).
    """

    METHODS = ("rrf", "interp")

    def __init__(self, retrievers: Sequence[Retriever], *, method: str = "rrf", depth: int = 1000,
                 rrf_k: int = 60, alpha: float = 0.5):
        if method not in self.METHODS:
            raise BadInput(f"unknown fusion method {method!r}; choose one of {self.METHODS}")
        if method == "interp" and len(retrievers) != 2:
            raise BadInput("interpolation fuses exactly two retrievers")
        if not retrievers:
            raise BadInput("a hybrid retriever needs at least one retriever")
        self.retrievers = list(retrievers)
        self.method, self.depth, self.rrf_k, self.alpha = method, depth, rrf_k, alpha
        parts = "+".join(r.name for r in self.retrievers)
        self.name = f"{method}({parts})" if method == "rrf" else f"interp[{alpha:g}]({parts})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        depth = max(self.depth, k)
        per = [r.retrieve(queries, depth) for r in self.retrievers]
        runs = [Run.from_rankings(p) for p in per]
        if self.method == "rrf":
            fused = rrf(runs, k=self.rrf_k, depth=depth)
        else:
            fused = interpolate(runs[0], runs[1], alpha=self.alpha, depth=depth)
        return fuse_rankings(queries, fused, per, k)
