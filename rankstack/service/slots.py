"""The live form of one index of a collection: a *slot* owns opening it, applying each write of the log to it, and
checkpointing it, for any retrieval kind (:mod:`rankstack.retrieval.kinds`); :class:`~rankstack.service.indexset.
IndexSet` only loops over its slots.

Two slot types, by what the kind says of its live index:

- :class:`Slot` (dense, sparse, multi-vector, and any kind that encodes documents): the index takes each write in
  memory (searchable on return) and is checkpointed from the encoded documents, as segments beside a saved base
  (:mod:`rankstack.service.segments`). Derived indexes (MUVERA's encodings, PLAID's codes) are derived at the first
  search that needs them and then follow each write, or are derived afresh when their kind says so.
- :class:`DurableSlot` (BM25 on Lucene): the index commits itself with every write, recording the log sequence it
  holds; a new searcher generation is swapped in after each write.

:class:`LiveRetriever` is the one retriever over a slot: it takes the slot's current index under the collection's
read lock at each call, so a compiled pipeline never goes stale.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound
from rankstack.records import Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.retrieval import kinds
from rankstack.retrieval.kinds import RetrievalKind, Settings
from rankstack.service.segments import Journal, Segments

logger = logging.getLogger(__name__)

__all__ = ["RWLock", "Slot", "DurableSlot", "LiveRetriever", "LiveTokens"]


class RWLock:
    """Many readers or one writer; a waiting writer holds new readers back."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass
class _Base:
    """What every slot shares: its kind and settings (of the first configured item reading it), its folder, and the
    retrievers made over its current index generation."""

    kind: RetrievalKind
    settings: Settings
    spec: str
    path: Path
    name: str = ""  # the collection's, for log lines
    generation: int = 0  # bumps when the index object is replaced: retrievers over the old one are dropped
    retrievers: dict = field(default_factory=dict)  # settings key -> (generation, retriever)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def retriever(self, settings: Settings, make: Callable[[], Retriever], tag: Any = None) -> Retriever:
        """The retriever of ``settings`` over the current index generation (and derived index ``tag``)."""
        with self.guard:
            found = self.retrievers.get(settings.key)
            if found is None or found[0] != (self.generation, tag):
                found = self.retrievers[settings.key] = ((self.generation, tag), make())
            return found[1]

    def swapped(self) -> None:
        """The index object was replaced (call under the collection's write lock: no search is in flight); the
        retrievers over the old one are closed."""
        with self.guard:
            old, self.retrievers = self.retrievers, {}
            self.generation += 1
        for _, r in old.values():
            close = getattr(r, "close", None)
            if close is not None:
                close()


@dataclass
class Slot(_Base):
    """An index the service checkpoints from encoded documents: the index in memory, the log sequence it includes,
    and what changed since its last checkpoint (see :meth:`checkpoint`)."""

    encoder: Any = None
    index: Any = None
    applied_seq: int = 0
    unsaved: int = 0  # documents changed in memory since the last checkpoint
    saved_at: float = field(default_factory=time.monotonic)
    disk_seq: int = 0  # the log sequence the folder holds (its base and segments)
    journal: Journal | None = None  # changes since disk_seq; None: the next checkpoint saves the whole index
    segments: Segments = None
    state: dict = field(default_factory=dict)  # the kind's scratch space (vectors waiting for training)
    derived: dict = field(default_factory=dict)  # derived key -> (settings, derived index)

    def __post_init__(self):
        self.segments = Segments(self.path)

    # how the kind's documents go into a segment and come back (rankstack.service.segments)
    def pack(self, payloads: list) -> dict:
        return self.kind.pack(payloads)

    def replay(self, index, removed: list[str], added: list[str], arrays: dict) -> None:
        self.kind.apply(index, removed, added, self.kind.unpack(arrays) if added else None, {})

    def load_base(self, path: Path):
        return self.kind.load(self.settings, path, None)

    # ---- open ------------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Load the saved index and apply its segments (no encoding), or start an empty one when there is none (or
        it cannot be read, or was built otherwise: the log replays it)."""
        kind, s = self.kind, self.settings
        try:
            index = kind.load(s, self.path, None)
            why = kind.matches(s, index)
            if why is not None:
                raise IndexCorrupt(why)
        except (IndexNotFound, IndexCorrupt, BadInput) as exc:
            if self.path.exists():
                logger.warning("collection %s: rebuilding %s (%s)", self.name, self.spec, exc)
            self.fresh(kind.empty(s, {"applied_seq": 0}, encoder=self.encoder))
            return
        seq = self.segments.apply(index, index.meta.get("applied_seq", 0), self.replay)
        index.meta["applied_seq"] = seq
        self.index, self.applied_seq, self.disk_seq = index, seq, seq
        self.journal = Journal() if kind.ready(index) is None else None
        self.derived = {}
        self.swapped()

    def fresh(self, index) -> None:
        """``index`` is new (no folder, or one that could not be read): the first checkpoint saves it whole."""
        self.segments.wait()
        self.segments.clear()
        self.index, self.applied_seq, self.disk_seq, self.journal = index, 0, 0, None
        self.state, self.derived = {}, {}
        self.swapped()

    # ---- writes ------------------------------------------------------------------------------------------------

    def holds(self, docid: str) -> bool:
        return self.kind.holds(self.index, self.state, docid)

    def held(self) -> list[str]:
        return self.kind.held(self.index, self.state)

    def sync(self, log, lock: RWLock, changed: Sequence[str] | None, checkpoint: Callable) -> None:
        """Bring the index to the log: drop what changed, encode and add the new versions (the encoding, and what
        derived indexes need of it, before the write lock), let derived indexes follow, then checkpoint."""
        kind, index = self.kind, self.index
        stale, todo = delta(log, self.applied_seq, self.holds, self.held, changed)
        if not stale and not todo and self.applied_seq == log.seq:
            return
        batch = kind.encode(self.settings, self.encoder, [log[d] for d in todo]) if todo else None
        # a derived index belongs to the kind of the item that derived it (muvera, plaid over maxsim's tokens)
        prepared = {key: kinds.get(s.kind).prepare(s, batch) for key, (s, _) in self.derived.items()} if todo else {}
        with lock.write():
            was_ready = kind.ready(index) is None
            kind.apply(index, stale, todo, batch, self.state)
            if self.journal is not None:
                self.journal.remove(stale)
                for d, payload in zip(todo, kind.split(batch) if todo else []):
                    self.journal.put(d, payload)
            for key, (s, d) in list(self.derived.items()):  # (a search may derive one after `prepared` was made)
                if not kinds.get(s.kind).follow(s, d, stale, todo, batch, prepared.get(key)):
                    del self.derived[key]
            self.applied_seq = log.seq
            reason = kind.ready(index)
        if reason is not None:  # not saved: what waits is replayed from the log
            logger.info("collection %s: %s: %s (has %d)", self.name, self.spec, reason, len(log))
            return
        if not was_ready:
            self.journal = None  # trained now: the next checkpoint saves it whole
        checkpoint(self, len(stale) + len(todo))

    def derived_for(self, settings: Settings, index, key: str, lock: threading.Lock):
        """The index ``settings`` derives from this slot's, derived at the first search that needs it."""
        with lock:
            if key not in self.derived:
                self.derived[key] = (settings, kinds.get(settings.kind).derive(settings, index))
            return self.derived[key][1]

    def current(self):
        return self.index

    def close(self, checkpoint: Callable) -> None:
        if self.index is not None:
            checkpoint(self, 0, force=True)
        self.segments.wait()


@dataclass
class DurableSlot(_Base):
    """An index that commits itself with every write (BM25 on Lucene): ``live`` is the kind's live index, ``index``
    what searches read (None while the collection is empty)."""

    mode: str = "incremental"
    live: Any = None
    index: Any = None

    def open(self, log, lock: RWLock) -> None:
        self.live = self.kind.live(self.path, self.mode)
        self.sync(log, lock, None)

    def sync(self, log, lock: RWLock, changed: Sequence[str] | None, checkpoint: Callable | None = None) -> None:
        """Apply a write in place (only ``changed``) when the index held the log up to the previous write; else
        (first open, a crash between the log's commit and the index's, a rebuilding kind) rewrite it from the log."""
        live = self.live
        if live.applied_seq == log.seq and changed is None:
            pass
        elif changed is not None and live.incremental and live.applied_seq == log.seq - 1:
            live.write([log[d] for d in changed if d in log], [d for d in changed if d not in log], log.seq)
        else:
            if live.applied_seq is not None and live.incremental:
                logger.warning("collection %s: %s holds seq %s, the log %d: rewriting it from the log", self.name,
                               self.spec, live.applied_seq, log.seq)
            live.rebuild((log[d] for d in log), log.seq)
        with lock.write():
            self.index = live.searchable() if len(log) else None
            self.swapped()

    def refresh(self, lock: RWLock) -> None:
        """New searchers over the live index as it is now (after a merge outside the write path)."""
        with lock.write():
            self.index = self.live.searchable()
            self.swapped()

    def current(self):
        return self.index

    def close(self, lock: RWLock) -> None:
        with lock.write():
            self.index = None
            self.swapped()
        self.live.close()


def delta(log, applied_seq: int, holds, all_held, changed: Sequence[str] | None):
    """What an index that includes the log up to ``applied_seq`` (``holds(docid)``; ``all_held()`` lists its docids)
    must drop (``stale``) and (re)encode (``todo``) to match the log: only ``changed`` when it was in step before this
    write, else everything written since ``applied_seq`` (recovery after a crash, first open)."""
    if changed is not None and applied_seq == log.seq - 1:
        return [d for d in changed if holds(d)], [d for d in changed if d in log]
    held = all_held()
    stale = [d for d in held if d not in log or log.seq_of(d) > applied_seq]
    present, stale_set = set(held), set(stale)
    return stale, [d for d in log if d not in present or d in stale_set]


class LiveRetriever(Retriever):
    """A kind's retriever over a slot's index of the moment: the index is read under the collection's read lock at
    each call (a write swaps it under the write lock), and the kind's own retriever is made once per index
    generation."""

    def __init__(self, indexes, slot: _Base, settings: Settings, make: Callable[[Any, Any], Retriever]):
        self.indexes, self.slot, self.settings, self._make = indexes, slot, settings, make
        self.kind = settings.kind
        model = getattr(settings, "model", "")
        self.name = f"{settings.kind}({str(model).split('/')[-1]})" if model else settings.kind

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        with self.indexes.lock.read():
            index = self.slot.current()
            if index is None:
                return [Ranking(query=q) for q in queries]
            reason = self.slot.kind.ready(index)
            if reason is not None:
                raise BadInput(f"{reason} and the collection has {len(self.indexes.log)}")
            if len(index) == 0:
                return [Ranking(query=q) for q in queries]
            key = kinds.get(self.settings.kind).derived_key(self.settings, index, changing=True)
            derived = (self.slot.derived_for(self.settings, index, key, self.indexes.derive_lock)
                       if key is not None else None)
            r = self.slot.retriever(self.settings, lambda: self._make(index, derived),
                                    tag=None if derived is None else id(derived))
            return r.retrieve(queries, k)


class LiveTokens:
    """The current token index of a collection, for late-interaction rerankers (reads go to the index of the
    moment)."""

    def __init__(self, slot: Slot):
        self.slot = slot

    @property
    def current(self):
        return self.slot.index

    def __getattr__(self, name):
        return getattr(self.slot.index, name)

    def __contains__(self, docid: str) -> bool:
        return docid in self.slot.index

    def __len__(self) -> int:
        return len(self.slot.index)
