"""A sharded collection as pipeline resources: every retrieval kind it holds, over its shards.

An item resolves as over one index, then reads the :class:`~rankstack.retrieval.sharded.ShardedIndex` of its kind
(the interface of the single index), so the kind's ordinary retriever runs over the shards; the pipeline (fusion,
filters, rerankers) runs unchanged over the merged rankings, with documents read from the shards' stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rankstack.errors import BadInput
from rankstack.models import ModelCache
from rankstack.pipeline.resources import Resources, rrf_of
from rankstack.retrieval import kinds
from rankstack.retrieval.kinds import RetrievalKind, Settings
from rankstack.retrieval.sharded import ShardedDocuments, ShardedIndex, ShardSet

__all__ = ["ShardedResources"]


class ShardedResources(Resources):
    """``path``: a sharded collection (``rankstack index --shards N``). ``address``: None serves every shard in this
    process; a Ray address serves each shard from ``replicas`` Ray actors (see
    :class:`~rankstack.distributed.router.ShardRouter` for failures)."""

    def __init__(self, path: str | os.PathLike | ShardSet, *, address: str | None = None, replicas: int = 1,
                 allow_partial: bool = False, timeout_s: float = 120.0, models: ModelCache | None = None):
        from rankstack.distributed.router import ShardRouter

        super().__init__(models)
        self.shardset = path if isinstance(path, ShardSet) else ShardSet.load(Path(path))
        self.router = ShardRouter(self.shardset, address=address, replicas=replicas, allow_partial=allow_partial,
                                  timeout_s=timeout_s)
        self.documents = ShardedDocuments(self.shardset)
        # the shards' recorded defaults (each kind names its own keys: "model" is the dense encoder's)
        self.default_model = next((e["defaults"]["model"] for e in self.shardset.params["indexes"]
                                   if (e.get("defaults") or {}).get("model")), self.default_model)
        self.stats: dict[str, dict[str, float]] = {}
        self.paths = [str(self.shardset.path)]
        self._views: dict[str, ShardedIndex] = {}
        self.overrides: dict[str, Any] = {}
        """Defaults this place imposes over those the shards were built with (a service's encoder)."""

    def default_spec(self) -> str:
        return rrf_of([e["spec"] for e in self.shardset.params["indexes"]])

    def resolve(self, item) -> tuple[RetrievalKind, Settings]:
        item = kinds.canonical(item)
        kind = kinds.get(item.kind)
        held = []
        for e in self.shardset.params["indexes"]:
            settings = kind.settings(item, {**(e.get("defaults") or {}), **self.overrides})
            if settings.index_key == e["index_key"]:
                return kind, settings
            if set(kinds.get(e["kind"]).saved_kinds) & set(kind.saved_kinds):
                held.append(e)
        if held:
            raise BadInput(f"the pipeline's {item} reads the index {settings.index_key!r}, but the shards of "
                           f"{self.shardset.path} hold {held[0]['index_key']!r} (built from {held[0]['spec']!r}); drop "
                           f"the options that differ, or rebuild the collection with --kind '{item}'")
        raise BadInput(f"the pipeline uses {item.kind} but the sharded collection {self.shardset.path} holds "
                       f"{' and '.join(e['spec'] for e in self.shardset.params['indexes'])}; rebuild it with "
                       f"--kind {item.kind}")

    def _entry(self, settings: Settings) -> dict:
        return next(e for e in self.shardset.params["indexes"] if e["index_key"] == settings.index_key)

    def index(self, kind: RetrievalKind, settings: Settings) -> tuple[Any, Path | None]:
        e = self._entry(settings)
        with self._lock:
            key = settings.key
            if key not in self._views:
                self._views[key] = ShardedIndex(self.shardset, e["folder"], settings, self.router)
            return self._views[key], None

    def derived(self, kind, settings, index, key, path):
        return index.derived(settings, key)

    def health(self) -> list[dict]:
        return self.router.health()

    def close(self) -> None:
        self.router.close()
