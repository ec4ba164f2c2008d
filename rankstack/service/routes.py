"""The HTTP routes, thin: validate (the schemas), call the library through the service state's gate, format.

No import of ``__future__.annotations`` here: FastAPI reads the handlers' annotations at runtime, and they name
per-app schema classes.
"""

import uuid
from typing import Any

from rankstack.errors import BadInput
from rankstack.records import Candidate, Document, Query, Ranking
from rankstack.service.config import PipelineConfig

__all__ = ["build_router"]


def _override(pipeline) -> PipelineConfig | None:
    """A request's pipeline: a spec string, or keys overriding the collection's pipeline table."""
    if pipeline is None:
        return None
    data = {"spec": pipeline} if isinstance(pipeline, str) else pipeline.model_dump(exclude_none=True)
    try:
        return PipelineConfig.model_validate(data)
    except Exception as exc:  # pydantic's ValidationError: a 422 with the reason
        raise BadInput(f"invalid pipeline override: {exc}") from None


def _partial(out) -> dict:
    """The response's partial flag: set only when shards were left out."""
    return {"partial": True, "failed_shards": sorted(out.partial)} if out.partial else {}


def _pipeline_choices(config) -> list[str]:
    """Pipelines a search page offers for a collection: each index's retriever alone, and RRF over all of them."""
    one = [str(i) for i in config.indexes]
    return one + ([f"rrf({', '.join(one)})"] if len(one) > 1 else [])


def _page() -> str:
    from importlib.resources import files

    return (files("rankstack.service") / "static" / "index.html").read_text(encoding="utf-8")


def build_router(state, schemas):
    """The service's routes over ``state`` (the collections, their gate, metrics), with this app's ``schemas``."""
    from fastapi import APIRouter

    router = APIRouter()
    for add in (_search_routes, _rerank_routes, _document_routes, _discovery_routes, _operation_routes):
        add(router, state, schemas)
    return router


def _hits(S, ranking: Ranking, with_docs: bool) -> list:
    return [S.Hit(rank=i, docid=c.docid, score=c.score,
                  title=c.document.title if with_docs and c.document else None,
                  text=c.document.text if with_docs and c.document else None,
                  metadata=dict(c.document.metadata) if with_docs and c.document else None)
            for i, c in enumerate(ranking.candidates, 1)]


def _search_routes(router, state, S) -> None:
    """Searching a collection: one query, or a batch."""
    def hits(ranking: Ranking, with_docs: bool) -> list:
        return _hits(S, ranking, with_docs)

    @router.post("/v1/collections/{name}/search", response_model=S.SearchResponse, response_model_exclude_none=True)
    async def search(name: S.Name, req: S.SearchRequest):
        col = state.get(name)
        out = await state.work(col.run, [Query(qid="q", text=req.query)], req.k, pipeline=_override(req.pipeline),
                               filters=req.filters, min_relevance=req.min_relevance)
        context = None
        if req.context_tokens is not None:
            packed = await state.work(state.pack_context, out.rankings[0], req.context_tokens, req.context_dedup)
            context = packed.to_dict()
        return S.SearchResponse(collection=name, query=req.query, results=hits(out.rankings[0], req.return_documents),
                                context=context, timings=state.observe(out.timings), **_partial(out))

    @router.post("/v1/collections/{name}/search/batch", response_model=S.BatchSearchResponse,
                 response_model_exclude_none=True)
    async def batch_search(name: S.Name, req: S.BatchSearchRequest):
        col = state.get(name)
        queries = [Query(qid=q.qid or str(i), text=q.query) for i, q in enumerate(req.queries)]
        if len({q.qid for q in queries}) != len(queries):
            raise BadInput("qids in one batch must be unique")
        out = await state.work(col.run, queries, req.k, pipeline=_override(req.pipeline), filters=req.filters,
                               min_relevance=req.min_relevance)
        timings = state.observe(out.timings)
        return S.BatchSearchResponse(collection=name, results=[
            S.SearchResponse(collection=name, query=r.query.text, results=hits(r, req.return_documents),
                             timings=timings, **_partial(out)) for r in out.rankings], **_partial(out))



def _rerank_routes(router, state, S) -> None:
    """Cohere/TEI-style reranking of the documents a request brings."""
    @router.post("/v1/rerank", response_model=S.RerankResponse, response_model_exclude_none=True)
    async def rerank(req: S.RerankRequest):
        docs = [Document(docid=str(i), text=d) if isinstance(d, str) else Document(docid=str(i), text=d.text,
                                                                                    title=d.title)
                for i, d in enumerate(req.documents)]
        ranking = Ranking(query=Query(qid="q", text=req.query),
                          candidates=tuple(Candidate(docid=d.docid, score=0.0, document=d) for d in docs))
        name = req.model or state.settings.default_reranker
        pipe = await state.work(state.rerank_pipeline, name, ranking)
        out = await state.work(pipe.run, [ranking.query], len(docs))
        state.observe(out.timings)
        top = out.rankings[0].top(req.top_n or len(docs))
        return S.RerankResponse(id=uuid.uuid4().hex, model=name, results=[
            S.RerankResult(index=int(c.docid), relevance_score=c.score,
                           document={"text": c.document.text} if req.return_documents else None)
            for c in top.candidates])



def _document_routes(router, state, S) -> None:
    """Writing, reading and deleting a collection's documents."""
    @router.post("/v1/collections/{name}/documents", response_model=S.IngestResponse)
    async def ingest(name: S.Name, req: S.IngestRequest):
        timeout = state.settings.limits.ingest_timeout_s
        col = await state.work(state.get_or_create, name, timeout=timeout)
        docs = [Document(docid=d.docid, text=d.text, title=d.title, metadata=d.metadata) for d in req.documents]
        seq = await state.work(col.upsert, docs, timeout=timeout)
        return S.IngestResponse(collection=name, acknowledged=len(docs), seq=seq, num_documents=len(col))

    @router.get("/v1/collections/{name}/documents/{docid}")
    async def get_document(name: S.Name, docid: S.PathDocId) -> dict[str, Any]:
        d = state.get(name).get(docid)
        return {"docid": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)}

    @router.delete("/v1/collections/{name}/documents/{docid}")
    async def delete_document(name: S.Name, docid: S.PathDocId) -> dict[str, Any]:
        col = state.get(name)
        seq = await state.work(col.delete, docid)
        return {"collection": name, "deleted": docid, "seq": seq}



def _discovery_routes(router, state, S) -> None:
    """What is served: collections, their health, named rerankers."""
    @router.get("/v1/collections")
    async def list_collections() -> dict[str, Any]:
        return {"collections": [{"name": n, "documents": len(c), "indexes": c.config.indexes,
                                 "pipeline": str(state.settings.pipeline_spec(c.config)),
                                 "pipelines": _pipeline_choices(c.config)}
                                for n, c in state.collections.items()]}

    @router.get("/v1/collections/{name}/health")
    async def collection_health(name: S.Name) -> dict[str, Any]:
        """A collection's state; for a sharded one, each shard and each of its replicas."""
        col = state.get(name)
        return {"collection": name, **(await state.work(col.health))}

    @router.get("/v1/rerankers")
    async def list_rerankers() -> dict[str, Any]:
        return {"rerankers": sorted(state.reranker_specs), "default": state.settings.default_reranker}



def _operation_routes(router, state, S) -> None:
    """The search page, liveness, readiness and metrics."""
    from fastapi.responses import Response

    @router.get("/", include_in_schema=False)
    async def page():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(_page(), headers={"Content-Security-Policy": "default-src 'self'; script-src "
                                                                         "'unsafe-inline' 'self'; style-src "
                                                                         "'unsafe-inline'; object-src 'none'"})

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready():
        if not state.ready:
            return state.error(503, "starting: collections are still loading")
        return {"status": "ready", "collections": sorted(state.collections)}

    @router.get("/metrics")
    async def metrics():
        body, ctype = state.metrics.render()
        return Response(content=body, media_type=ctype)
