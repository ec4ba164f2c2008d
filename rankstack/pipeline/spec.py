"""Pipeline specs: what to run, as a string or a TOML/YAML table, checked before anything loads.

String form (items use the project's one ``kind:key=value`` grammar, :mod:`rankstack.spec`)::

    bm25
    dense:index=(binary:rescore=int8)
    rrf(bm25 % 100, dense:index=(binary:rescore=int8) % 100) >> first:depth=20 % 10
    interp:alpha=0.3(dense % 1000, bm25 % 1000)
    bm25 + dense >> filter:lang=en >> cross-encoder:depth=50

Operators, as in Python (``%`` binds tightest, then ``+``, then ``>>``):
- ``a >> s``: then apply stage ``s`` (a reranker item, or ``filter:field=value,...``);
- ``x % n``: keep the top ``n`` (after a retriever: fetch ``n``);
- ``a + b``: reciprocal rank fusion (``a + b + c`` fuses all three at once; ``rrf(...)``/``interp(...)`` take
  options: ``rrf:rrf_k=60(a, b)``, ``interp:alpha=0.3(a, b)``; ``alpha=auto`` is tuned by ``rankstack eval``).

Retrievers: ``bm25`` (k1, b, threads, engine=auto|lucene|matrix), the late-interaction ``maxsim`` (exact), ``muvera``
(k_sim, d_proj, reps, candidates, index) and ``plaid`` (nbits, ncentroids, nprobe, candidates), all with model,
batch_size, query_length, document_length, device; ``dense`` (model, index, batch_size, normalize, max_seq_length,
query_prefix, document_prefix, device, backend=auto|torch|onnx|onnx-int8|openvino|openvino-bf16, int8_scope, cache) and
``splade`` (learned sparse: model, query=model|idf, engine=scipy|lucene|seismic, batch_size, max_seq_length, device, threads, and
Seismic's n_postings, summary_energy, query_cut, heap_factor). Rerankers: the kinds of
:mod:`rankstack.rerank.factory` (or, in the service, the names of its configured rerankers), with ``depth`` = how
many candidates they rerank.

Presets: ``bm25``, ``dense``, ``hybrid-rrf``, ``hybrid-interp``, ``splade``, ``splade-if`` (inference-free
queries), the SPLADE hybrids and ``hybrid3-rrf`` (BM25 + dense + SPLADE), see :data:`PRESETS`.

Table form (the service config; every key optional except ``retrievers``)::

    retrievers = ["bm25", "dense:index=(binary:rescore=int8)"]
    fusion = "rrf"          # or "interp" (with alpha), when there are several retrievers
    rrf_k = 60
    retrieve_depth = 100    # candidates fetched per retriever (a cutoff after each)
    reranker = "first"      # a reranker spec or name; or "none"
    rerank_depth = 20
    k = 10                  # a final cutoff
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from rankstack.errors import BadInput
from rankstack.pipeline.core import filter_item
from rankstack.retrieval import kinds
from rankstack.spec import Item, Option, Parser, check_options, coerce

__all__ = ["PipelineSpec", "RetrieverSpec", "FusionSpec", "RerankSpec", "FilterSpec", "RelevanceSpec", "CutSpec",
           "PRESETS", "RELEVANCE_OPTIONS",
           "parse_pipeline", "pipeline_from_table", "split_named", "filter_item", "retriever_item",
           "string_help"]

PRESETS = {
    "bm25": "bm25",
    "dense": "dense",
    "hybrid-rrf": "rrf(bm25 % 1000, dense % 1000)",
    "hybrid-interp": "interp:alpha=auto(dense % 1000, bm25 % 1000)",
    "splade": "splade",
    "sparse": "splade",
    "splade-if": "splade:query=idf",
    "splade-bm25-rrf": "rrf(bm25 % 1000, splade % 1000)",
    "splade-dense-rrf": "rrf(dense % 1000, splade % 1000)",
    "splade-dense-interp": "interp:alpha=auto(dense % 1000, splade % 1000)",
    "hybrid3-rrf": "rrf(bm25 % 1000, dense % 1000, splade % 1000)",
    "hybrid3-interp": "interp:alpha=auto(interp:alpha=auto(dense % 1000, bm25 % 1000), splade % 1000)",
    "maxsim": "maxsim",
    "muvera": "muvera",
    "plaid": "plaid",
    "maxsim-prf": "maxsim % 1000 >> colbert-prf:depth=1000",
    "hybrid-maxsim": "rrf(bm25 % 100, dense % 100) % 100 >> maxsim:depth=100",
}



def _alpha(value: Any) -> Any:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    v = coerce(value, 0.5, key="alpha", where="fusion 'interp'")
    if not 0.0 <= v <= 1.0:
        raise BadInput(f"fusion 'interp': alpha must lie in [0, 1], got {v}")
    return v


FUSION_OPTIONS: dict[str, dict[str, Option]] = {
    "rrf": {"rrf_k": Option(60, low=0, doc="RRF's rank constant (not a cutoff)")},
    "interp": {"alpha": Option(0.5, parse=_alpha, doc="weight of the first input, or auto (tuned by rankstack eval)")},
}
RELEVANCE_OPTIONS: dict[str, Option] = {"adapter": Option(type=str), "min": Option(type=float, low=0.0, high=1.0)}



def string_help() -> str:
    """What a pipeline string is, naming the retrieval kinds registered now."""
    return ("a pipeline is a retriever (" + ", ".join(kinds.names()) + "), a fusion (a + b, rrf(a, b), "
            "interp:alpha=0.3(a, b)) or a preset (" + ", ".join(PRESETS) + "), then optional stages: >> reranker "
            "(e.g. first:depth=20), >> filter:field=value, >> relevance:adapter=FILE,min=0.5 (or filter(0.5)), % k")


# ---- the tree -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrieverSpec:
    item: Item

    def __str__(self) -> str:
        return str(self.item)


@dataclass(frozen=True)
class FusionSpec:
    item: Item
    inputs: tuple[PipelineSpec, ...]

    def __str__(self) -> str:
        return f"{self.item}(" + ", ".join(str(p) for p in self.inputs) + ")"


@dataclass(frozen=True)
class RerankSpec:
    item: Item

    def __str__(self) -> str:
        return f" >> {self.item}"


@dataclass(frozen=True)
class FilterSpec:
    item: Item

    def __str__(self) -> str:
        return f" >> {self.item}"


@dataclass(frozen=True)
class RelevanceSpec:
    """A relevance filter: ``relevance:adapter=FILE,min=0.5``, or ``filter(0.5)`` (the resources' default
    adapter at threshold 0.5); without ``min`` the adapter's own threshold."""

    item: Item

    def __str__(self) -> str:
        return f" >> {self.item}"


@dataclass(frozen=True)
class CutSpec:
    k: int

    def __str__(self) -> str:
        return f" % {self.k}"


StageSpec = Union[RerankSpec, FilterSpec, RelevanceSpec, CutSpec]


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline: a source (retriever or fusion) and stages. ``str()`` gives the canonical spec string,
    which parses back to an equal spec."""

    source: Union[RetrieverSpec, FusionSpec]
    stages: tuple[StageSpec, ...] = ()

    def __str__(self) -> str:
        return str(self.source) + "".join(str(s) for s in self.stages)

    def then(self, *stages: StageSpec) -> PipelineSpec:
        return PipelineSpec(self.source, self.stages + tuple(stages))

    def walk(self) -> Iterable[Union[PipelineSpec, RetrieverSpec, FusionSpec, StageSpec]]:
        yield self
        yield self.source
        if isinstance(self.source, FusionSpec):
            for p in self.source.inputs:
                yield from p.walk()
        yield from self.stages

    def retrievers(self) -> list[RetrieverSpec]:
        return [n for n in self.walk() if isinstance(n, RetrieverSpec)]

    def rerankers(self) -> list[RerankSpec]:
        return [n for n in self.walk() if isinstance(n, RerankSpec)]

    def map(self, fn) -> PipelineSpec:
        """A copy with ``fn`` applied to every retriever, fusion and stage node (bottom-up); ``fn`` returns the
        node to use instead."""
        src = self.source
        if isinstance(src, FusionSpec):
            src = FusionSpec(src.item, tuple(p.map(fn) for p in src.inputs))
        return PipelineSpec(fn(src), tuple(fn(s) for s in self.stages))


# ---- checking items -------------------------------------------------------------------------------------------

def _typed(item: Item, schema: Mapping[str, Any], where: str) -> Item:
    return check_options(item, schema, where)


def retriever_item(item: Item | str) -> Item:
    """A retriever item (text or parsed) checked and with typed option values, as pipelines hold them (under its
    kind's own name: ``sparse`` is ``splade``)."""
    return kinds.canonical(item)


def filter_conditions(item: Item) -> dict[str, object]:
    return {k: (v.split(";") if ";" in v else v) for k, v in item.options}


class _Context:
    def __init__(self, names: Mapping[str, Any] | None):
        self.names = dict(names or {})

    def role(self, kind: str) -> str | None:
        from rankstack.rerank.factory import RERANKER_KINDS

        if kind in self.names:
            return "reranker"
        if kinds.known(kind):
            return "retriever"
        if kind in FUSION_OPTIONS:
            return "fusion"
        if kind in PRESETS:
            return "preset"
        if kind == "filter":
            return "filter"
        if kind == "relevance":
            return "relevance filter"
        if kind in RERANKER_KINDS:
            return "reranker"
        return None

    def reranker(self, item: Item) -> Item:
        """Check a reranker item (kind or configured name) against its class; keep it as written."""
        from rankstack.rerank.factory import RerankerSpec

        RerankerSpec.from_item(item, self.names)
        return item

    def known(self) -> str:
        from rankstack.rerank.factory import RERANKER_KINDS

        rerankers = list(dict.fromkeys([*self.names, *RERANKER_KINDS]))
        return (f"retrievers: {', '.join(kinds.names())}; fusions: {', '.join(FUSION_OPTIONS)}; presets: "
                f"{', '.join(PRESETS)}; rerankers: {', '.join(rerankers)}; and the stages filter and relevance")


class _PipelineParser(Parser):
    def __init__(self, text: str, ctx: _Context):
        super().__init__(text, "pipeline spec")
        self.ctx = ctx

    def pipeline(self) -> PipelineSpec:
        spec = self.chain()
        if not self.at_end():
            raise self.error("unexpected text; " + string_help())
        return spec

    def chain(self) -> PipelineSpec:
        spec = self.sum()
        while self.eat(">>"):
            spec = spec.then(*self.stage_group())
        return spec

    def sum(self) -> PipelineSpec:
        parts = [self.cut(self.source())]
        while self.eat("+"):
            parts.append(self.cut(self.source()))
        if len(parts) == 1:
            return parts[0]
        return PipelineSpec(FusionSpec(Item("rrf"), tuple(parts)))

    def cut(self, spec: PipelineSpec) -> PipelineSpec:
        while self.eat("%"):
            spec = spec.then(CutSpec(self._cutoff()))
        return spec

    def _cutoff(self) -> int:
        at = self.pos
        n = self.integer("a cutoff after %")
        if n <= 0:
            raise self.error(f"a cutoff must be a positive integer, got {n}", at)
        return n

    def source(self) -> PipelineSpec:
        if self.eat("("):
            spec = self.chain()
            self.expect(")", "')'")
            return spec
        start = self.pos
        kind = self.name("a retriever, a fusion or a preset")
        role = self.ctx.role(kind)
        if role == "preset":
            if self.text.startswith((":", "("), self.pos):
                raise self.error(f"preset {kind!r} takes no options; write it out to change them: "
                                 f"{PRESETS[kind]}", start)
            return parse_pipeline(PRESETS[kind], self.ctx.names)
        if role == "retriever":
            try:
                item = kinds.canonical(self.item(kind))
            except BadInput as exc:
                raise self.error(str(exc), start) from None
            self.skip_ws()
            if self.text.startswith("(", self.pos):
                raise self.error(f"{kind!r} is a retriever and takes no inputs; fusions do: rrf(a, b), interp(a, b)")
            return PipelineSpec(RetrieverSpec(item))
        if role == "fusion":
            item = self.checked(self.item(kind), FUSION_OPTIONS[kind], f"fusion {kind!r}", start)
            self.skip_ws()
            if not self.text.startswith("(", self.pos):
                raise self.error(f"fusion {kind!r} needs its inputs in parentheses: {kind}(bm25, dense)")
            self.pos += 1
            inputs = [self.chain()]
            while self.eat(","):
                inputs.append(self.chain())
            self.expect(")", "')' closing the fusion's inputs")
            if len(inputs) < 2:
                raise self.error(f"{kind} fuses at least two inputs", start)
            if kind == "interp" and len(inputs) != 2:
                raise self.error("interp fuses exactly two inputs (alpha weights the first)", start)
            return PipelineSpec(FusionSpec(item, tuple(inputs)))
        if role in ("reranker", "filter", "relevance filter"):
            raise self.error(f"a pipeline starts with a retriever or a fusion; {kind!r} is a {role}: put it after "
                             f"'>>'", start)
        raise self.error(f"unknown component {kind!r}; {self.ctx.known()}", start)

    def stage_group(self) -> list[StageSpec]:
        if self.eat("("):
            stages = self.stage_group()
            while self.eat(">>"):
                stages += self.stage_group()
            self.expect(")", "')'")
        else:
            stages = [self.stage()]
        while self.eat("%"):
            stages.append(CutSpec(self._cutoff()))
        return stages

    def stage(self) -> StageSpec:
        start = self.pos
        kind = self.name("a reranker or a filter after '>>'")
        from rankstack.rerank.factory import RERANKER_KINDS

        # after '>>' a name that is both a retriever and a reranker (maxsim) is the reranker
        role = "reranker" if kind in RERANKER_KINDS else self.ctx.role(kind)
        if role == "reranker":
            item = self.item(kind)
            try:
                return RerankSpec(self.ctx.reranker(item))
            except BadInput as exc:
                raise self.error(str(exc), start) from None
        if role == "filter" and self.text.startswith("(", self.pos):  # filter(0.5): a relevance threshold
            self.pos += 1
            at = self.pos
            m = re.match(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\)", self.text[self.pos:])
            if not m:
                raise self.error("filter(...) takes a relevance threshold in [0, 1], e.g. filter(0.5)", at)
            self.pos += m.end()
            return RelevanceSpec(self.checked(Item("relevance", (("min", m.group(1)),)), RELEVANCE_OPTIONS,
                                              "relevance filter", start))
        if role == "relevance filter":
            return RelevanceSpec(self.checked(self.item(kind), RELEVANCE_OPTIONS, "relevance filter", start))
        if role == "filter":
            item = self.item(kind)
            if not item.options:
                raise self.error("a filter needs conditions: filter:field=value (a;b for any of several)", start)
            if any(isinstance(v, Item) for _, v in item.options):
                raise self.error("filter values are text, not nested specs", start)
            return FilterSpec(item)
        if role in ("retriever", "fusion", "preset"):
            raise self.error(f"after '>>' comes a reranker, a filter or a cutoff; {kind!r} is a {role}: fuse "
                             f"retrievers with + or rrf(...)", start)
        raise self.error(f"unknown component {kind!r}; {self.ctx.known()}", start)

    def checked(self, item: Item, schema, where: str, start: int) -> Item:
        try:
            return _typed(item, schema, where)
        except BadInput as exc:
            raise self.error(str(exc), start) from None


def parse_pipeline(text: str | PipelineSpec, names: Mapping[str, Any] | None = None) -> PipelineSpec:
    """Parse and check a pipeline spec string. ``names``: named rerankers (name -> RerankerSpec) that may stand
    for reranker kinds (the service's ``[rerankers]``)."""
    if isinstance(text, PipelineSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"empty pipeline spec; {string_help()}")
    return _PipelineParser(text.strip(), _Context(names)).pipeline()


def split_named(text: str) -> tuple[str | None, str]:
    """``"name=spec"`` -> ``("name", "spec")``; a plain spec -> ``(None, spec)`` (names label runs in reports)."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*=(?!=)(.*)$", text, re.S)
    if m and m.group(2).strip():
        return m.group(1), m.group(2).strip()
    return None, text


# ---- the table form -------------------------------------------------------------------------------------------

TABLE_KEYS = ("spec", "retrievers", "fusion", "rrf_k", "alpha", "retrieve_depth", "reranker", "rerank_depth",
              "filters", "k")


def _item_from_config(value, where: str) -> str:
    """A retriever or reranker given as a spec string or a table ``{kind, option: value, ...}``, as spec text."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "kind" in value:
        def fmt(v):
            if isinstance(v, Mapping):
                return Item(str(v.get("kind")), tuple((k, fmt(x)) for k, x in v.items() if k != "kind"))
            if isinstance(v, (list, tuple)):  # e.g. heads = [[18, 7], [18, 8]]
                return ";".join(".".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x) for x in v)
            return str(v).lower() if isinstance(v, bool) else str(v)

        return str(Item(str(value["kind"]), tuple((k, fmt(v)) for k, v in value.items() if k != "kind")))
    raise BadInput(f"{where}: expected a spec string or a table with a 'kind', got {value!r}")


def pipeline_from_table(table: Mapping[str, Any], names: Mapping[str, Any] | None = None,
                        filters: Mapping[str, object] | None = None, *, overfetch: int = 10) -> PipelineSpec:
    """The table form as a spec. ``filters`` (metadata conditions from a request) become a filter stage after the
    fusion; the fetch depth per retriever is then multiplied by ``overfetch`` so that about as many candidates
    survive."""
    bad = [k for k in table if k not in TABLE_KEYS]
    if bad:
        raise BadInput(f"pipeline table: unknown key {bad[0]!r}; keys are {', '.join(TABLE_KEYS)}")
    filters = {**dict(table.get("filters") or {}), **dict(filters or {})}
    if table.get("spec"):
        others = [k for k in table if k not in ("spec", "filters", "k") and table[k] is not None]
        if others:
            raise BadInput(f"pipeline table: 'spec' says everything; drop {others} or drop 'spec'")
        spec = parse_pipeline(table["spec"], names)
        if filters:
            spec = _insert_filter(spec, filters)
    else:
        retrievers = table.get("retrievers")
        if not retrievers:
            raise BadInput("pipeline table: give 'retrievers' (a list of retriever specs) or 'spec'")
        if isinstance(retrievers, str):
            retrievers = [retrievers]
        depth = table.get("retrieve_depth")
        if depth is not None:
            depth = coerce(depth, int, key="retrieve_depth", where="pipeline table")
            if depth <= 0:
                raise BadInput(f"pipeline table: retrieve_depth must be positive, got {depth}")
            if filters:
                depth *= overfetch
        texts = [_item_from_config(r, "pipeline table retrievers") for r in retrievers]
        for t in texts:  # each entry on its own first, so that an error quotes what the user wrote
            one = parse_pipeline(t, names)
            if not isinstance(one.source, RetrieverSpec) or one.stages:
                raise BadInput(f"pipeline table: retrievers holds {t!r}, which is not a retriever (bm25, dense...)")
        parts = [f"({t})" + (f" % {depth}" if depth else "") for t in texts]
        fusion = table.get("fusion") or "rrf"
        if len(parts) > 1:
            opts = []
            if fusion == "rrf" and table.get("rrf_k") is not None:
                opts.append(f"rrf_k={table['rrf_k']}")
            if fusion == "interp" and table.get("alpha") is not None:
                opts.append(f"alpha={table['alpha']}")
            if fusion not in FUSION_OPTIONS:
                raise BadInput(f"pipeline table: fusion must be one of {', '.join(FUSION_OPTIONS)}, got {fusion!r}")
            text = f"{fusion}{':' + ','.join(opts) if opts else ''}(" + ", ".join(parts) + ")"
        else:
            text = parts[0]
        if filters:
            text += f" >> {filter_item(filters)}"
        reranker = table.get("reranker")
        if reranker not in (None, "none"):
            from rankstack.rerank.factory import RerankerSpec
            from rankstack.spec import parse_item

            item = parse_item(_item_from_config(reranker, "pipeline table reranker"), "reranker spec")
            RerankerSpec.from_item(item, names)  # on its own first, so that an error quotes what the user wrote
            if table.get("rerank_depth") is not None:
                item = item.updated(depth=str(table["rerank_depth"]))
            text += f" >> {item}"
        spec = parse_pipeline(text, names)
    if table.get("k") is not None:
        spec = spec.then(CutSpec(coerce(table["k"], int, key="k", where="pipeline table")))
    return spec


def insert_relevance(spec: PipelineSpec, min_relevance: float) -> PipelineSpec:
    """A relevance filter at ``min_relevance`` (the resources' default adapter) before the first rerank stage, after
    any metadata filter; it replaces a relevance stage already there."""
    item = _typed(Item("relevance", (("min", str(min_relevance)),)), RELEVANCE_OPTIONS, "min_relevance")
    stages = [s for s in spec.stages if not isinstance(s, RelevanceSpec)]
    at = next((i for i, s in enumerate(stages) if isinstance(s, RerankSpec)), len(stages))
    while at > 0 and isinstance(stages[at - 1], CutSpec):
        at -= 1
    stages.insert(at, RelevanceSpec(item))
    return PipelineSpec(spec.source, tuple(stages))


def _insert_filter(spec: PipelineSpec, filters: Mapping[str, object]) -> PipelineSpec:
    """``filters`` as a stage before the first rerank stage (so rerankers see only matching candidates)."""
    stages = list(spec.stages)
    at = next((i for i, s in enumerate(stages) if isinstance(s, RerankSpec)), len(stages))
    stages.insert(at, FilterSpec(filter_item(filters)))
    return PipelineSpec(spec.source, tuple(stages))
