"""The FastAPI search and rerank service: ``create_app(settings)``.

Handlers are thin: pydantic models enforce the limits (422), the library does the work in a thread pool with a
per-stage timeout (504), typed library errors map to HTTP once, and a gate sheds load with 429 when the queue is
full. Every response carries an ``X-Request-ID`` that also tags the log lines.
"""

import asyncio
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable, Union

from rankstack._optional import require
from rankstack.errors import (BadInput, IndexCorrupt, IndexNotFound, MissingExtra, RankStackError, UnknownDocid)
from rankstack.records import Document, Query
from rankstack.service.config import CollectionConfig, PipelineConfig, Settings

logger = logging.getLogger(__name__)

__all__ = ["create_app"]

PUBLIC_PATHS = {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class CollectionNotFound(RankStackError):
    pass


class Overloaded(RankStackError):
    pass


class StageTimeout(RankStackError):
    pass


class _Metrics:
    def __init__(self):
        pc = require("prometheus_client")
        self.registry = pc.CollectorRegistry()
        self.requests = pc.Counter("rankstack_requests_total", "HTTP requests", ["route", "method", "status"],
                                   registry=self.registry)
        self.latency = pc.Histogram("rankstack_request_seconds", "request latency", ["route"],
                                    registry=self.registry)
        self.stage = pc.Histogram("rankstack_stage_seconds", "pipeline stage latency", ["stage"],
                                  registry=self.registry)
        self.shed = pc.Counter("rankstack_shed_total", "requests rejected with 429", registry=self.registry)
        self.inflight = pc.Gauge("rankstack_inflight_requests", "requests admitted", registry=self.registry)
        self._pc = pc

    def render(self) -> tuple[bytes, str]:
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST


class _Gate:
    """Admits ``max_inflight`` requests at once and queues ``max_queue`` more; beyond that, :class:`Overloaded`."""

    def __init__(self, max_inflight: int, max_queue: int):
        self.sem = asyncio.Semaphore(max_inflight)
        self.capacity = max_inflight + max_queue
        self.waiting_or_running = 0

    async def __aenter__(self):
        if self.waiting_or_running >= self.capacity:
            raise Overloaded(f"server busy: {self.waiting_or_running} requests in flight or queued; retry later")
        self.waiting_or_running += 1
        try:
            await self.sem.acquire()
        except BaseException:
            self.waiting_or_running -= 1
            raise

    async def __aexit__(self, *exc):
        self.sem.release()
        self.waiting_or_running -= 1


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.collections: dict[str, Any] = {}
        self.metrics = _Metrics()
        self.gate = _Gate(settings.limits.max_inflight, settings.limits.max_queue)
        self.ready = False
        self._create_lock = threading.Lock()
        from rankstack.rerank.factory import ModelCache

        self.models = ModelCache()  # encoders and LLMs, one copy each, shared by collections and rerankers
        self.reranker_specs = settings.reranker_specs()
        self._rerankers: dict[str, Any] = {}
        self._rerankers_lock = threading.Lock()

    # collections -------------------------------------------------------------------------------------------

    def encoder(self, name: str):
        return self.models.get("encoder", name)

    def reranker(self, name: str | None = None):
        """The named reranker (default: ``settings.default_reranker``), built on first use and then reused."""
        from rankstack.rerank.factory import build_reranker

        name = name or self.settings.default_reranker
        if name not in self.reranker_specs:
            raise BadInput(f"unknown reranker {name!r}; this service has {sorted(self.reranker_specs)} "
                           f"(define more under [rerankers] in the config)")
        with self._rerankers_lock:
            if name not in self._rerankers:
                t0 = time.perf_counter()
                self._rerankers[name] = build_reranker(self.reranker_specs[name], self.models)
                logger.info("reranker %s (%s) ready in %.1f s", name, self.reranker_specs[name].label,
                            time.perf_counter() - t0)
            return self._rerankers[name]

    def _open(self, config: CollectionConfig):
        from rankstack.service.collection import Collection

        root = self.settings.data_dir / config.name
        root.mkdir(parents=True, exist_ok=True)
        (root / "collection.json").write_text(config.model_dump_json(indent=2))
        enc = self.encoder(config.encoder) if "dense" in config.indexes else None
        if config.pipeline.reranker != "none":
            self.reranker(config.pipeline.reranker)  # load it now, not on the first search
        return Collection(root, config, encoder=enc, rerankers=self.reranker)

    def open_all(self) -> None:
        configs = dict(self.settings.collections)
        data = self.settings.data_dir
        if data.is_dir():
            for d in sorted(data.iterdir()):
                cfg_file = d / "collection.json"
                if d.name not in configs and cfg_file.is_file():
                    configs[d.name] = CollectionConfig.model_validate_json(cfg_file.read_text())
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            self.collections[name] = self._open(cfg)
            logger.info("collection %s: %d documents, opened in %.1f s", name,
                        len(self.collections[name].docs), time.perf_counter() - t0)

    def get(self, name: str):
        col = self.collections.get(name)
        if col is None:
            raise CollectionNotFound(f"no collection {name!r}; existing: {sorted(self.collections)}. "
                                     f"POST documents to /v1/collections/{name}/documents to create it")
        return col

    def get_or_create(self, name: str):
        with self._create_lock:
            if name not in self.collections:
                base = self.settings.default_collection or CollectionConfig(name=name)
                cfg = CollectionConfig.model_validate({**base.model_dump(), "name": name})
                self.collections[name] = self._open(cfg)
            return self.collections[name]


def create_app(settings: Settings):
    """Build the app. Collections are opened in the lifespan, not at import or construction."""
    require("fastapi")
    from fastapi import FastAPI, Path as FPath, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints

    lim = settings.limits
    state = ServiceState(settings)

    from pydantic import AfterValidator

    def _not_blank(v: str) -> str:
        if not v.strip():
            raise ValueError("must contain some non-whitespace text")
        return v

    QueryText = Annotated[str, StringConstraints(min_length=1, max_length=lim.max_query_chars),
                          AfterValidator(_not_blank)]
    DocId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s/]+$")]
    Scalar = Union[str, int, float, bool]
    from rankstack.service.config import COLLECTION_NAME_PATTERN

    Name = Annotated[str, FPath(pattern=COLLECTION_NAME_PATTERN, description="collection name")]
    PathDocId = Annotated[str, FPath(min_length=1, max_length=256)]

    class Model(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class PipelineOverride(Model):
        retrievers: list[str] | None = Field(None, min_length=1, max_length=2)
        fusion: str | None = None
        alpha: float | None = Field(None, ge=0, le=1)
        depth: int | None = Field(None, ge=1, le=1000)
        reranker: str | None = None

    class SearchRequest(Model):
        query: QueryText
        k: int = Field(10, ge=1, le=lim.max_k, description=f"results to return, 1..{lim.max_k}")
        pipeline: PipelineOverride | None = None
        filters: dict[str, Scalar | list[Scalar]] | None = Field(
            None, max_length=16, description="metadata equality filters; a list means 'any of'")
        return_documents: bool = True

    class BatchQuery(Model):
        qid: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
        query: QueryText

    class BatchSearchRequest(Model):
        queries: list[BatchQuery] = Field(min_length=1, max_length=lim.max_batch_queries)
        k: int = Field(10, ge=1, le=lim.max_k)
        pipeline: PipelineOverride | None = None
        filters: dict[str, Scalar | list[Scalar]] | None = Field(None, max_length=16)
        return_documents: bool = False

    class Hit(BaseModel):
        rank: int
        docid: str
        score: float
        title: str | None = None
        text: str | None = None
        metadata: dict[str, Any] | None = None

    class SearchResponse(BaseModel):
        collection: str
        query: str
        results: list[Hit]
        timings: dict[str, float]

    class BatchSearchResponse(BaseModel):
        collection: str
        results: list[SearchResponse]

    class DocumentIn(Model):
        docid: DocId
        text: Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)]
        title: Annotated[str, StringConstraints(max_length=4096)] = ""
        metadata: dict[str, Scalar | list[Scalar] | None] = Field(default_factory=dict, max_length=64)

    class IngestRequest(Model):
        documents: list[DocumentIn] = Field(min_length=1, max_length=lim.max_documents_per_request)

    class IngestResponse(BaseModel):
        collection: str
        acknowledged: int
        seq: int
        num_documents: int

    class RerankDoc(Model):
        text: Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)]
        title: str = ""

    class RerankRequest(Model):
        query: QueryText
        documents: list[Annotated[str, StringConstraints(min_length=1, max_length=lim.max_document_chars)]
                        | RerankDoc] = Field(min_length=1, max_length=lim.max_rerank_documents)
        top_n: int | None = Field(None, ge=1, le=lim.max_rerank_documents)
        return_documents: bool = False
        model: str | None = Field(None, max_length=64, description="a reranker name from the service config "
                                                                   "(default: its default_reranker)")

    class RerankResult(BaseModel):
        index: int
        relevance_score: float
        document: dict[str, str] | None = None

    class RerankResponse(BaseModel):
        id: str
        results: list[RerankResult]
        model: str

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.open_all)
        state.ready = True
        yield
        state.ready = False

    app = FastAPI(title="RankStack", version="0.1.0", lifespan=lifespan,
                  description=(f"Search and rerank. Limits: k <= {lim.max_k}, queries <= {lim.max_query_chars} "
                               f"characters, <= {lim.max_batch_queries} queries per batch, "
                               f"<= {lim.max_documents_per_request} documents per ingest, "
                               f"<= {lim.max_rerank_documents} documents per rerank, request bodies <= "
                               f"{lim.max_request_bytes} bytes; 429 when more than "
                               f"{lim.max_inflight + lim.max_queue} requests are in flight; 504 after "
                               f"{lim.stage_timeout_s:g} s per stage."))
    app.state.rankstack = state

    def error(status: int, message: str, request: Request | None = None) -> JSONResponse:
        rid = getattr(request.state, "request_id", None) if request is not None else None
        return JSONResponse(status_code=status, content={"error": message, "request_id": rid})

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {e.get('msg')}")
        body = {"error": "invalid request: " + "; ".join(problems[:10]),
                "request_id": getattr(request.state, "request_id", None)}
        return JSONResponse(status_code=422, content=body)

    @app.exception_handler(RankStackError)
    async def _library_error(request: Request, exc: RankStackError):
        status = {CollectionNotFound: 404, UnknownDocid: 404, Overloaded: 429, StageTimeout: 504,
                  IndexNotFound: 503, IndexCorrupt: 503, MissingExtra: 503}.get(type(exc))
        if status is None:
            status = 422 if isinstance(exc, BadInput) else 500
        return error(status, str(exc), request)

    @app.middleware("http")
    async def _envelope(request: Request, call_next: Callable):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        route = request.url.path
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > lim.max_request_bytes):
            response = error(413, f"request body of {length} bytes exceeds the limit of {lim.max_request_bytes}",
                             request)
        elif settings.api_keys and route not in PUBLIC_PATHS and not _authorised(request, settings.api_keys):
            response = error(401, "missing or invalid API key: send it in the X-API-Key header "
                                  "(or Authorization: Bearer <key>)", request)
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        templ = request.scope.get("route")
        label = getattr(templ, "path", "unmatched")
        secs = time.perf_counter() - t0
        state.metrics.requests.labels(label, request.method, str(response.status_code)).inc()
        state.metrics.latency.labels(label).observe(secs)
        logger.info("request_id=%s %s %s -> %d in %.1f ms", rid, request.method, route, response.status_code,
                    secs * 1000)
        return response

    async def work(fn: Callable, *args, _timeout: float | None = None, **kwargs):
        """Run blocking library work off the event loop, behind the load gate and the stage timeout."""
        timeout = _timeout or lim.stage_timeout_s
        try:
            async with state.gate:
                state.metrics.inflight.inc()
                try:
                    return await asyncio.wait_for(run_in_threadpool(fn, *args, **kwargs), timeout)
                except asyncio.TimeoutError:
                    raise StageTimeout(f"the request exceeded the {timeout:g} s timeout") from None
                finally:
                    state.metrics.inflight.dec()
        except Overloaded:
            state.metrics.shed.inc()
            raise

    def _pipeline(col, override: PipelineOverride | None) -> PipelineConfig | None:
        if override is None:
            return None
        merged = {**col.config.pipeline.model_dump(), **override.model_dump(exclude_none=True)}
        try:
            p = PipelineConfig.model_validate(merged)
        except Exception as exc:
            raise BadInput(f"invalid pipeline override: {exc}") from None
        missing = [r for r in p.retrievers if r not in col.config.indexes]
        if missing:
            raise BadInput(f"collection {col.name!r} has no {missing} index; it has {col.config.indexes}")
        return p

    def _hits(ranking, with_docs: bool) -> list[Hit]:
        return [Hit(rank=i, docid=c.docid, score=c.score,
                    title=c.document.title if with_docs and c.document else None,
                    text=c.document.text if with_docs and c.document else None,
                    metadata=dict(c.document.metadata) if with_docs and c.document else None)
                for i, c in enumerate(ranking.candidates, 1)]

    def _observe(stages: dict[str, float]) -> dict[str, float]:
        for s, v in stages.items():
            state.metrics.stage.labels(s).observe(v)
        return {s: round(v * 1000, 3) for s, v in stages.items()}

    @app.post("/v1/collections/{name}/search", response_model=SearchResponse, response_model_exclude_none=True)
    async def search(name: Name, req: SearchRequest):
        col = state.get(name)
        rankings, stages = await work(col.search, [Query(qid="q", text=req.query)], req.k,
                                      pipeline=_pipeline(col, req.pipeline), filters=req.filters)
        return SearchResponse(collection=name, query=req.query, results=_hits(rankings[0], req.return_documents),
                              timings=_observe(stages))

    @app.post("/v1/collections/{name}/search/batch", response_model=BatchSearchResponse,
              response_model_exclude_none=True)
    async def batch_search(name: Name, req: BatchSearchRequest):
        col = state.get(name)
        queries = [Query(qid=q.qid or str(i), text=q.query) for i, q in enumerate(req.queries)]
        if len({q.qid for q in queries}) != len(queries):
            raise BadInput("qids in one batch must be unique")
        rankings, stages = await work(col.search, queries, req.k, pipeline=_pipeline(col, req.pipeline),
                                      filters=req.filters)
        timings = _observe(stages)
        return BatchSearchResponse(collection=name, results=[
            SearchResponse(collection=name, query=r.query.text, results=_hits(r, req.return_documents),
                           timings=timings) for r in rankings])

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    async def rerank(req: RerankRequest):
        from rankstack.records import Candidate, Ranking

        docs = [Document(docid=str(i), text=d) if isinstance(d, str) else Document(docid=str(i), text=d.text,
                                                                                    title=d.title)
                for i, d in enumerate(req.documents)]
        ranking = Ranking(query=Query(qid="q", text=req.query),
                          candidates=tuple(Candidate(docid=d.docid, score=0.0, document=d) for d in docs))
        name = req.model or settings.default_reranker
        reranker = await work(state.reranker, name)
        t0 = time.perf_counter()
        out = (await work(reranker.rerank, ranking)).top(req.top_n or len(docs))
        _observe({"rerank": time.perf_counter() - t0})
        return RerankResponse(id=uuid.uuid4().hex, model=name, results=[
            RerankResult(index=int(c.docid), relevance_score=c.score,
                         document={"text": c.document.text} if req.return_documents else None)
            for c in out.candidates])

    @app.post("/v1/collections/{name}/documents", response_model=IngestResponse)
    async def ingest(name: Name, req: IngestRequest):
        col = await work(state.get_or_create, name, _timeout=lim.ingest_timeout_s)
        docs = [Document(docid=d.docid, text=d.text, title=d.title, metadata=d.metadata) for d in req.documents]
        seq = await work(col.upsert, docs, _timeout=lim.ingest_timeout_s)
        return IngestResponse(collection=name, acknowledged=len(docs), seq=seq, num_documents=len(col.docs))

    @app.get("/v1/collections/{name}/documents/{docid}")
    async def get_document(name: Name, docid: PathDocId) -> dict[str, Any]:
        d = state.get(name).get(docid)
        return {"docid": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)}

    @app.delete("/v1/collections/{name}/documents/{docid}")
    async def delete_document(name: Name, docid: PathDocId) -> dict[str, Any]:
        col = state.get(name)
        seq = await work(col.delete, docid)
        return {"collection": name, "deleted": docid, "seq": seq}

    @app.get("/v1/collections")
    async def list_collections() -> dict[str, Any]:
        return {"collections": [{"name": n, "documents": len(c.docs), "indexes": c.config.indexes,
                                 "pipeline": c.config.pipeline.model_dump()} for n, c in state.collections.items()]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not state.ready:
            return error(503, "starting: collections are still loading")
        return {"status": "ready", "collections": sorted(state.collections)}

    @app.get("/metrics")
    async def metrics():
        body, ctype = state.metrics.render()
        return Response(content=body, media_type=ctype)

    return app


def _authorised(request, keys: list[str]) -> bool:
    import hmac

    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and any(hmac.compare_digest(given, k) for k in keys)
