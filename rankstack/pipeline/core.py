"""The one executor: a source (a retriever, a fusion of pipelines, or given candidates) followed by stages
(rerank, filter, cutoff), with per-stage timings and per-query counts.

Vocabulary, one word per meaning:
- ``k``: how many results a run returns (``pipeline.run(queries, k)``, the service's ``k``, ``rankstack eval -k``).
- ``% n`` (:class:`Cutoff`): keep the top ``n``. Right after a retriever it is that retriever's *fetch depth*:
  ``rrf(bm25 % 100, dense % 100)`` fuses 100 candidates from each.
- *fused*: a fusion reads everything its inputs return (their cutoffs, or the ``k`` asked of them).
- ``depth`` of a rerank stage (:class:`Rerank`): how many of the top candidates the reranker reorders. The rest
  (the *tail*) stay below, in input order, with scores below the lowest reranked score: one rule for every
  reranker.
- ``rrf_k``: RRF's rank constant (:func:`rankstack.pipeline.fusion.rrf`); it cuts nothing.

How much each part produces is worked out backwards from ``k``: a cutoff asks its input for exactly ``n``; a rerank
stage for ``max(k, depth)``; a filter for ``k * overfetch``; a fusion asks each input for what it was asked.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from rankstack._progress import progress_enabled
from rankstack.errors import BadInput, RankStackError
from rankstack.pipeline.fusion import interpolate, rrf
from rankstack.records import Candidate, Document, Query, Ranking, Run
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["Retriever", "Reranker", "validate_queries", "Pipeline", "PipelineOutput", "Stage", "Stages", "Cutoff",
           "Rerank", "Filter", "Apply", "Source", "Retrieve", "Fuse", "Given", "FUSION_METHODS",
           "DEFAULT_RERANK_DEPTH", "filter_item"]

FUSION_METHODS = ("rrf", "interp")
DEFAULT_RERANK_DEPTH = 100
ON_ERROR = ("raise", "stop", "skip")  # what Pipeline.run does with a query a rerank stage cannot finish


# ---- the stage interfaces: what retrievers and rerankers implement, and how they compose ----------------------

def validate_queries(queries: Sequence[Query], k: int) -> None:
    """Reject k <= 0, empty or whitespace-only queries and repeated qids.

    There is no length limit here: BEIR's argument-retrieval queries are whole documents. Limits that protect a
    server belong to the service's configuration (``limits.max_query_chars``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    seen = set()
    for q in queries:
        if not isinstance(q, Query):
            raise BadInput(f"expected Query records, got {type(q).__name__}; wrap text as Query(qid=..., text=...)")
        if not q.text or not q.text.strip():
            raise BadInput(f"query {q.qid!r} is empty; give it some text")
        if q.qid in seen:
            raise BadInput(f"duplicate qid {q.qid!r} in one batch; qids must be unique")
        seen.add(q.qid)


class Retriever(ABC):
    """First-stage retrieval. Implementations override :meth:`retrieve`; :meth:`search` is the one-query form.

    ``kind`` names the family in stage timings (``retrieve_bm25``); ``documents`` (optional) is where a pipeline
    built from this retriever finds candidate texts for rerankers and filters.
    """

    name: str = "retriever"
    kind: str = "retriever"
    documents: Mapping[str, Document] | None = None

    @abstractmethod
    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        """Top-``k`` candidates for each query, in the order of ``queries``."""

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        q = query if isinstance(query, Query) else Query(qid="q", text=query)
        return self.retrieve([q], k)[0]

    def __call__(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        return self.retrieve(queries, k)

    def pipeline(self):
        """This retriever as a one-stage :class:`Pipeline`."""
        return Pipeline(Retrieve(self))

    def __rshift__(self, stage):
        """``retriever >> stage``: a pipeline that retrieves, then applies ``stage`` (a reranker, a stage)."""
        return self.pipeline() >> stage

    def __mod__(self, k: int):
        """``retriever % k`` retrieves ``k`` candidates (inside a fusion: fetches ``k`` per query)."""
        return self.pipeline() % k

    def __add__(self, other):
        """``a + b``: reciprocal rank fusion of the two (``rrf(a, b)``; ``a + b + c`` fuses all three at once)."""
        return self.pipeline() + other


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
        return Rerank(self) % k

    def __rshift__(self, stage):
        return Rerank(self) >> stage


def filter_item(where: Mapping[str, object]):
    """A filter condition table as a ``filter:field=value,...`` item (lists as ``a;b``)."""
    return Item("filter", tuple((k, ";".join(map(str, v)) if isinstance(v, (list, tuple)) else
                                 (str(v).lower() if isinstance(v, bool) else str(v)))
                                for k, v in where.items()))



@dataclass(frozen=True)
class PipelineOutput:
    """``rankings`` (one per query, in query order); ``timings``: seconds per stage over the batch, in the order
    the stages ran (``retrieve_bm25``, ``retrieve_dense``, ``fuse``, ``filter``, ``rerank``...); ``stats``: per
    query, the candidates each stage produced and each reranker's counters (``llm_forward_passes``...)."""

    rankings: list[Ranking]
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    inputs: dict[str, list[Ranking]] = field(default_factory=dict)
    """With ``run(..., keep_inputs=True)``: what each rerank stage received (its top ``k``), by stage label, so a
    reranker can be compared with its own input."""
    partial: dict[str, str] = field(default_factory=dict)
    """Shards left out of these results (name -> error), when a sharded collection allows partial answers."""
    failed: dict[str, str] = field(default_factory=dict)
    """With ``run(..., on_error="stop"|"skip")``: queries left out of ``rankings`` (qid -> why), in query order."""

    def run(self, name: str = "rankstack") -> Run:
        return Run.from_rankings(self.rankings, name=name)


class _Context:
    """One execution: document lookup, timings, per-query stats and stable stage labels."""

    def __init__(self, documents: Mapping[str, Document] | None, show_progress: bool | None,
                 keep_inputs: bool = False, on_error: str = "raise"):
        self.documents = documents
        self.show_progress = show_progress
        self.keep_inputs = keep_inputs
        self.on_error = on_error
        self.failed: dict[str, str] = {}  # qid -> why, for queries a stage could not finish (on_error stop|skip)
        self.inputs: dict[str, list[Ranking]] = {}
        self.timings: dict[str, float] = {}
        self.stats: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._labels: dict[int, str] = {}

    def label(self, node: object, base: str) -> str:
        if id(node) not in self._labels:
            used = set(self._labels.values())
            name, n = base, 1
            while name in used:
                n += 1
                name = f"{base}_{n}"
            self._labels[id(node)] = name
        return self._labels[id(node)]

    def record(self, label: str, seconds: float, rankings: Sequence[Ranking]) -> None:
        self.timings[label] = self.timings.get(label, 0.0) + seconds
        for r in rankings:
            self.stats[r.query.qid][label] = len(r)

    def attach(self, ranking: Ranking, upto: int | None = None) -> Ranking:
        """``ranking`` with documents attached to its first ``upto`` candidates (all when None)."""
        n = len(ranking) if upto is None else min(upto, len(ranking))
        if self.documents is None or n == 0:
            return ranking
        docs = ranking.documents
        if all(d is not None for d in docs[:n]):
            return ranking
        docids = ranking.docids
        docs[:n] = [d if d is not None else _lookup(self.documents, i) for d, i in zip(docs[:n], docids[:n])]
        return Ranking.from_arrays(ranking.query, docids, ranking.scores, docs)


def _lookup(documents: Mapping[str, Document], docid: str) -> Document | None:
    try:
        return documents[docid]
    except KeyError:
        return None


# ---- stages ---------------------------------------------------------------------------------------------------

class Stage(ABC):
    """Transforms the rankings of a batch. ``need(k)``: how many input candidates it wants in order to return
    ``k``."""

    base_label = "stage"

    def need(self, k: int) -> int:
        return k

    @abstractmethod
    def apply(self, rankings: list[Ranking], ctx: _Context) -> list[Ranking]: ...

    @abstractmethod
    def describe(self) -> str: ...

    def stages(self) -> tuple[Stage, ...]:
        return (self,)

    def __mod__(self, k: int) -> Stages:
        return Stages(self.stages() + (Cutoff(k),))

    def __rshift__(self, other) -> Stages:
        return Stages(self.stages() + as_stages(other))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class Stages(Stage):
    """Several stages in order, built by ``reranker % 10`` or ``Rerank(a) >> Rerank(b)`` before a source exists."""

    def __init__(self, stages: Iterable[Stage]):
        self._stages = tuple(stages)

    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def need(self, k: int) -> int:
        for s in reversed(self._stages):
            k = s.need(k)
        return k

    def apply(self, rankings, ctx):
        for s in self._stages:
            rankings = s.apply(rankings, ctx)
        return rankings

    def describe(self) -> str:
        return _describe_stages(self._stages).strip()


def as_stages(other) -> tuple[Stage, ...]:
    if isinstance(other, Stage):
        return other.stages()
    if isinstance(other, Reranker):
        return (Rerank(other),)
    if isinstance(other, (Retriever, Source)):
        raise BadInput("after >> comes a reranker, a filter or a cutoff; to combine retrievers, fuse them "
                       "(a + b, or rrf(a, b) in a spec)")
    if callable(other):
        return (Apply(other),)
    raise BadInput(f"cannot chain a {type(other).__name__} into a pipeline")


class Cutoff(Stage):
    """Keep the first ``k`` candidates of every ranking."""

    base_label = "cutoff"

    def __init__(self, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise BadInput(f"cutoff must be a positive integer, got {k!r}")
        self.k = k

    def need(self, k: int) -> int:
        return self.k

    def apply(self, rankings, ctx):
        return [r.top(self.k) for r in rankings]

    def describe(self) -> str:
        return f"% {self.k}"


class Rerank(Stage):
    """Rerank the top ``depth`` candidates; the tail below keeps its input order, scored below the head.

    Head scores are the reranker's (cross-encoder logits, cosine, or rank-based ``n - i`` for LLM rerankers), in
    trec_eval order; tail candidate ``j`` (0-based) scores ``lowest - (j + 1) * step``, where ``lowest`` is the
    lowest head score and ``step`` is 1 (or ``1e-6 * |lowest|`` when that is larger, so the steps survive float
    rounding). Queries without candidates pass through untouched.
    """

    base_label = "rerank"

    def __init__(self, reranker, depth: int | None = None, *, name: str | None = None):
        depth = DEFAULT_RERANK_DEPTH if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise BadInput(f"rerank depth must be a positive integer, got {depth!r}")
        self.reranker = reranker
        self.depth = depth
        self.name = name or getattr(reranker, "name", type(reranker).__name__)

    def need(self, k: int) -> int:
        return max(k, self.depth)

    def apply(self, rankings, ctx):
        out = list(rankings)
        todo = [i for i, r in enumerate(rankings) if r.candidates]
        heads = []
        for i in todo:
            head = ctx.attach(rankings[i].top(self.depth))
            missing = [c.docid for c in head.candidates if c.document is None]
            if missing:
                raise BadInput(f"the reranker needs passage texts but candidates {missing[:3]} have none: the "
                               f"pipeline has no document store for them (build it from a dataset or a collection, "
                               f"or attach documents)")
            heads.append(head)
        step = self.reranker.batch_queries or max(1, len(heads))
        done: dict[int, Ranking] = {}
        label = ctx.label(self, self.base_label)
        bar = tqdm(total=len(heads), desc=label, unit=" queries",
                   disable=not progress_enabled(ctx.show_progress) or len(heads) <= step)
        for s in range(0, len(heads), step):
            chunk = [(i, h) for i, h in zip(todo[s:s + step], heads[s:s + step]) if h.query.qid not in ctx.failed]
            try:
                got = self.reranker.rerank_batch([h for _, h in chunk]) if chunk else []
            except Exception as exc:  # noqa: BLE001 - on_error=stop|skip: the run keeps every finished query
                if ctx.on_error == "raise":
                    raise
                self._fail(ctx, [h for _, h in chunk], todo[s + step:], rankings, f"{label}: {exc}")
                if ctx.on_error == "stop":
                    break
                got, chunk = [], []
            finally:
                bar.update(min(step, len(heads) - s))
            for (_, head), r, st in zip(chunk, got, _reranker_stats(self.reranker, len(chunk))):
                if sorted(head.docids) != sorted(r.docids):
                    raise RankStackError(f"reranker {self.name} returned other candidates than it was given for "
                                         f"query {head.query.qid!r}")
                ctx.stats[head.query.qid].update(st)
            done.update((i, r) for (i, _), r in zip(chunk, got))
        bar.close()
        for i, head in done.items():
            out[i] = _with_tail(head, rankings[i].candidates[self.depth:])
        return out

    def _fail(self, ctx, heads: Sequence[Ranking], later: Sequence[int], rankings, why: str) -> None:
        """Record ``heads``' queries as failed (their rankings pass through, dropped from the output at the end);
        with on_error=stop, every later query too."""
        for h in heads:
            ctx.failed[h.query.qid] = why
        logger.error("query %s failed: %s", heads[0].query.qid, why)
        if ctx.on_error == "stop":
            for i in later:
                ctx.failed.setdefault(rankings[i].query.qid, f"not run: the run stopped at query {heads[0].query.qid}")

    def describe(self) -> str:
        return f">> {self.name}:depth={self.depth}"


def _reranker_stats(reranker, n: int) -> list[dict[str, float]]:
    stats = getattr(reranker, "last_stats", None)
    if not stats or len(stats) != n:
        return [{} for _ in range(n)]
    out = []
    for s in stats:
        d = s.as_dict() if hasattr(s, "as_dict") else dict(s)
        out.append({f"llm_{k}": float(v) for k, v in d.items()})
    return out


def _with_tail(head: Ranking, tail: Sequence[Candidate]) -> Ranking:
    cands = sorted(head.candidates, key=lambda c: (c.score, c.docid), reverse=True)
    if not tail:
        return Ranking(query=head.query, candidates=tuple(cands))
    lowest = min(c.score for c in cands) if cands else 0.0
    if not math.isfinite(lowest):
        lowest = -1e30
    step = max(1.0, abs(lowest) * 1e-6)
    cands += [Candidate(docid=c.docid, score=lowest - (j + 1) * step, document=c.document)
              for j, c in enumerate(tail)]
    return Ranking(query=head.query, candidates=tuple(cands))


class Filter(Stage):
    """Keep candidates whose document metadata matches ``where`` (``{field: value}``; a list value means any of
    them; all fields must match). Asks its input for ``overfetch`` times the candidates it must return."""

    base_label = "filter"

    def __init__(self, where: Mapping[str, object], *, overfetch: int = 10):
        if not where:
            raise BadInput("a filter needs at least one field=value condition")
        if isinstance(overfetch, bool) or not isinstance(overfetch, int) or overfetch < 1:
            raise BadInput(f"overfetch must be a positive integer, got {overfetch!r}")
        self.where = dict(where)
        self.overfetch = overfetch

    def need(self, k: int) -> int:
        return k * self.overfetch

    def apply(self, rankings, ctx):
        if ctx.documents is None and any(c.document is None for r in rankings for c in r.candidates):
            raise BadInput("metadata filters need the candidates' documents, and this pipeline has no document "
                           "store")
        out = []
        for r in rankings:
            r = ctx.attach(r)
            out.append(Ranking(query=r.query, candidates=tuple(c for c in r.candidates
                                                              if matches(c.document, self.where))))
        return out

    def describe(self) -> str:
        return f">> {filter_item(self.where)}"


def matches(doc: Document | None, where: Mapping[str, object]) -> bool:
    """``doc``'s metadata has every field of ``where`` equal to its value (or to one of its values, for a list).
    Text from a spec string matches the metadata value's text (``year=2020`` matches the number 2020)."""
    if doc is None:
        return False
    for key, want in where.items():
        have = doc.metadata.get(key)
        options = want if isinstance(want, (list, tuple)) else [want]
        if not any(_equal(have, w) for w in options):
            return False
    return True


def _equal(have, want) -> bool:
    if have == want and type(have) is type(want):
        return True
    if isinstance(have, bool) or isinstance(want, bool):
        return str(have).lower() == str(want).lower()
    if isinstance(want, str) and have is not None and not isinstance(have, str):
        return str(have) == want
    return have == want


class Apply(Stage):
    """A user function ``list[Ranking] -> list[Ranking]`` as a stage (Python composition only)."""

    base_label = "apply"

    def __init__(self, fn: Callable[[list[Ranking]], list[Ranking]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "fn")

    def apply(self, rankings, ctx):
        return list(self.fn(rankings))

    def describe(self) -> str:
        return f">> apply({self.name})"


# ---- sources --------------------------------------------------------------------------------------------------

class Source(ABC):
    @abstractmethod
    def produce(self, queries: Sequence[Query], k: int, ctx: _Context) -> list[Ranking]: ...

    @abstractmethod
    def describe(self) -> str: ...

    def documents(self) -> list[Mapping[str, Document]]:
        return []


class Retrieve(Source):
    def __init__(self, retriever: Retriever):
        if not isinstance(retriever, Retriever):
            raise BadInput(f"expected a Retriever, got {type(retriever).__name__}")
        self.retriever = retriever

    def produce(self, queries, k, ctx):
        t0 = time.perf_counter()
        rankings = self.retriever.retrieve(list(queries), k)
        ctx.record(ctx.label(self, f"retrieve_{self.retriever.kind}"), time.perf_counter() - t0, rankings)
        return rankings

    def describe(self) -> str:
        return self.retriever.name

    def documents(self):
        return [self.retriever.documents] if self.retriever.documents is not None else []


class Fuse(Source):
    """Fuse the rankings of several pipelines: ``rrf`` (reciprocal rank fusion with constant ``rrf_k``) or
    ``interp`` (``alpha * first + (1 - alpha) * second`` of min-max normalised scores; exactly two inputs)."""

    def __init__(self, method: str, inputs: Sequence, *, rrf_k: int = 60, alpha: float = 0.5):
        if method not in FUSION_METHODS:
            raise BadInput(f"unknown fusion method {method!r}; choose one of {', '.join(FUSION_METHODS)}")
        inputs = [as_pipeline(p) for p in inputs]
        if len(inputs) < 2:
            raise BadInput(f"{method} fuses at least two inputs, got {len(inputs)}")
        if method == "interp":
            if len(inputs) != 2:
                raise BadInput(f"interp fuses exactly two inputs (alpha weights the first), got {len(inputs)}")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                raise BadInput(f"alpha must lie in [0, 1], got {alpha!r}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
            raise BadInput(f"the RRF constant rrf_k must be an integer >= 0, got {rrf_k!r}")
        self.method, self.inputs, self.rrf_k, self.alpha = method, inputs, rrf_k, float(alpha)

    def produce(self, queries, k, ctx):
        parts = [p.produce(queries, k, ctx) for p in self.inputs]
        t0 = time.perf_counter()
        runs = [Run.from_rankings(p) for p in parts]
        fused = rrf(runs, rrf_k=self.rrf_k) if self.method == "rrf" else interpolate(runs[0], runs[1],
                                                                                     alpha=self.alpha)
        out = [Ranking.from_scores(q, fused.scores.get(q.qid, {})) for q in queries]
        ctx.record(ctx.label(self, "fuse"), time.perf_counter() - t0, out)
        return out

    def describe(self) -> str:
        opt = f":rrf_k={self.rrf_k}" if self.method == "rrf" else f":alpha={self.alpha:g}"
        return f"{self.method}{opt}(" + ", ".join(p.describe() for p in self.inputs) + ")"

    def documents(self):
        return [d for p in self.inputs for d in p.source.documents()]


class Given(Source):
    """Candidates supplied by the caller (a run file, a RankGPT JSON, a rerank request), by qid."""

    def __init__(self, rankings: Iterable[Ranking], *, name: str = "given"):
        self.rankings = {r.query.qid: r for r in rankings}
        self.name = name

    def produce(self, queries, k, ctx):
        t0 = time.perf_counter()
        out = []
        for q in queries:
            r = self.rankings.get(q.qid)
            out.append(Ranking.from_arrays(q, r.docids[:k], r.scores[:k], r.documents[:k]) if r is not None
                       else Ranking(query=q))
        ctx.record(ctx.label(self, "input"), time.perf_counter() - t0, out)
        return out

    def describe(self) -> str:
        return self.name

    def documents(self):
        return [{c.docid: c.document for r in self.rankings.values() for c in r.candidates
                 if c.document is not None}]


# ---- the pipeline ---------------------------------------------------------------------------------------------

def as_pipeline(x) -> Pipeline:
    if isinstance(x, Pipeline):
        return x
    if isinstance(x, Retriever):
        return x.pipeline()
    if isinstance(x, Source):
        return Pipeline(x)
    raise BadInput(f"expected a retriever or a pipeline, got {type(x).__name__}")


def _describe_stages(stages: Sequence[Stage]) -> str:
    return "".join(" " + s.describe() for s in stages)


class Pipeline(Retriever):
    """A source, then stages. Built by :func:`rankstack.pipeline.compile_pipeline` from a spec, or with operators:
    ``(bm25 + dense) >> Rerank(first, depth=20) % 10``. Both build the same objects.

    ``documents``: where candidate texts come from for rerankers and filters (default: the retrievers' own, e.g. a
    Lucene index's document store).
    """

    kind = "pipeline"

    def __init__(self, source: Source, stages: Sequence[Stage] = (), *,
                 documents: Mapping[str, Document] | None = None):
        if not isinstance(source, Source):
            source = as_pipeline(source).source if isinstance(source, Retriever) else source
        if not isinstance(source, Source):
            raise BadInput(f"a pipeline starts with a retriever or a fusion, got {type(source).__name__}")
        self.source = source
        self.stages = tuple(s for st in stages for s in st.stages())
        self._documents = documents
        self._plus = False  # made by `a + b`: a further `+ c` joins the same fusion

    # -- composition --
    def _copy(self, source=None, stages=None) -> Pipeline:
        return Pipeline(source or self.source, self.stages if stages is None else stages, documents=self._documents)

    def __rshift__(self, stage) -> Pipeline:
        return self._copy(stages=self.stages + as_stages(stage))

    def __mod__(self, k: int) -> Pipeline:
        return self._copy(stages=self.stages + (Cutoff(k),))

    def __add__(self, other) -> Pipeline:
        other = as_pipeline(other)
        inputs = list(self.source.inputs) if self._plus else [self]
        fused = Pipeline(Fuse("rrf", inputs + [other]), documents=self._documents)
        fused._plus = True
        return fused

    def __radd__(self, other) -> Pipeline:
        return as_pipeline(other) + self

    @property
    def documents(self) -> Mapping[str, Document] | None:  # type: ignore[override]
        if self._documents is not None:
            return self._documents
        found = self.source.documents()
        if not found:
            return None
        return found[0] if len(found) == 1 else collections.ChainMap(*found)

    def with_documents(self, documents: Mapping[str, Document] | None) -> Pipeline:
        return Pipeline(self.source, self.stages, documents=documents)

    # -- description --
    def describe(self) -> str:
        return self.source.describe() + _describe_stages(self.stages)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.describe()

    def __repr__(self) -> str:
        return f"<Pipeline {self.describe()}>"

    # -- execution --
    def produce(self, queries: Sequence[Query], k: int, ctx: _Context) -> list[Ranking]:
        wants = [k]
        for stage in reversed(self.stages):
            wants.append(stage.need(wants[-1]))
        rankings = self.source.produce(queries, wants[-1], ctx)
        for stage in self.stages:
            if isinstance(stage, Cutoff):
                rankings = stage.apply(rankings, ctx)
                continue
            label = ctx.label(stage, stage.base_label)
            if ctx.keep_inputs and isinstance(stage, Rerank):
                ctx.inputs[label] = list(rankings)
            t0 = time.perf_counter()
            rankings = stage.apply(rankings, ctx)
            ctx.record(label, time.perf_counter() - t0, rankings)
        return rankings

    def run(self, queries: Sequence[Query], k: int = 1000, *, with_documents: bool = False,
            show_progress: bool | None = None, keep_inputs: bool = False, on_error: str = "raise") -> PipelineOutput:
        """Run the pipeline on a batch: the top ``k`` per query, timings per stage, and per-query stats.
        ``with_documents``: attach each returned candidate's document (when the pipeline has a store);
        ``keep_inputs``: also return what each rerank stage received (see :attr:`PipelineOutput.inputs`).
        ``on_error``: what a query that a rerank stage cannot finish does: ``raise`` (the error ends the call),
        ``stop`` (later queries are not reranked) or ``skip`` (they are); either way the output holds every
        finished query and :attr:`PipelineOutput.failed` names the others, so nothing finished is lost."""
        if on_error not in ON_ERROR:
            raise BadInput(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        queries = list(queries)
        validate_queries(queries, k)
        ctx = _Context(self.documents, show_progress, keep_inputs, on_error)
        if not queries:
            return PipelineOutput(rankings=[], timings={}, stats={})
        rankings = [r.top(k) for r in self.produce(queries, k, ctx)]
        if ctx.failed:
            rankings = [r for r in rankings if r.query.qid not in ctx.failed]
        if with_documents:
            rankings = [ctx.attach(r) for r in rankings]
        kept = {r.query.qid for r in rankings}
        return PipelineOutput(rankings=rankings, timings=dict(ctx.timings),
                              stats={q.qid: dict(ctx.stats.get(q.qid, {})) for q in queries if q.qid in kept},
                              inputs={label: [r.top(k) for r in rs if r.query.qid in kept]
                                      for label, rs in ctx.inputs.items()},
                              failed={q.qid: ctx.failed[q.qid] for q in queries if q.qid in ctx.failed})

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        return self.run(queries, k).rankings
