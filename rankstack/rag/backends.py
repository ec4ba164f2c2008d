"""Where the RAG adapters get results from: a local pipeline, or a RankStack service over HTTP. Both return
:class:`~rankstack.records.Ranking` objects with documents attached, plus the per-stage timings."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

from rankstack.errors import BadInput, RankStackError
from rankstack.records import Candidate, Document, Query, Ranking

__all__ = ["SearchBackend", "LocalPipeline", "ServiceClient", "as_backend", "rerank_texts"]


class SearchBackend(ABC):
    """``search(text, k)`` -> ``(ranking, timings)``; ``asearch`` is its async twin."""

    @abstractmethod
    def search(self, text: str, k: int) -> tuple[Ranking, dict[str, float]]: ...

    async def asearch(self, text: str, k: int) -> tuple[Ranking, dict[str, float]]:
        return await asyncio.to_thread(self.search, text, k)


class LocalPipeline(SearchBackend):
    """A compiled :class:`~rankstack.pipeline.core.Pipeline` (or anything with ``run(queries, k, with_documents)``)
    in this process."""

    def __init__(self, pipeline):
        if not hasattr(pipeline, "run"):
            raise BadInput(f"expected a RankStack pipeline, got {type(pipeline).__name__}; compile one with "
                           f"rankstack.pipeline.compile_pipeline(spec, resources)")
        self.pipeline = pipeline

    def search(self, text, k):
        if not isinstance(text, str) or not text.strip():
            raise BadInput("the query is empty")
        out = self.pipeline.run([Query(qid="q", text=text)], k, with_documents=True, show_progress=False)
        return out.rankings[0], dict(out.timings)


class ServiceClient(SearchBackend):
    """A collection of a running RankStack service (``POST /v1/collections/{name}/search``). ``pipeline``: a spec
    or table overriding the collection's; ``min_relevance``: the service's relevance filter."""

    def __init__(self, url: str, collection: str, *, pipeline: str | Mapping[str, Any] | None = None,
                 min_relevance: float | None = None, api_key: str | None = None, timeout: float = 60.0,
                 filters: Mapping[str, object] | None = None):
        self.url = url.rstrip("/")
        self.collection = collection
        self.pipeline, self.min_relevance, self.filters = pipeline, min_relevance, filters
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = timeout

    def _body(self, text: str, k: int) -> dict:
        body: dict[str, Any] = {"query": text, "k": k, "return_documents": True}
        for key in ("pipeline", "min_relevance", "filters"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        return body

    def _endpoint(self) -> str:
        return f"{self.url}/v1/collections/{self.collection}/search"

    def _parse(self, text: str, resp) -> tuple[Ranking, dict[str, float]]:
        if resp.status_code != 200:
            try:
                detail = resp.json().get("detail") or resp.text
            except ValueError:
                detail = resp.text
            raise RankStackError(f"RankStack service {self.url} answered {resp.status_code}: {detail}")
        data = resp.json()
        cands = tuple(Candidate(docid=h["docid"], score=float(h["score"]),
                                document=Document(docid=h["docid"], text=h.get("text") or "", title=h.get("title") or "",
                                                  metadata=h.get("metadata") or {}))
                      for h in data["results"])
        return Ranking(query=Query(qid="q", text=text), candidates=cands), {k: v / 1000 for k, v in
                                                                            data.get("timings", {}).items()}

    def search(self, text, k):
        import httpx

        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            return self._parse(text, client.post(self._endpoint(), json=self._body(text, k)))

    async def asearch(self, text, k):
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            return self._parse(text, await client.post(self._endpoint(), json=self._body(text, k)))


def as_backend(source) -> SearchBackend:
    return source if isinstance(source, SearchBackend) else LocalPipeline(source)


def rerank_texts(reranker, query: str, documents: Sequence[Document], depth: int | None = None) -> Ranking:
    """Rerank ``documents`` for ``query`` with any RankStack reranker (through a one-stage pipeline, so the tail
    rule and checks are the executor's); candidates keep the documents' docids."""
    from rankstack.pipeline.core import Given, Pipeline, Rerank

    if not isinstance(query, str) or not query.strip():
        raise BadInput("the query is empty")
    if not documents:
        return Ranking(query=Query(qid="q", text=query))
    ids = [d.docid for d in documents]
    if len(set(ids)) != len(ids):
        raise BadInput("documents to rerank need distinct ids")
    q = Query(qid="q", text=query)
    given = Ranking(query=q, candidates=tuple(Candidate(docid=d.docid, score=float(len(documents) - i), document=d)
                                              for i, d in enumerate(documents)))
    pipe = Pipeline(Given([given]), [Rerank(reranker, depth or len(documents))])
    return pipe.run([q], len(documents), show_progress=False).rankings[0]
