"""LangChain adapters (``pip install 'rankstack[rag]'``): a ``BaseRetriever`` over any RankStack pipeline (local or a
service's HTTP API) and a ``BaseDocumentCompressor`` over any RankStack reranker.

Documents carry ``docid``, ``title``, ``score``, ``rank`` and the document's own metadata in their ``metadata``;
the retriever also puts the pipeline's per-stage timings (seconds) under ``timings`` on the first document.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from rankstack._optional import require

require("langchain_core")

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict, Field  # noqa: E402

from rankstack.errors import BadInput  # noqa: E402
from rankstack.rag.backends import SearchBackend, ServiceClient, as_backend, rerank_texts  # noqa: E402
from rankstack.records import Document as RSDocument, Ranking  # noqa: E402

__all__ = ["RankStackRetriever", "RankStackCompressor", "to_langchain"]


def to_langchain(ranking: Ranking, timings: dict[str, float] | None = None) -> list[Document]:
    out = []
    for i, c in enumerate(ranking.candidates, 1):
        d = c.document
        meta = {**(dict(d.metadata) if d else {}), "docid": c.docid, "title": d.title if d else "",
                "score": c.score, "rank": i}
        if i == 1 and timings is not None:
            meta["timings"] = dict(timings)
        out.append(Document(page_content=d.text if d else "", metadata=meta, id=c.docid))
    return out


def _from_langchain(docs: Sequence[Document]) -> list[RSDocument]:
    out = []
    for i, d in enumerate(docs):
        docid = str(d.metadata.get("docid") or d.id or i)
        out.append(RSDocument(docid=docid, text=d.page_content, title=str(d.metadata.get("title") or "")))
    return out


class RankStackRetriever(BaseRetriever):
    """``RankStackRetriever(source=pipeline, k=5)`` over a compiled pipeline, or
    ``RankStackRetriever.from_service("http://127.0.0.1:8000", "scifact", k=5)`` over the HTTP API."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    source: Any = Field(description="a compiled RankStack pipeline or a SearchBackend")
    k: int = 10

    def model_post_init(self, _ctx) -> None:
        if isinstance(self.k, bool) or self.k <= 0:
            raise BadInput(f"k must be a positive integer, got {self.k!r}")
        object.__setattr__(self, "_backend", as_backend(self.source))

    @classmethod
    def from_service(cls, url: str, collection: str, *, k: int = 10, **options) -> RankStackRetriever:
        return cls(source=ServiceClient(url, collection, **options), k=k)

    @property
    def backend(self) -> SearchBackend:
        return self._backend

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return to_langchain(*self._backend.search(query, self.k))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        return to_langchain(*await self._backend.asearch(query, self.k))


class RankStackCompressor(BaseDocumentCompressor):
    """Reorders (and cuts to ``top_n``) documents with a RankStack reranker: any object from
    :func:`rankstack.rerank.factory.build_reranker` (cross-encoder, embedding, ICR, FIRST, listwise, setwise).
    The reranker's score goes to ``metadata["relevance_score"]``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    reranker: Any
    top_n: int | None = None
    depth: int | None = None

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks=None) -> Sequence[Document]:
        if not documents:
            return []
        ranking = rerank_texts(self.reranker, query, _from_langchain(documents), self.depth)
        by_id = {str(d.metadata.get("docid") or d.id or i): d for i, d in enumerate(documents)}
        out = []
        for c in ranking.candidates[: self.top_n or len(documents)]:
            src = by_id[c.docid]
            out.append(Document(page_content=src.page_content, id=src.id,
                                metadata={**src.metadata, "relevance_score": c.score}))
        return out

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks=None) -> Sequence[Document]:
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
