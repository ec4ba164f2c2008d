"""The FastAPI search and rerank service: ``create_app(settings)``.

The app is thin: request models in :mod:`.schemas`, handlers in :mod:`.routes`, collections in :mod:`.collection`.
This module holds the service state (collections, shared models and rerankers), the load gate, metrics, and the
one mapping from library errors to HTTP statuses.

Load gate: at most ``max_inflight`` requests run at once, ``max_queue`` more wait, and beyond that a 429. A request
that exceeds the stage timeout gets a 504 at once, but its slot stays taken until its worker thread has really
finished (Python cannot stop a thread), so a timed-out LLM call can never pile up under new ones.
"""

import asyncio
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Callable

from rankstack._optional import require
from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound, MissingExtra, RankStackError, UnknownDocid
from rankstack.records import Ranking
from rankstack.service.config import CollectionConfig, Settings

logger = logging.getLogger(__name__)

__all__ = ["create_app", "ServiceState"]

PUBLIC_PATHS = {"/", "/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


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
        self.admitted = 0

    async def acquire(self) -> None:
        if self.admitted >= self.capacity:
            raise Overloaded(f"server busy: {self.admitted} requests in flight or queued; retry later")
        self.admitted += 1
        try:
            await self.sem.acquire()
        except BaseException:
            self.admitted -= 1
            raise

    def release(self) -> None:
        self.sem.release()
        self.admitted -= 1


class ServiceState:
    def __init__(self, settings: Settings):
        from rankstack.models import ModelCache

        self.settings = settings
        self.collections: dict[str, Any] = {}
        self.metrics = _Metrics()
        lim = settings.limits
        self.gate = _Gate(lim.max_inflight, lim.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=lim.max_inflight, thread_name_prefix="rankstack-work")
        self.ready = False
        self._create_lock = threading.Lock()
        self.models = ModelCache()  # encoders and LLMs, one copy each, shared by collections and rerankers
        self.reranker_specs = settings.reranker_specs()
        self._rerankers: dict[str, Any] = {}
        self._rerankers_lock = threading.Lock()
        self._count_tokens = None  # the context tokenizer's counter, loaded at the first packed search
        self._context_lock = threading.Lock()

    # -- work behind the gate --
    async def work(self, fn: Callable, *args, timeout: float | None = None, **kwargs):
        """Run blocking library work in the worker pool, behind the load gate and the stage timeout."""
        timeout = timeout or self.settings.limits.stage_timeout_s
        try:
            await self.gate.acquire()
        except Overloaded:
            self.metrics.shed.inc()
            raise
        self.metrics.inflight.inc()
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except BaseException:
            self.metrics.inflight.dec()
            self.gate.release()
            raise

        def finished(_):  # runs on the event loop when the thread is really done, timed out or not
            self.metrics.inflight.dec()
            self.gate.release()

        fut.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise StageTimeout(f"the request exceeded the {timeout:g} s timeout; its work still holds a slot "
                               f"until it finishes") from None

    def pack_context(self, ranking, budget: int, dedup: float):
        """A search's results packed for a generator (:func:`rankstack.rag.packing.pack_context`), counted with the
        settings' ``context_tokenizer`` (loaded once)."""
        from rankstack.rag.packing import pack_context, token_counter

        with self._context_lock:
            if self._count_tokens is None:
                self._count_tokens = token_counter(self.settings.context_tokenizer)
        return pack_context(ranking, budget, self._count_tokens, dedup=dedup)

    def observe(self, timings: dict[str, float]) -> dict[str, float]:
        for s, v in timings.items():
            self.metrics.stage.labels(s).observe(v)
        return {s: round(v * 1000, 3) for s, v in timings.items()}

    @staticmethod
    def error(status: int, message: str, request=None):
        from fastapi.responses import JSONResponse

        rid = getattr(request.state, "request_id", None) if request is not None else None
        return JSONResponse(status_code=status, content={"error": message, "request_id": rid})

    # -- rerankers --
    def reranker(self, item) -> tuple[Any, int | None]:
        """The reranker an item names (a configured name or a spec), built on first use and then shared; and its
        depth as configured (None when unset)."""
        from rankstack.rerank.factory import RerankerSpec, build_reranker

        spec = RerankerSpec.from_item(item, self.reranker_specs)
        key = str(RerankerSpec(spec.kind, spec.model, spec.options))
        with self._rerankers_lock:
            if key not in self._rerankers:
                t0 = time.perf_counter()
                self._rerankers[key] = build_reranker(spec, self.models)
                logger.info("reranker %s ready in %.1f s", spec.label, time.perf_counter() - t0)
            return self._rerankers[key], spec.depth

    def stage_reranker(self, item) -> tuple[Any, int]:
        from rankstack.rerank.factory import DEFAULT_RERANK_DEPTH

        reranker, depth = self.reranker(item)
        return reranker, depth or DEFAULT_RERANK_DEPTH

    def rerank_pipeline(self, name: str, ranking: Ranking):
        """/v1/rerank's pipeline: the given documents, reranked (all of them unless the reranker sets a depth)."""
        from rankstack.pipeline import Given, Pipeline, Rerank
        from rankstack.spec import parse_item

        reranker, depth = self.reranker(parse_item(name, "reranker"))
        return Pipeline(Given([ranking], name="request"), [Rerank(reranker, depth or len(ranking.candidates))])

    # -- collections --
    def _open(self, config: CollectionConfig):
        from rankstack.service.collection import Collection

        if config.sharded is not None:  # read-only, nothing in data_dir: the shards' folder is its home
            from rankstack.service.sharded import ShardedCollection

            col = ShardedCollection(config, models=self.models, settings=self.settings,
                                    rerankers=self.stage_reranker)
            col.pipeline()
            return col
        root = self.settings.data_dir / config.name
        root.mkdir(parents=True, exist_ok=True)
        (root / "collection.json").write_text(config.model_dump_json(indent=2))
        col = Collection(root, config, models=self.models, settings=self.settings, rerankers=self.stage_reranker)
        col.pipeline()  # compile now (loads a configured reranker's model), not on the first search
        return col

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
            logger.info("collection %s: %d documents, opened in %.1f s", name, len(self.collections[name]),
                        time.perf_counter() - t0)

    def close_all(self) -> None:
        for name, col in self.collections.items():
            close = getattr(col, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down: log and go on with the others
                    logger.exception("collection %s: close failed", name)

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
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from rankstack.service.routes import build_router
    from rankstack.service.schemas import build_schemas

    lim = settings.limits
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.open_all)
        state.ready = True
        yield
        state.ready = False
        state.executor.shutdown(wait=False)
        await run_in_threadpool(state.close_all)

    app = FastAPI(title="RankStack", version="0.1.0", lifespan=lifespan,
                  description=(f"Search and rerank. Limits: k <= {lim.max_k}, queries <= {lim.max_query_chars} "
                               f"characters, <= {lim.max_batch_queries} queries per batch, "
                               f"<= {lim.max_documents_per_request} documents per ingest, "
                               f"<= {lim.max_rerank_documents} documents per rerank, request bodies <= "
                               f"{lim.max_request_bytes} bytes; 429 when more than "
                               f"{lim.max_inflight + lim.max_queue} requests are in flight; 504 after "
                               f"{lim.stage_timeout_s:g} s per stage."))
    app.state.rankstack = state

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
        from rankstack.distributed.router import ShardUnavailable

        status = {CollectionNotFound: 404, UnknownDocid: 404, Overloaded: 429, StageTimeout: 504,
                  IndexNotFound: 503, IndexCorrupt: 503, MissingExtra: 503, ShardUnavailable: 503}.get(type(exc))
        if status is None:
            status = 422 if isinstance(exc, BadInput) else 500
        return state.error(status, str(exc), request)

    @app.middleware("http")
    async def _envelope(request: Request, call_next: Callable):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        route = request.url.path
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > lim.max_request_bytes):
            response = state.error(413, f"request body of {length} bytes exceeds the limit of "
                                        f"{lim.max_request_bytes}", request)
        elif settings.api_keys and route not in PUBLIC_PATHS and not _authorised(request, settings.api_keys):
            response = state.error(401, "missing or invalid API key: send it in the X-API-Key header "
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

    app.include_router(build_router(state, build_schemas(lim)))
    return app


def _authorised(request, keys: list[str]) -> bool:
    import hmac

    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and any(hmac.compare_digest(given, k) for k in keys)
