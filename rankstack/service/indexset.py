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
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound
from rankstack.pipeline.resources import DenseSettings, SparseSettings, slug
from rankstack.pipeline.spec import parse_pipeline
from rankstack.records import Query, Ranking
from rankstack.retrieval.base import Retriever, validate_queries
from rankstack.service.segments import Journal, Segments
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["IndexSet"]


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
class _Slot(ABC):
    """One vector index of the collection: its spec, settings, folder, encoder, the index in memory, the log
    sequence it includes, and what changed since its last checkpoint (see :meth:`IndexSet._checkpoint`)."""

    spec: str
    settings: object  # DenseSettings, SparseSettings or MultiVectorSettings
    path: Path
    encoder: object
    index: object = None
    applied_seq: int = 0
    unsaved: int = 0  # documents changed in memory since the last checkpoint
    saved_at: float = field(default_factory=time.monotonic)
    disk_seq: int = 0  # the log sequence the folder holds (its base and segments)
    journal: Journal | None = None  # changes since disk_seq; None: the next checkpoint saves the whole index
    segments: Segments = None

    def __post_init__(self):
        self.segments = Segments(self.path)

    # how each kind keeps its documents in a segment (see rankstack.service.segments)
    @abstractmethod
    def pack(self, payloads: list) -> dict:
        """The arrays of a segment from the journal's per-document payloads."""

    @abstractmethod
    def replay(self, index, removed: list[str], added: list[str], arrays: dict) -> None:
        """Apply one segment (as :meth:`pack` wrote it) to ``index``."""

    @abstractmethod
    def load_base(self, path: Path):
        """The saved index at ``path``, as a new object."""

    @staticmethod
    def _remove_present(index, removed: list[str]) -> None:
        gone = [d for d in removed if d in index]
        if gone:
            index.remove(gone)

    def opened(self, index) -> None:
        """``index`` was loaded from the folder: apply its segments, and journal the writes from here on (an index
        that still waits for training is saved whole once trained)."""
        seq = self.segments.apply(index, index.meta.get("applied_seq", 0), self.replay)
        index.meta["applied_seq"] = seq
        self.index, self.applied_seq, self.disk_seq = index, seq, seq
        self.journal = Journal() if getattr(index, "trained", True) else None

    def fresh(self, index) -> None:
        """``index`` is new (no folder, or one that could not be read): the first checkpoint saves it whole."""
        self.segments.wait()
        self.segments.clear()
        self.index, self.applied_seq, self.disk_seq, self.journal = index, 0, 0, None


@dataclass
class _Dense(_Slot):
    pending: dict = field(default_factory=dict)  # docid -> vector, while a compressed index waits for training

    def pack(self, payloads):
        return {"vectors": np.stack(payloads).astype(np.float32, copy=False)}

    def replay(self, index, removed, added, arrays):
        self._remove_present(index, removed)
        if added:
            index.add(added, arrays["vectors"], upsert=True)

    def load_base(self, path):
        from rankstack.index.registry import load_vector_index

        return load_vector_index(path, dim=self.encoder.dim)


@dataclass
class _Sparse(_Slot):
    retrievers: dict = field(default_factory=dict)  # search settings -> SparseRetriever (engines cached inside)

    def pack(self, payloads):
        import scipy.sparse as sp

        out = {}
        for name, rows in (("w", [w for w, _ in payloads]), ("t", [t for _, t in payloads])):
            m = sp.vstack(rows, format="csr")
            out.update({f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr,
                        f"{name}_shape": np.array(m.shape, np.int64)})
        return out

    def replay(self, index, removed, added, arrays):
        import scipy.sparse as sp

        self._remove_present(index, removed)
        if added:
            w, t = (sp.csr_matrix((arrays[f"{n}_data"], arrays[f"{n}_indices"], arrays[f"{n}_indptr"]),
                                  shape=tuple(arrays[f"{n}_shape"])) for n in ("w", "t"))
            index.add(added, w, t, upsert=True)

    def load_base(self, path):
        from rankstack.index.sparse import SparseIndex

        return SparseIndex.load(path)


@dataclass
class _Multi(_Slot):
    derived: dict = field(default_factory=dict)  # derived key -> (settings, FDE or PLAID index of the token index)

    def pack(self, payloads):  # float16, as the token index stores them
        return {"vectors": np.concatenate([v for v, _ in payloads]).astype(np.float16, copy=False),
                "lengths": np.array([len(v) for v, _ in payloads], np.int64),
                "token_ids": np.concatenate([t for _, t in payloads]).astype(np.int32, copy=False)}

    def replay(self, index, removed, added, arrays):
        from rankstack.retrieval.token_encoders import EncodedDocuments

        encoded = EncodedDocuments(vectors=arrays["vectors"].astype(np.float32), lengths=arrays["lengths"],
                                   token_ids=arrays["token_ids"]) if added else None
        index.update(removed, added, encoded)

    def load_base(self, path):
        from rankstack.index.multivector import MultiVectorIndex

        return MultiVectorIndex.load(path, dim=self.encoder.dim)


class IndexSet:
    def __init__(self, root: Path, config, models, log):
        self.root = Path(root)
        self.config = config
        self.models = models
        self.log = log
        self.lock = RWLock()
        self.sparse_lock = threading.Lock()
        self._bm25 = None  # LuceneIndex, LiveLuceneIndex or None (no documents yet)
        self._live = None  # the LiveLuceneIndex of bm25_updates: incremental
        self._bm25_retrievers: dict = {}
        self._bm25_lock = threading.Lock()
        self.has_bm25 = False
        self.dense: dict[str, _Dense] = {}
        self.sparse: dict[str, _Sparse] = {}
        self.multi: dict[str, _Multi] = {}
        for key, text in config.index_keys().items():
            if key == "bm25":
                self.has_bm25 = True
                continue
            item = parse_pipeline(text).source.item
            if item.kind in ("maxsim", "muvera", "plaid"):
                from rankstack.retrieval.multivector import MultiVectorSettings

                ms = MultiVectorSettings.of(item)
                self.multi[key] = _Multi(spec=text, settings=ms, path=self.root / f"multivector-{slug(ms.tokens_key)}",
                                         encoder=ms.encoder(models))
                continue
            if item.kind == "splade":
                ss = SparseSettings.of(item)
                self.sparse[key] = _Sparse(spec=text, settings=ss, path=self.root / f"splade-{slug(ss.vectors_key)}",
                                           encoder=ss.encoder(models))
                continue
            s = DenseSettings.of(item, config.encoder)
            default = s.index.kind == "flat" and s.vectors_key == str(Item(config.encoder))
            path = self.root / ("dense" if default else f"dense-{slug(key)}")  # 0.1 collections kept "dense"
            self.dense[key] = _Dense(spec=text, settings=s, path=path, encoder=s.encoder(models))

    # ---- opening and applying changes --------------------------------------------------------------------------

    def open(self) -> None:
        for slot in [*self.dense.values(), *self.sparse.values(), *self.multi.values()]:
            slot.segments.min_docs = self.config.index_merge_docs
        for slot in self.dense.values():
            self._open_dense(slot)
            self._sync_dense(slot, None)
        for sslot in self.sparse.values():
            self._open_sparse(sslot)
            self._sync_sparse(sslot, None)
        for mslot in self.multi.values():
            self._open_multi(mslot)
            self._sync_multi(mslot, None)
        if self.has_bm25:
            self._open_bm25()

    def apply(self, changed: Sequence[str]) -> None:
        """Bring every index to the log's state after a write that changed ``changed`` (puts and deletes)."""
        for slot in self.dense.values():
            self._sync_dense(slot, changed)
        for sslot in self.sparse.values():
            self._sync_sparse(sslot, changed)
        for mslot in self.multi.values():
            self._sync_multi(mslot, changed)
        if self.has_bm25:
            self._sync_bm25(changed)

    def _open_bm25(self) -> None:
        from rankstack.index.jvm import import_pyserini

        # Pyserini's search module imports its encoders (torch, transformers, onnxruntime): seconds, paid here
        # before the service reports ready, not by the first search
        import_pyserini("pyserini.search.lucene")
        if self.config.bm25_updates == "incremental":
            from rankstack.index.lucene_live import LiveLuceneIndex

            try:
                self._live = LiveLuceneIndex(self.root / "bm25")
            except IndexCorrupt as exc:
                logger.warning("collection %s: rebuilding bm25 (%s)", self.config.name, exc)
                import shutil

                shutil.rmtree(self.root / "bm25", ignore_errors=True)
                self._live = LiveLuceneIndex(self.root / "bm25")
            self._sync_live(None)
            return
        from rankstack.index.lucene import LuceneIndex

        try:
            index = LuceneIndex(self.root / "bm25")
            if index.params.get("applied_seq") != self.log.seq:
                raise IndexCorrupt("behind the log")
        except (IndexNotFound, IndexCorrupt):
            index = self._build_bm25()
        self._set_bm25(index)

    def close(self) -> None:
        for slot in [*self.dense.values(), *self.sparse.values(), *self.multi.values()]:
            if slot.index is not None:
                self._checkpoint(slot, 0, force=True)
            slot.segments.wait()
        self._set_bm25(None)
        if self._live is not None:
            self._live.close()

    def _checkpoint(self, slot: _Slot, changed: int, *, force: bool = False) -> None:
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
            slot.journal = Journal() if getattr(slot.index, "trained", True) else None
        slot.unsaved, slot.saved_at = 0, time.monotonic()

    def _sync_bm25(self, changed: Sequence[str]) -> None:
        if self._live is not None:
            self._sync_live(changed)
        else:
            self._set_bm25(self._build_bm25())

    def _sync_live(self, changed: Sequence[str] | None) -> None:
        """Apply a write to the live Lucene index in place (only ``changed``) when it held the log up to the
        previous write; else (first open, a crash between the log's commit and Lucene's) rewrite it from the log."""
        live, log = self._live, self.log
        if live.applied_seq == log.seq and changed is None:
            pass
        elif changed is not None and live.applied_seq == log.seq - 1:
            live.write([log[d] for d in changed if d in log], [d for d in changed if d not in log], log.seq)
        else:
            if live.applied_seq is not None:
                logger.warning("collection %s: bm25 holds seq %s, the log %d: rewriting it from the log",
                               self.config.name, live.applied_seq, log.seq)
            live.rebuild((log[d] for d in log), log.seq)
        self._set_bm25(live if len(log) else None)

    def _build_bm25(self):
        from rankstack.index.lucene import LuceneIndex

        if not len(self.log):
            return None
        return LuceneIndex.build((self.log[d] for d in self.log), self.root / "bm25",
                                 meta={"applied_seq": self.log.seq}, show_progress=False, store_documents=False)

    def _set_bm25(self, index) -> None:
        """Swap in the searchers of ``index`` (searches in flight finish on the old ones, which are then closed:
        each holds a Lucene reader on segments a merge may have replaced)."""
        with self.lock.write(), self._bm25_lock:
            old = self._bm25_retrievers
            self._bm25, self._bm25_retrievers = index, {}
        for r in old.values():
            r.close()

    def _new_index(self, slot: _Dense):
        from rankstack.index.registry import new_vector_index

        meta = {"model": slot.settings.model, "index_key": slot.settings.index_key, "applied_seq": 0}
        return new_vector_index(slot.settings.index, slot.encoder.dim, meta=meta)

    def _open_dense(self, slot: _Dense) -> None:
        from rankstack.index.registry import load_vector_index

        try:
            index = load_vector_index(slot.path, dim=slot.encoder.dim)
            key = index.meta.get("index_key")
            if (key is not None and key != slot.settings.index_key) or index.meta.get("model") != slot.settings.model:
                raise IndexCorrupt(f"built as {key or index.meta.get('model')!r}, configured as "
                                   f"{slot.settings.index_key!r}")
        except (IndexNotFound, IndexCorrupt) as exc:
            if slot.path.exists():
                logger.warning("collection %s: rebuilding %s (%s)", self.config.name, slot.spec, exc)
            slot.fresh(self._new_index(slot))
            return
        slot.opened(index)

    def _delta(self, applied_seq: int, holds, all_held, changed: Sequence[str] | None):
        """What an index that includes the log up to ``applied_seq`` (``holds(docid)``; ``all_held()`` lists its
        docids) must drop (``stale``) and (re)encode (``todo``) to match the log: only ``changed`` when it was in
        step before this write, else everything written since ``applied_seq`` (recovery after a crash, first open)."""
        log = self.log
        if changed is not None and applied_seq == log.seq - 1:
            return [d for d in changed if holds(d)], [d for d in changed if d in log]
        held = all_held()
        stale = [d for d in held if d not in log or log.seq_of(d) > applied_seq]
        present, stale_set = set(held), set(stale)
        return stale, [d for d in log if d not in present or d in stale_set]

    def _sync_dense(self, slot: _Dense, changed: Sequence[str] | None) -> None:
        log, index = self.log, slot.index
        stale, todo = self._delta(slot.applied_seq, lambda d: d in index or d in slot.pending,
                                  lambda: [*index.docids, *slot.pending], changed)
        if not stale and not todo and slot.applied_seq == log.seq:
            return
        vectors = self._encode(slot, todo)  # slow part, before taking the lock
        with self.lock.write():
            for d in stale:
                slot.pending.pop(d, None)
            gone = [d for d in stale if d in index]
            if gone:
                index.remove(gone)
            trained = getattr(index, "trained", True)
            if slot.journal is not None:
                slot.journal.remove(stale)
                for d, v in zip(todo, vectors):
                    slot.journal.put(d, v)
            if not trained:
                slot.pending.update(zip(todo, vectors))
                need = index.min_training_vectors()
                if len(slot.pending) < need:  # not saved: the pending vectors are replayed from the log
                    slot.applied_seq = log.seq
                    logger.info("collection %s: %s waits for %d documents to train (has %d)", self.config.name,
                                slot.spec, need, len(slot.pending))
                    return
                ids = list(slot.pending)
                vecs = np.stack([slot.pending[d] for d in ids])
                index.train(vecs)
                index.add(ids, vecs)
                slot.pending.clear()
                slot.journal = None  # trained now: the next checkpoint saves it whole
            elif todo:
                index.add(todo, vectors)
            slot.applied_seq = log.seq
        self._checkpoint(slot, len(stale) + len(todo))

    def _encode(self, slot: _Dense, docids: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(docids), 256):
            chunk = [self.log[d] for d in docids[i:i + 256]]
            out.append(slot.encoder.encode_documents(chunk))
        return np.concatenate(out) if out else np.zeros((0, slot.encoder.dim), np.float32)

    def _open_sparse(self, slot: _Sparse) -> None:
        from rankstack.index.sparse import SparseIndex

        try:
            index = SparseIndex.load(slot.path)
            if index.meta.get("vectors") != slot.settings.vectors_key:
                raise IndexCorrupt(f"built as {index.meta.get('vectors')!r}, configured as "
                                   f"{slot.settings.vectors_key!r}")
            index.check_encoder(slot.encoder)
        except (IndexNotFound, IndexCorrupt, BadInput) as exc:
            if slot.path.exists():
                logger.warning("collection %s: rebuilding %s (%s)", self.config.name, slot.spec, exc)
            slot.fresh(SparseIndex(slot.encoder.vocab, fingerprint=slot.encoder.fingerprint,
                                   meta={"model": slot.settings.model, "vectors": slot.settings.vectors_key,
                                         "applied_seq": 0}))
        else:
            slot.opened(index)
        slot.retrievers = {}

    def _sync_sparse(self, slot: _Sparse, changed: Sequence[str] | None) -> None:
        """As :meth:`_sync_dense`: remove what changed, add the new versions, checkpoint."""
        log, index = self.log, slot.index
        stale, todo = self._delta(slot.applied_seq, index.__contains__, lambda: index.docids, changed)
        if not stale and not todo and slot.applied_seq == log.seq:
            return
        docs = [self.log[d] for d in todo]
        # the slow part, before taking the lock
        weights, tokens = slot.encoder.encode_documents(docs, with_tokens=True) if docs else (None, None)
        with self.lock.write():
            if stale:
                index.remove(stale)
            if docs:
                index.add(todo, weights, tokens)
            if slot.journal is not None:
                slot.journal.remove(stale)
                for i, d in enumerate(todo):
                    slot.journal.put(d, (weights[i], tokens[i]))
            slot.applied_seq = log.seq
        self._checkpoint(slot, len(stale) + len(todo))

    def _open_multi(self, slot: _Multi) -> None:
        from rankstack.index.multivector import MultiVectorIndex

        try:
            index = MultiVectorIndex.load(slot.path, dim=slot.encoder.dim)
            if index.meta.get("vectors") != slot.settings.tokens_key:
                raise IndexCorrupt(f"built as {index.meta.get('vectors')!r}, configured as "
                                   f"{slot.settings.tokens_key!r}")
        except (IndexNotFound, IndexCorrupt, BadInput) as exc:
            if slot.path.exists():
                logger.warning("collection %s: rebuilding %s (%s)", self.config.name, slot.spec, exc)
            slot.fresh(MultiVectorIndex.empty(slot.encoder.dim, meta={
                "model": slot.settings.model, "vectors": slot.settings.tokens_key,
                "document_length": slot.encoder.document_length, "applied_seq": 0}))
        else:
            slot.opened(index)
        slot.derived = {}

    def _sync_multi(self, slot: _Multi, changed: Sequence[str] | None) -> None:
        """As :meth:`_sync_dense`: the token index takes the write in place (tombstones and appends, O(the changed
        documents)); MUVERA's FDE indexes drop and add the same documents (an FDE depends on its document alone);
        PLAID's codes take them in place too, compressed with the centroids trained on the corpus of its last
        derivation, until the live tokens have doubled since then (:meth:`PlaidIndex.outgrown`): the next PLAID
        search then derives it afresh (k-means over the corpus), O(1) amortised per token."""
        log, index = self.log, slot.index
        stale, todo = self._delta(slot.applied_seq, index.__contains__, lambda: index.docids, changed)
        if not stale and not todo and slot.applied_seq == log.seq:
            return
        encoded = slot.encoder.encode_documents([self.log[d] for d in todo]) if todo else None
        fdes = {key: settings.document_fdes(encoded) for key, (settings, _) in slot.derived.items()
                if settings.kind == "muvera" and todo}  # the slow parts, before taking the lock
        with self.lock.write():
            index.update(stale, todo, encoded)
            if slot.journal is not None:
                slot.journal.remove(stale)
                off = encoded.offsets if todo else None
                for i, d in enumerate(todo):
                    slot.journal.put(d, (encoded.vectors[off[i]:off[i + 1]].astype(np.float16),
                                         encoded.token_ids[off[i]:off[i + 1]]))
            for key, (settings, derived) in list(slot.derived.items()):
                if settings.kind == "plaid":
                    derived.update(stale, todo, encoded)
                    if derived.outgrown():
                        del slot.derived[key]
                    continue
                if settings.kind != "muvera":
                    del slot.derived[key]
                    continue
                gone = [d for d in dict.fromkeys([*stale, *todo]) if d in derived]
                if gone:
                    derived.remove(gone)
                if todo:  # (a search may have derived this one since the FDEs above were made)
                    derived.add(todo, fdes[key] if key in fdes else settings.document_fdes(encoded))
            slot.applied_seq = log.seq
        self._checkpoint(slot, len(stale) + len(todo))

    # ---- retrievers --------------------------------------------------------------------------------------------

    def retriever(self, item: Item) -> Retriever:
        from rankstack.pipeline.spec import retriever_item

        item = retriever_item(item)
        if item.kind == "bm25":
            if not self.has_bm25:
                raise BadInput(f"collection {self.config.name!r} has no bm25 index; its indexes are "
                               f"{self.config.indexes}")
            if item.get("engine", "lucene") != "lucene":
                raise BadInput("bm25:engine=matrix serves static indexes (rankstack eval/search); a collection's BM25 "
                               "changes with every write and runs on Lucene: drop engine=")
            return _LiveBM25(self, item.get("k1", 0.9), item.get("b", 0.4), item.get("threads"))
        if item.kind == "dense":
            s = DenseSettings.of(item, self.config.encoder)
            slot = self.dense.get(s.index_key)
            if slot is None:
                raise BadInput(f"collection {self.config.name!r} keeps no index for {item}; its indexes are "
                               f"{self.config.indexes}")
            return _LiveDense(self, slot, s)
        if item.kind == "splade":
            from rankstack.service.config import index_key

            sslot = self.sparse.get(index_key(item, self.config.encoder))
            if sslot is None:
                raise BadInput(f"collection {self.config.name!r} keeps no sparse index for {item}; its indexes are "
                               f"{self.config.indexes}")
            return _LiveSparse(self, sslot, SparseSettings.of(item))
        if item.kind in ("maxsim", "muvera", "plaid"):
            from rankstack.service.config import index_key

            mslot = self.multi.get(index_key(item, self.config.encoder))
            if mslot is None:
                raise BadInput(f"collection {self.config.name!r} keeps no multi-vector index for {item}; add 'maxsim' "
                               f"to its indexes (they are {self.config.indexes})")
            return _LiveMulti(self, mslot, item)
        raise BadInput(f"no retriever {item.kind!r} in a collection")

    def token_index_for(self, encoder):
        for slot in self.multi.values():
            if slot.settings.model == encoder.model_name and slot.encoder.document_length == encoder.document_length:
                return _LiveTokens(self, slot)
        return None

    def bm25_retriever(self, k1: float, b: float, threads):
        from rankstack.retrieval.bm25 import BM25Retriever

        with self._bm25_lock:
            index, cache = self._bm25, self._bm25_retrievers
            if index is None:
                return None
            key = (k1, b, threads)
            if key not in cache:
                cache[key] = BM25Retriever(index, k1=k1, b=b, threads=threads)
            return cache[key]


class _LiveBM25(Retriever):
    kind = "bm25"

    def __init__(self, indexes: IndexSet, k1: float, b: float, threads):
        self.indexes, self.k1, self.b, self.threads = indexes, k1, b, threads
        self.name = f"bm25(k1={k1},b={b})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        with self.indexes.lock.read():  # a write swaps the searcher under the write lock, then closes the old one
            r = self.indexes.bm25_retriever(self.k1, self.b, self.threads)
            return r.retrieve(queries, k) if r is not None else [Ranking(query=q) for q in queries]


class _LiveDense(Retriever):
    kind = "dense"

    def __init__(self, indexes: IndexSet, slot: _Dense, settings: DenseSettings):
        self.indexes, self.slot, self.settings = indexes, slot, settings
        self.encoder = settings.encoder(indexes.models)
        self.name = f"dense({settings.model.split('/')[-1]},{settings.index})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        from rankstack.retrieval.dense import DenseRetriever

        validate_queries(queries, k)
        with self.indexes.lock.read():
            index = self.slot.index
            if not getattr(index, "trained", True):
                need = index.min_training_vectors()
                raise BadInput(f"the index {self.slot.spec} is not trained yet: it needs {need} documents and the "
                               f"collection has {len(self.indexes.log)}")
            if len(index) == 0:
                return [Ranking(query=q) for q in queries]
            return DenseRetriever(self.encoder, index, search_params=self.settings.search_params,
                                  device=self.settings.device).retrieve(queries, k)


class _LiveSparse(Retriever):
    kind = "splade"

    def __init__(self, indexes: IndexSet, slot: _Sparse, settings: SparseSettings):
        self.indexes, self.slot, self.settings = indexes, slot, settings
        self.name = f"splade({settings.model.split('/')[-1]},{settings.query} queries,{settings.engine})"

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        with self.indexes.lock.read():
            slot = self.slot
            if len(slot.index) == 0:
                return [Ranking(query=q) for q in queries]
            key = (self.settings.query, self.settings.engine, self.settings.threads, self.settings.seismic)
            with self.indexes.sparse_lock:
                r = slot.retrievers.get(key)
                if r is None or r.index is not slot.index:
                    r = slot.retrievers[key] = self.settings.retriever(
                        self.indexes.models, slot.index, lucene_path=slot.path.with_name(slot.path.name + "-lucene"))
            return r.retrieve(queries, k)


class _LiveMulti(Retriever):
    """Late interaction over a collection's current token index; MUVERA's FDE index and PLAID's compressed form are
    derived from it at the first search of their kind and then follow each write (PLAID is derived afresh once the
    corpus has doubled since its centroids were trained)."""

    def __init__(self, indexes: IndexSet, slot: _Multi, item: Item):
        from rankstack.retrieval.multivector import MultiVectorSettings

        self.indexes, self.slot = indexes, slot
        self.settings = MultiVectorSettings.of(item)
        self.kind = item.kind
        self.encoder = self.settings.encoder(indexes.models)
        self.name = f"{item.kind}({self.settings.model.split('/')[-1]})"

    def _derived(self, index):
        key = self.settings.derived_key
        with self.indexes.sparse_lock:
            if key not in self.slot.derived:
                self.slot.derived[key] = (self.settings, self.settings.derive(index))
            return self.slot.derived[key][1]

    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        validate_queries(queries, k)
        with self.indexes.lock.read():
            index = self.slot.index
            if len(index) == 0:
                return [Ranking(query=q) for q in queries]
            s = self.settings
            return s.retriever(self.encoder, index, self._derived(index) if s.derived_key else None).retrieve(
                queries, k)


class _LiveTokens:
    """The current token index of a collection, for late-interaction rerankers (reads go to the index of the
    moment)."""

    def __init__(self, indexes: IndexSet, slot: _Multi):
        self.indexes, self.slot = indexes, slot

    @property
    def current(self):
        return self.slot.index

    def __getattr__(self, name):
        return getattr(self.slot.index, name)

    def __contains__(self, docid: str) -> bool:
        return docid in self.slot.index

    def __len__(self) -> int:
        return len(self.slot.index)
