"""Records shared by every stage: queries, documents, candidates, rankings, runs and qrels.

All records are frozen, keyword-only dataclasses. Docids are strings at every boundary; integer row ids
exist only inside an index. Hot paths pass :class:`TopK` array pairs and turn them into records at a
stage boundary.

Tie-breaking: within one query, candidates are ordered by descending score and, among equal scores, by
descending docid. That is the order trec_eval (and so pytrec_eval / ir_measures) evaluates whatever rank
column a run file carries, so the ranks we write are the ranks that get scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping, Sequence

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


class Ranking:
    """The ranked candidates of one query, best first.

    Held as columns (docids, scores, and documents when attached): retrievers make rankings from their top-k arrays
    with :meth:`from_arrays`, and stages that only cut, fuse or write runs read :attr:`docids` and :attr:`scores`.
    :class:`Candidate` objects are made only when a caller iterates over :attr:`candidates` (a thousand of them per
    query cost more than the search that found them). Immutable: every method returns a new ranking.
    """

    __slots__ = ("query", "_docids", "_scores", "_documents", "_candidates")

    def __init__(self, *, query: Query, candidates: Iterable[Candidate] = ()):
        cands = tuple(candidates)
        _set(self, "query", query)
        _set(self, "_candidates", cands)
        _set(self, "_docids", None)
        _set(self, "_scores", None)
        _set(self, "_documents", None)

    @classmethod
    def from_arrays(cls, query: Query, docids: Sequence[str], scores: Sequence[float],
                    documents: Sequence[Document | None] | None = None) -> Ranking:
        """A ranking of ``docids`` with ``scores`` (same length, best first; Python lists or arrays), without
        making a Candidate per document."""
        if len(docids) != len(scores) or (documents is not None and len(documents) != len(docids)):
            raise ValueError(f"a ranking needs one score (and document) per docid: {len(docids)} docids, "
                             f"{len(scores)} scores")
        out = object.__new__(cls)
        _set(out, "query", query)
        _set(out, "_candidates", None)
        _set(out, "_docids", list(docids))
        _set(out, "_scores", scores.tolist() if hasattr(scores, "tolist") else list(scores))
        _set(out, "_documents", None if documents is None else list(documents))
        return out

    def __setattr__(self, name, value):
        raise AttributeError(f"Ranking is immutable; make a new one (cannot set {name!r})")

    def __reduce__(self):
        return (Ranking.from_arrays, (self.query, self.docids, self.scores, self._documents_or_none()))

    def _documents_or_none(self):
        if self._candidates is not None:
            docs = [c.document for c in self._candidates]
            return docs if any(d is not None for d in docs) else None
        return self._documents

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        if self._candidates is None:
            if self._documents is None:
                cands = Candidate.many(self._docids, self._scores)
            else:
                cands = tuple(Candidate(docid=d, score=s, document=doc)
                              for d, s, doc in zip(self._docids, self._scores, self._documents))
            _set(self, "_candidates", cands)
        return self._candidates

    @property
    def docids(self) -> list[str]:
        if self._docids is not None:
            return list(self._docids)
        return [c.docid for c in self._candidates]

    @property
    def scores(self) -> list[float]:
        if self._scores is not None:
            return list(self._scores)
        return [c.score for c in self._candidates]

    @property
    def documents(self) -> list[Document | None]:
        """The attached document of each candidate (None where none is attached)."""
        if self._candidates is not None:
            return [c.document for c in self._candidates]
        return list(self._documents) if self._documents is not None else [None] * len(self._docids)

    def __len__(self) -> int:
        return len(self._docids) if self._docids is not None else len(self._candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Ranking):
            return NotImplemented
        return self.query == other.query and self.candidates == other.candidates

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(f"{d}:{s:.4g}" for d, s in zip(self.docids[:3], self.scores[:3]))
        more = f", ... {len(self) - 3} more" if len(self) > 3 else ""
        return f"Ranking(query={self.query!r}, [{head}{more}])"

    def top(self, k: int) -> Ranking:
        if self._candidates is not None:
            return Ranking(query=self.query, candidates=self._candidates[:k])
        return Ranking.from_arrays(self.query, self._docids[:k], self._scores[:k],
                                   None if self._documents is None else self._documents[:k])

    def sorted(self) -> Ranking:
        """The same candidates in trec_eval order (score desc, docid desc)."""
        cands = sorted(self.candidates, key=lambda c: (c.score, c.docid), reverse=True)
        return Ranking(query=self.query, candidates=tuple(cands))

    @classmethod
    def from_scores(cls, query: Query, scores: Mapping[str, float],
                    documents: Mapping[str, Document] | None = None) -> Ranking:
        pairs = trec_order(scores.items())
        return cls.from_arrays(query, [d for d, _ in pairs], [float(s) for _, s in pairs],
                               [documents.get(d) for d, _ in pairs] if documents else None)


_set = object.__setattr__


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
        return cls(scores={r.query.qid: dict(zip(r.docids, r.scores)) for r in rankings}, name=name)

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
