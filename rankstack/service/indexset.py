"""A collection's indexes, kept in step with its :class:`~rankstack.service.log.DocumentLog`.

Each configured index (``bm25``, ``dense``, ``dense:index=(binary:rescore=int8)``...) lives in its own folder and
records the last log sequence it includes (``applied_seq``); it is written atomically after every change. At open,
each one catches up with the log (a crash between the log write and the index write loses nothing: the log is the
source of truth). BM25 is a :class:`~rankstack.index.lucene_live.LiveLuceneIndex` that writes only what changed
(``bm25_updates: incremental``; ``rebuild`` rebuilds Lucene on every change, without a copy of the documents); vector
indexes remove and add only what changed, and the encoding happens before they are locked, so searches wait only
for the swap.

Retrievers handed to pipelines look up the current index at each call, so a compiled pipeline never goes stale.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

from rankstack.errors import BadInput
from rankstack.retrieval import kinds
from rankstack.retrieval.base import Retriever
from rankstack.retrieval.kinds import RetrievalKind, Settings
from rankstack.service.segments import Journal
from rankstack.service.slots import DurableSlot, LiveRetriever, LiveTokens, RWLock, Slot

logger = logging.getLogger(__name__)

__all__ = ["IndexSet", "RWLock"]


class IndexSet:
    """The slots of a collection's configured indexes (one per distinct stored index), opened, written and closed
    together. ``lock``: searches read under it, writes swap under it."""

    def __init__(self, root: Path, config, models, log):
        self.root = Path(root)
        self.config = config
        self.models = models
        self.log = log
        self.lock = RWLock()
        self.derive_lock = threading.Lock()
        self.slots: dict[str, Slot | DurableSlot] = {}
        defaults = self.defaults()
        for key, text in config.index_keys().items():
            kind, s = kinds.resolve(text, defaults)
            common = dict(kind=kind, settings=s, spec=text, path=self.root / kind.folder(s, defaults),
                          name=config.name)
            if kind.self_durable:
                self.slots[key] = DurableSlot(**common, mode=config.bm25_updates)
            else:
                self.slots[key] = Slot(**common, encoder=kind.encoder(s, models))

    def defaults(self) -> dict:
        return {"model": self.config.encoder}

    def of_kind(self, name: str) -> list[Slot | DurableSlot]:
        """The slots whose index the kind ``name`` reads (the multi-vector kinds share one)."""
        return [s for s in self.slots.values() if s.kind.name == name or
                s.settings.index_key == kinds.resolve(name, self.defaults())[1].index_key]

    # ---- opening and applying changes --------------------------------------------------------------------------

    def open(self) -> None:
        for slot in self.slots.values():
            if isinstance(slot, DurableSlot):
                slot.open(self.log, self.lock)
                continue
            slot.segments.min_docs = self.config.index_merge_docs
            slot.open()
            slot.sync(self.log, self.lock, None, self._checkpoint)

    def apply(self, changed: Sequence[str]) -> None:
        """Bring every index to the log's state after a write that changed ``changed`` (puts and deletes)."""
        for slot in self.slots.values():
            slot.sync(self.log, self.lock, changed, self._checkpoint)

    def close(self) -> None:
        for slot in self.slots.values():
            if isinstance(slot, DurableSlot):
                slot.close(self.lock)
            else:
                slot.close(self._checkpoint)

    def _checkpoint(self, slot: Slot, changed: int, *, force: bool = False) -> None:
        """Save ``slot``'s index when enough has changed since the last save.

        The document log is the source of truth and is fsynced before a write is acknowledged; an index file is a
        checkpoint of it at ``meta["applied_seq"]``. Saving a whole vector index on every write made an upsert cost
        grow with the collection, so the in-memory index takes each write at once (searchable on return) and is
        checkpointed every ``index_checkpoint_docs`` changed documents or ``index_checkpoint_seconds`` (at the next
        write), and at close. After a crash, the next open replays the log from the checkpoint's sequence (``_delta``
        with ``changed=None``): at most that many documents are encoded again, or read back from the embedding cache.

        Once the folder holds a saved index, a checkpoint writes only the documents changed since the previous one
        (the slot's journal) as a segment beside it, O(those documents); the segments are merged into the saved
        index in the background (:mod:`rankstack.service.segments`). The whole index is saved here only when there
        is none yet, or when it was trained since.
        """
        slot.unsaved += changed
        cfg = self.config
        due = force or slot.unsaved >= cfg.index_checkpoint_docs or \
            time.monotonic() - slot.saved_at >= cfg.index_checkpoint_seconds
        if not due or (slot.unsaved == 0 and slot.path.exists()):
            return
        if slot.journal is not None and slot.path.exists():
            # O(the documents changed): one segment file beside the saved base (rankstack.service.segments)
            if slot.applied_seq != slot.disk_seq:
                slot.segments.write(slot.disk_seq, slot.applied_seq, slot.journal, slot.pack)
                slot.disk_seq = slot.applied_seq
            slot.journal = Journal()
            if slot.segments.due(len(slot.index)):  # the base is rewritten from disk, off the write path
                slot.segments.merge_in_background(slot.load_base, slot.replay)
        else:  # no base yet, or the index was trained since: save it whole
            slot.segments.wait()
            with self.lock.read():  # writers wait, searches go on while the file is written
                index = slot.index
                index.meta["applied_seq"] = slot.applied_seq
                index.save(slot.path)
            slot.segments.clear()
            slot.disk_seq = slot.applied_seq
            slot.journal = Journal() if slot.kind.ready(slot.index) is None else None
        slot.unsaved, slot.saved_at = 0, time.monotonic()

    # ---- retrievers --------------------------------------------------------------------------------------------

    def slot_for(self, kind: RetrievalKind, settings: Settings) -> Slot | DurableSlot:
        slot = self.slots.get(settings.index_key)
        if slot is None:
            raise BadInput(f"collection {self.config.name!r} keeps no index for {settings.kind} with these settings; "
                           f"its indexes are {self.config.indexes} (add the retriever's spec to them)")
        return slot

    def serve(self, kind: RetrievalKind, settings: Settings) -> Retriever:
        """The kind's retriever over the slot's index of the moment."""
        slot = self.slot_for(kind, settings)
        kind.derived_key(settings, slot.live if isinstance(slot, DurableSlot) else slot.index,
                         changing=True)  # a search the collection cannot serve is refused now, not at search
        return LiveRetriever(self, slot, settings, lambda index, derived: kind.retriever(
            settings, index, models=self.models, derived=derived, path=slot.path))

    def token_index_for(self, encoder):
        for slot in self.slots.values():
            s = slot.settings
            if (isinstance(slot, Slot) and getattr(s, "tokens_key", None) and s.model == encoder.model_name
                    and slot.encoder.document_length == encoder.document_length):
                return LiveTokens(slot)
        return None
