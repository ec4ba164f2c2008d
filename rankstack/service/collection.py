"""A collection: a named, persistent set of documents (its :class:`~rankstack.service.log.DocumentLog`), the
indexes it keeps (:class:`~rankstack.service.indexset.IndexSet`), and its pipeline.

Durability: every change is committed to the log (fsync'd) before it is acknowledged; the log is the source of truth
and the only copy of the documents. Searching compiles the collection's pipeline (or a request's override) once per
distinct spec and runs it with the one executor, exactly as ``rankstack eval`` and ``rankstack search`` do.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rankstack.errors import BadInput, UnknownDocid
from rankstack.pipeline.compile import compile_pipeline
from rankstack.pipeline.core import PipelineOutput
from rankstack.pipeline.resources import Resources
from rankstack.records import Document, Query, Ranking
from rankstack.models import ModelCache
from rankstack.service.config import CollectionConfig, PipelineConfig, Settings
from rankstack.service.indexset import IndexSet
from rankstack.service.log import DocumentLog
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["Collection", "SearchableCollection"]

_COMPILED_CACHE = 64


class SearchableCollection(Resources):
    """What every served collection shares: its config, the named rerankers, and the compiled pipelines (the
    collection's own, or a request's override) that searching runs. Subclasses say where retrievers come from."""

    def __init__(self, config: CollectionConfig, *, models: ModelCache | None = None, settings: Settings | None = None,
                 rerankers: Callable[[Item], tuple[object, int]] | None = None):
        super().__init__(models)
        self.config = config
        self.name = config.name
        self.settings = settings or Settings()
        self.named_rerankers = self.settings.reranker_specs()
        self._shared_rerankers = rerankers
        self._compiled: collections.OrderedDict[str, object] = collections.OrderedDict()
        self._compiled_lock = threading.Lock()
        self.relevance_adapter = config.relevance_adapter  # checked by the config

    def reranker(self, item: Item):
        from rankstack.rerank.factory import RerankerSpec, reranker_class

        # late-interaction rerankers read this collection's token index: one per collection (the model is shared)
        token = getattr(reranker_class(RerankerSpec.from_item(item, self.named_rerankers).kind), "wants_token_index",
                        False)
        if self._shared_rerankers is not None and not token:
            return self._shared_rerankers(item)
        return super().reranker(item)

    # ---- search ------------------------------------------------------------------------------------------------

    def pipeline(self, override: PipelineConfig | None = None, filters: Mapping[str, object] | None = None,
                 min_relevance: float | None = None):
        """The compiled pipeline of this collection (with a request's override, filters and relevance threshold:
        a relevance stage before the first reranker, using the collection's adapter)."""
        try:
            spec = self.settings.pipeline_spec(self.config, override, filters)
        except BadInput as exc:
            if override is None:
                raise
            raise BadInput(f"invalid pipeline override: {exc}") from None
        if min_relevance is not None:
            from rankstack.pipeline.spec import insert_relevance

            if not self.relevance_adapter:
                raise BadInput(f"collection {self.name!r} has no relevance adapter, so min_relevance cannot be "
                               f"applied; fit one (`rankstack relevance fit`) and set relevance_adapter in its config")
            spec = insert_relevance(spec, min_relevance)
        key = str(spec)
        with self._compiled_lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
        pipe = compile_pipeline(spec, self)
        with self._compiled_lock:
            self._compiled[key] = pipe
            while len(self._compiled) > _COMPILED_CACHE:
                self._compiled.popitem(last=False)
        return pipe

    def run(self, queries: Sequence[Query], k: int, *, pipeline: PipelineConfig | None = None,
            filters: Mapping[str, object] | None = None, min_relevance: float | None = None) -> PipelineOutput:
        return self.pipeline(pipeline, filters, min_relevance).run(queries, k, with_documents=True)

    def search(self, queries: Sequence[Query], k: int, *, pipeline: PipelineConfig | None = None,
               filters: Mapping[str, object] | None = None) -> tuple[list[Ranking], dict[str, float]]:
        """Run the collection's pipeline (or the override); returns rankings and seconds per stage."""
        out = self.run(queries, k, pipeline=pipeline, filters=filters)
        return out.rankings, out.timings

    def health(self) -> dict:
        return {"ok": True}


class Collection(SearchableCollection):
    """``rerankers``: the service's shared reranker registry (item -> (reranker, depth)); without it the collection
    builds its own. ``settings``: for named rerankers and pipeline checks (defaults when None)."""

    def __init__(self, root: str | os.PathLike, config: CollectionConfig, *, models: ModelCache | None = None,
                 settings: Settings | None = None,
                 rerankers: Callable[[Item], tuple[object, int]] | None = None):
        super().__init__(config, models=models, settings=settings, rerankers=rerankers)
        self.root = Path(root)
        self._write_lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = DocumentLog(self.root / "log.jsonl", compact_bytes=config.log_compact_bytes or None)
        self.documents = self.log
        self.indexes = IndexSet(self.root, config, self.models, self.log)
        self.indexes.open()

    @property
    def seq(self) -> int:
        return self.log.seq

    def close(self) -> None:
        """Release the collection's files (the live Lucene writer's lock, the log)."""
        with self._write_lock:
            self.indexes.close()
            self.log.close()

    def __len__(self) -> int:
        return len(self.log)

    # ---- Resources ---------------------------------------------------------------------------------------------

    def defaults(self, kind) -> dict:
        return self.indexes.defaults()

    def serve(self, kind, settings):
        return self.indexes.serve(kind, settings)

    def index(self, kind, settings):
        slot = self.indexes.slot_for(kind, settings)
        return slot.current(), slot.path

    def token_index_for(self, encoder):
        return self.indexes.token_index_for(encoder)

    # ---- writes ------------------------------------------------------------------------------------------------

    def upsert(self, documents: Sequence[Document]) -> int:
        """Add or replace documents; returns the log sequence number once durable and searchable. Documents equal
        to the stored ones are not written again."""
        if not documents:
            raise BadInput("no documents given")
        ids = [d.docid for d in documents]
        if len(set(ids)) != len(ids):
            raise BadInput("duplicate docids in one request")
        with self._write_lock:
            changed = [d for d in documents if d.docid not in self.log or self.log[d.docid] != d]
            if not changed:
                return self.log.seq
            self.log.write(puts=changed)
            self.indexes.apply([d.docid for d in changed])
            return self.log.seq

    def delete(self, docid: str) -> int:
        with self._write_lock:
            if docid not in self.log:
                raise UnknownDocid(f"unknown docid {docid!r} in collection {self.name!r}")
            self.log.write(deletes=[docid])
            self.indexes.apply([docid])
            return self.log.seq

    def get(self, docid: str) -> Document:
        if docid not in self.log:
            raise UnknownDocid(f"unknown docid {docid!r} in collection {self.name!r}")
        return self.log[docid]
