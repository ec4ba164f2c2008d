"""LlamaIndex adapters (``pip install 'rankstack[rag]'``): a retriever over any RankStack pipeline (local or a
service's HTTP API) and a node postprocessor over any RankStack reranker.

Nodes are ``TextNode``s whose ``id_`` is the docid and whose metadata holds ``docid``, ``title``, ``rank`` and the
document's own metadata; the score is the pipeline's (or the reranker's).
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from rankstack._optional import require

require("llama_index.core")

from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from rankstack.errors import BadInput  # noqa: E402
from rankstack.rag.backends import ServiceClient, as_backend, rerank_texts  # noqa: E402
from rankstack.records import Document as RSDocument, Ranking  # noqa: E402

__all__ = ["RankStackLlamaRetriever", "RankStackNodePostprocessor", "to_nodes"]


def to_nodes(ranking: Ranking) -> list[NodeWithScore]:
    out = []
    for i, c in enumerate(ranking.candidates, 1):
        d = c.document
        meta = {**(dict(d.metadata) if d else {}), "docid": c.docid, "title": d.title if d else "", "rank": i}
        out.append(NodeWithScore(node=TextNode(id_=c.docid, text=d.text if d else "", metadata=meta),
                                 score=float(c.score)))
    return out


class RankStackLlamaRetriever(BaseRetriever):
    """``RankStackLlamaRetriever(pipeline, k=5)`` or ``RankStackLlamaRetriever.from_service(url, collection)``;
    ``last_timings`` holds the last query's per-stage seconds."""

    def __init__(self, source: Any, k: int = 10, **kwargs):
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise BadInput(f"k must be a positive integer, got {k!r}")
        self._backend = as_backend(source)
        self._k = k
        self.last_timings: dict[str, float] = {}
        super().__init__(**kwargs)

    @classmethod
    def from_service(cls, url: str, collection: str, *, k: int = 10, **options) -> RankStackLlamaRetriever:
        return cls(ServiceClient(url, collection, **options), k=k)

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        ranking, self.last_timings = self._backend.search(query_bundle.query_str, self._k)
        return to_nodes(ranking)

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        ranking, self.last_timings = await self._backend.asearch(query_bundle.query_str, self._k)
        return to_nodes(ranking)


class RankStackNodePostprocessor(BaseNodePostprocessor):
    """Reranks nodes with a RankStack reranker and keeps the ``top_n`` best (all when None)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    reranker: Any
    top_n: Optional[int] = None
    depth: Optional[int] = None

    @classmethod
    def class_name(cls) -> str:
        return "RankStackNodePostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise BadInput("reranking nodes needs the query (a QueryBundle)")
        if not nodes:
            return []
        docs = [RSDocument(docid=n.node.node_id, text=n.node.get_content(),
                           title=str(n.node.metadata.get("title") or "")) for n in nodes]
        ranking = rerank_texts(self.reranker, query_bundle.query_str, docs, self.depth)
        by_id = {n.node.node_id: n for n in nodes}
        return [NodeWithScore(node=by_id[c.docid].node, score=float(c.score))
                for c in ranking.candidates[: self.top_n or len(nodes)]]

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore],
                                  query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)
