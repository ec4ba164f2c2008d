"""Request and response models of the HTTP API. Their limits come from the service's :class:`Limits`, so they are
built per app (``build_schemas(limits)``) and show in the OpenAPI schema; pydantic turns a violation into a 422."""


from types import SimpleNamespace
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from rankstack.service.config import Limits

__all__ = ["build_schemas"]


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must contain some non-whitespace text")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Scalar = Union[str, int, float, bool]
Filters = dict[str, Union[Scalar, list[Scalar]]]


class PipelineOverride(_Model):
    """Keys replacing the collection's pipeline table for one request; ``spec`` replaces the whole pipeline."""

    spec: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    retrievers: list[Union[Annotated[str, StringConstraints(min_length=1, max_length=500)], dict[str, Any]]] | None \
        = Field(None, min_length=1, max_length=8)
    fusion: str | None = Field(None, max_length=16)
    alpha: float | None = Field(None, ge=0, le=1)
    rrf_k: int | None = Field(None, ge=0, le=100_000)
    retrieve_depth: int | None = Field(None, ge=1, le=10_000)
    reranker: str | None = Field(None, min_length=1, max_length=500)
    rerank_depth: int | None = Field(None, ge=1, le=1000)


class Hit(BaseModel):
    rank: int
    docid: str
    score: float
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None


class Citation(BaseModel):
    number: int
    docid: str
    title: str
    score: float
    tokens: int


class PackedContext(BaseModel):
    text: str = Field(description="the kept passages as one prompt block, each headed [n] title")
    tokens: int
    budget: int
    citations: list[Citation] = Field(description="what each [n] refers to")
    dropped: dict[str, str] = Field(description="docids left out: duplicate or budget")


class SearchResponse(BaseModel):
    collection: str
    query: str
    results: list[Hit]
    context: PackedContext | None = Field(None, description="the results packed for a generator (context_tokens)")
    timings: dict[str, float] = Field(description="milliseconds per pipeline stage")
    partial: bool | None = Field(None, description="true when shards were left out (a sharded collection that "
                                                   "allows partial answers); failed_shards names them")
    failed_shards: list[str] | None = None


class BatchSearchResponse(BaseModel):
    collection: str
    results: list[SearchResponse]
    partial: bool | None = None
    failed_shards: list[str] | None = None


class IngestResponse(BaseModel):
    collection: str
    acknowledged: int
    seq: int
    num_documents: int


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    model: str


def build_schemas(lim: Limits) -> SimpleNamespace:
    """The request models for ``lim`` (and the fixed response models), as one namespace."""
    from fastapi import Path as FPath

    from rankstack.service.config import COLLECTION_NAME_PATTERN

    QueryText = Annotated[str, StringConstraints(min_length=1, max_length=lim.max_query_chars),
                          AfterValidator(_not_blank)]
    DocId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s/]+$")]
    PipelineField = Union[Annotated[str, StringConstraints(min_length=1, max_length=2000)], PipelineOverride, None]

    class SearchRequest(_Model):
        query: QueryText
        k: int = Field(10, ge=1, le=lim.max_k, description=f"results to return, 1..{lim.max_k}")
        pipeline: PipelineField = Field(None, description="a pipeline spec string, or keys overriding the "
                                                          "collection's pipeline table")
        filters: Filters | None = Field(None, max_length=16,
                                        description="metadata equality filters; a list means 'any of'")
        min_relevance: float | None = Field(None, ge=0.0, le=1.0,
                                            description="keep only results whose calibrated probability of "
                                                        "relevance (the collection's relevance adapter) is at least "
                                                        "this; scores become those probabilities")
        return_documents: bool = True
        context_tokens: int | None = Field(None, ge=1, le=lim.max_context_tokens,
                                           description="also pack the results' passages, in rank order, into at most "
                                                       "this many tokens (the service's context_tokenizer) with [n] "
                                                       "citations, near-duplicates dropped")
        context_dedup: float = Field(0.8, gt=0.0, le=1.0, description="word 3-gram Jaccard at which a passage is a "
                                                                      "near-duplicate of one already packed")

    class BatchQuery(_Model):
        qid: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
        query: QueryText

    class BatchSearchRequest(_Model):
        queries: list[BatchQuery] = Field(min_length=1, max_length=lim.max_batch_queries)
        k: int = Field(10, ge=1, le=lim.max_k)
        pipeline: PipelineField = None
        min_relevance: float | None = Field(None, ge=0.0, le=1.0, description="as in a single search")
        filters: Filters | None = Field(None, max_length=16)
        return_documents: bool = False

    class DocumentIn(_Model):
        docid: DocId
        text: Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)]
        title: Annotated[str, StringConstraints(max_length=4096)] = ""
        metadata: dict[str, Union[Scalar, list[Scalar], None]] = Field(default_factory=dict, max_length=64)

    class IngestRequest(_Model):
        documents: list[DocumentIn] = Field(min_length=1, max_length=lim.max_documents_per_request)

    class RerankDoc(_Model):
        text: Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)]
        title: str = ""

    class RerankRequest(_Model):
        query: QueryText
        documents: list[Union[Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)],
                              RerankDoc]] = Field(min_length=1, max_length=lim.max_rerank_documents)
        top_n: int | None = Field(None, ge=1, le=lim.max_rerank_documents)
        return_documents: bool = False
        model: str | None = Field(None, max_length=500, description="a reranker name from the service config, or a "
                                                                    "reranker spec (default: its default_reranker)")

    Name = Annotated[str, FPath(pattern=COLLECTION_NAME_PATTERN, description="collection name")]
    PathDocId = Annotated[str, FPath(min_length=1, max_length=256)]
    return SimpleNamespace(SearchRequest=SearchRequest, BatchQuery=BatchQuery, BatchSearchRequest=BatchSearchRequest,
                           DocumentIn=DocumentIn, IngestRequest=IngestRequest, RerankDoc=RerankDoc,
                           RerankRequest=RerankRequest, Name=Name, PathDocId=PathDocId, Hit=Hit,
                           SearchResponse=SearchResponse, BatchSearchResponse=BatchSearchResponse,
                           IngestResponse=IngestResponse, RerankResult=RerankResult, RerankResponse=RerankResponse,
                           PipelineOverride=PipelineOverride)
