"""Records shared by every stage: queries, documents, candidates, rankings, runs and qrels.

All records are frozen, keyword-only dataclasses. Docids are strings at every boundary; integer row ids
exist only inside an index. Hot paths pass :class:`TopK` array pairs and turn them into records at a
stage boundary.

Tie-breaking: within one query, candidates are ordered by descending score and, among equal scores, by
descending docid. That is the order trec_eval (and so pytrec_eval / ir_measures) evaluates whatever rank
column a run file carries, so the ranks we write are the ranks that get scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping

import numpy as np

__all__ = [
    "Query",
    "Document",
    "Candidate",
    "Ranking",
    "Run",
    "Qrels",
    "TopK",
    "trec_order",
]


def trec_order(items: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Sort ``(docid, score)`` pairs the way trec_eval ranks them: score descending, then docid descending."""
    return sorted(items, key=lambda p: (p[1], p[0]), reverse=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Query:
    qid: str
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Document:
    docid: str
    text: str
    title: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def contents(self) -> str:
        """Title and text joined by a space, as BEIR and Pyserini's flat indexes do."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    docid: str
    score: float
    document: Document | None = None

    @classmethod
    def many(cls, docids: Iterable[str], scores: Iterable[float]) -> tuple[Candidate, ...]:
        """Candidates without documents, built through the slots directly: twice as fast as the frozen
        dataclass's ``__init__``, which matters at a thousand candidates per query."""
        new, set_docid, set_score, set_document = object.__new__, _SET_DOCID, _SET_SCORE, _SET_DOCUMENT
        out = []
        for d, s in zip(docids, scores):
            c = new(cls)
            set_docid(c, d)
            set_score(c, s)
            set_document(c, None)
            out.append(c)
        return tuple(out)


_SET_DOCID, _SET_SCORE, _SET_DOCUMENT = Candidate.docid.__set__, Candidate.score.__set__, Candidate.document.__set__


@dataclass(frozen=True, kw_only=True, slots=True)
class Ranking:
    """The ranked candidates of one query, best first."""

    query: Query
    candidates: tuple[Candidate, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    @property
    def docids(self) -> list[str]:
        return [c.docid for c in self.candidates]

    def top(self, k: int) -> Ranking:
        return replace(self, candidates=self.candidates[:k])

    def sorted(self) -> Ranking:
        """The same candidates in trec_eval order (score desc, docid desc)."""
        cands = sorted(self.candidates, key=lambda c: (c.score, c.docid), reverse=True)
        return replace(self, candidates=tuple(cands))

    @classmethod
    def from_scores(cls, query: Query, scores: Mapping[str, float],
                    documents: Mapping[str, Document] | None = None) -> Ranking:
        cands = tuple(
            Candidate(docid=d, score=float(s), document=documents.get(d) if documents else None)
            for d, s in trec_order(scores.items())
        )
        return cls(query=query, candidates=cands)


def _freeze_nested(m: Mapping[str, Mapping[str, object]]) -> Mapping[str, Mapping[str, object]]:
    return MappingProxyType({str(q): MappingProxyType(dict(v)) for q, v in m.items()})


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """Scores per query: ``scores[qid][docid] -> float``, plus the run's name (the TREC tag)."""

    scores: Mapping[str, Mapping[str, float]]
    name: str = "rankstack"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", _freeze_nested(self.scores))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def qids(self) -> list[str]:
        return list(self.scores)

    def ranked(self, qid: str) -> list[tuple[str, float]]:
        """``(docid, score)`` pairs of one query in trec_eval order."""
        return trec_order(self.scores.get(qid, {}).items())

    def top(self, k: int) -> Run:
        return Run(scores={q: dict(self.ranked(q)[:k]) for q in self.scores}, name=self.name)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {q: dict(v) for q, v in self.scores.items()}

    @classmethod
    def from_rankings(cls, rankings: Iterable[Ranking], name: str = "rankstack") -> Run:
        return cls(scores={r.query.qid: {c.docid: c.score for c in r.candidates} for r in rankings}, name=name)

    def to_rankings(self, queries: Mapping[str, Query]) -> list[Ranking]:
        return [Ranking.from_scores(queries.get(q, Query(qid=q, text="")), s) for q, s in self.scores.items()]


@dataclass(frozen=True, kw_only=True, slots=True)
class Qrels:
    """Relevance judgments: ``judgments[qid][docid] -> int`` (0 = judged non-relevant)."""

    judgments: Mapping[str, Mapping[str, int]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "judgments", _freeze_nested(self.judgments))

    def __len__(self) -> int:
        return len(self.judgments)

    @property
    def qids(self) -> list[str]:
        return list(self.judgments)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {q: dict(v) for q, v in self.judgments.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class TopK:
    """Hot-path result of a batched search.

    ``scores``: float32 array ``[num_queries, k]``, best first.
    ``ids``: int64 array ``[num_queries, k]`` of index row ids; ``-1`` marks "no hit" (fewer than k documents)
    and must never leave the index that produced it.
    """

    scores: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != self.ids.shape or self.scores.ndim != 2:
            raise ValueError(f"TopK scores {self.scores.shape} and ids {self.ids.shape} must be equal 2-D shapes")
