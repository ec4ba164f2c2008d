"""A served collection in front of a sharded collection (:mod:`rankstack.retrieval.sharded`): read-only, its shards in
the service's process or on Ray actors (``sharded.ray_address``), each shard's state in its health report, and
responses flagged partial when a shard is left out."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Sequence

from rankstack.errors import BadInput, UnknownDocid
from rankstack.pipeline.core import PipelineOutput
from rankstack.records import Document, Query
from rankstack.models import ModelCache
from rankstack.service.collection import SearchableCollection
from rankstack.service.config import CollectionConfig, PipelineConfig, Settings
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["ShardedCollection"]


class ShardedCollection(SearchableCollection):
    """``config.sharded`` names the folder and how to serve it; ``config.indexes`` must be among the shards'."""

    def __init__(self, config: CollectionConfig, *, models: ModelCache | None = None,
                 settings: Settings | None = None, rerankers: Callable[[Item], tuple[object, int]] | None = None):
        from rankstack.distributed.sharded import ShardedResources

        super().__init__(config, models=models, settings=settings, rerankers=rerankers)
        sc = config.sharded
        self.shards = ShardedResources(sc.path, address=sc.ray_address, replicas=sc.replicas,
                                       allow_partial=sc.allow_partial, timeout_s=sc.timeout_s, models=self.models)
        self.shards.overrides = {"model": config.encoder}  # dense items naming no model read the collection's
        for text in config.indexes:  # every configured index must be one the shards hold, built the same way
            try:
                self.shards.resolve(text)
            except BadInput as exc:
                raise BadInput(f"collection {self.name!r}: index {text!r}: {exc}") from None
        self.documents = self.shards.documents

    @property
    def seq(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.shards.shardset)

    def retriever(self, item: Item):
        return self.shards.retriever(item)

    def index(self, kind, settings):
        return self.shards.index(kind, settings)

    def run(self, queries: Sequence[Query], k: int, *, pipeline: PipelineConfig | None = None,
            filters: Mapping[str, object] | None = None, min_relevance: float | None = None) -> PipelineOutput:
        router = self.shards.router
        router.take_failed()
        out = super().run(queries, k, pipeline=pipeline, filters=filters, min_relevance=min_relevance)
        failed = router.take_failed()
        if failed:
            names = {router.index.shards[i]["name"]: err for i, err in failed.items()}
            out = dataclasses.replace(out, partial=names)
        return out

    def upsert(self, documents: Sequence[Document]) -> int:
        raise BadInput(f"collection {self.name!r} fronts a sharded index and is read-only; rebuild it with "
                       f"`rankstack index --shards N` to change its documents")

    def delete(self, docid: str) -> int:
        return self.upsert([])

    def get(self, docid: str) -> Document:
        try:
            return self.documents[docid]
        except UnknownDocid:
            raise UnknownDocid(f"unknown docid {docid!r} in collection {self.name!r}") from None

    def health(self) -> dict:
        shards = self.shards.health()
        return {"ok": all(s["ok"] for s in shards), "shards": shards}
