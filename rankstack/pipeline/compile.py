"""Specs to objects: ``compile_pipeline(spec, resources)`` builds the :class:`~rankstack.pipeline.core.Pipeline`
that a spec string or table describes, over the indexes and models of ``resources``."""

from __future__ import annotations

from typing import Any, Mapping

from rankstack.errors import BadInput
from rankstack.pipeline.core import Cutoff, Filter, Fuse, Pipeline, Rerank, Retrieve
from rankstack.pipeline.resources import Resources
from rankstack.pipeline.spec import (CutSpec, FilterSpec, FusionSpec, PipelineSpec, RelevanceSpec, RerankSpec,
                                     RetrieverSpec, filter_conditions, parse_pipeline, pipeline_from_table)

__all__ = ["compile_pipeline", "as_spec"]


def as_spec(spec: str | PipelineSpec | Mapping[str, Any], names: Mapping[str, Any] | None = None) -> PipelineSpec:
    if isinstance(spec, PipelineSpec):
        return spec
    if isinstance(spec, Mapping):
        return pipeline_from_table(spec, names)
    return parse_pipeline(spec, names)


def compile_pipeline(spec: str | PipelineSpec | Mapping[str, Any], resources: Resources) -> Pipeline:
    """The pipeline ``spec`` describes, its retrievers and rerankers resolved by ``resources``, its documents
    taken from ``resources.documents``."""
    spec = as_spec(spec, resources.named_rerankers)

    def build(ps: PipelineSpec) -> Pipeline:
        # relevance filters first: a foreign adapter is refused before any index is built or model loaded
        relevance = {i: resources.relevance_filter(st.item, PipelineSpec(ps.source, ps.stages[:i]))
                     for i, st in enumerate(ps.stages) if isinstance(st, RelevanceSpec)}
        src = ps.source
        if isinstance(src, RetrieverSpec):
            source = Retrieve(resources.retriever(src.item))
        else:
            assert isinstance(src, FusionSpec)
            alpha = src.item.get("alpha", 0.5)
            if alpha == "auto":
                raise BadInput("alpha=auto is chosen by `rankstack eval` on labelled queries (the dev split, or "
                               "cross-validation); here give a number, e.g. interp:alpha=0.5(dense, bm25)")
            source = Fuse(src.item.kind, [build(p) for p in src.inputs], rrf_k=src.item.get("rrf_k", 60),
                          alpha=alpha)
        stages = []
        for i, st in enumerate(ps.stages):
            if isinstance(st, RelevanceSpec):
                stages.append(relevance[i])
            elif isinstance(st, CutSpec):
                stages.append(Cutoff(st.k))
            elif isinstance(st, FilterSpec):
                stages.append(Filter(filter_conditions(st.item)))
            else:
                assert isinstance(st, RerankSpec)
                reranker, depth = resources.reranker(st.item)
                stages.append(Rerank(reranker, depth))
        return Pipeline(source, stages)

    return build(spec).with_documents(resources.documents)
