"""A collection: a named, persistent set of documents with its indexes and its search pipeline.

Durability: every change is appended to ``log.jsonl`` (one line per request, fsync'd) *before* it is
acknowledged; the log is the source of truth. Indexes (``bm25/``, ``dense/``) record the last log sequence they
include and are rewritten atomically, so after a crash at any point, opening the collection replays what the
indexes miss. A torn last line (a write that never finished, hence was never acknowledged) is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rankstack.errors import BadInput, IndexCorrupt, IndexNotFound, UnknownDocid
from rankstack.records import Candidate, Document, Query, Ranking, Run
from rankstack.service.config import CollectionConfig, PipelineConfig

logger = logging.getLogger(__name__)

__all__ = ["Collection", "SearchStats"]


@dataclass
class SearchStats:
    stage_seconds: dict[str, float]


class Collection:
    def __init__(self, root: str | os.PathLike, config: CollectionConfig, *, encoder=None, rerankers=None):
        """``rerankers``: a function from a reranker name to a reranker (the service's registry)."""
        self.root = Path(root)
        self.config = config
        self.name = config.name
        self._encoder = encoder
        self._rerankers = rerankers
        self._lock = threading.RLock()
        self.docs: dict[str, Document] = {}
        self.seq = 0
        self._touched: dict[str, int] = {}  # docid -> last log seq that upserted or deleted it
        self._bm25 = None
        self._dense_index = None
        self._dense = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._log_path = self.root / "log.jsonl"
        self._replay_log()
        self._open_indexes()

    # ---- log -----------------------------------------------------------------------------------------------

    def _replay_log(self) -> None:
        if not self._log_path.exists():
            return
        good_bytes = 0
        with open(self._log_path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn write: never acknowledged
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self._apply(rec)
                good_bytes += len(raw)
        if good_bytes != self._log_path.stat().st_size:
            logger.warning("collection %s: dropping a torn, unacknowledged record at the end of the log", self.name)
            with open(self._log_path, "r+b") as fh:
                fh.truncate(good_bytes)
                os.fsync(fh.fileno())

    def _apply(self, rec: dict) -> None:
        self.seq = rec["seq"]
        for docid in (d["docid"] for d in rec.get("docs", ())) if rec["op"] == "upsert" else rec["docids"]:
            self._touched[docid] = rec["seq"]
        if rec["op"] == "upsert":
            for d in rec["docs"]:
                self.docs[d["docid"]] = Document(docid=d["docid"], text=d["text"], title=d.get("title", ""),
                                                 metadata=d.get("metadata") or {})
        elif rec["op"] == "delete":
            for docid in rec["docids"]:
                self.docs.pop(docid, None)

    def _append(self, rec: dict) -> None:
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self._log_path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    # ---- indexes -------------------------------------------------------------------------------------------

    @property
    def encoder(self):
        if self._encoder is None and "dense" in self.config.indexes:
            from rankstack.retrieval.encoders import make_encoder

            self._encoder = make_encoder(self.config.encoder)
        return self._encoder

    def _open_indexes(self) -> None:
        if "dense" in self.config.indexes:
            self._open_dense()
        if "bm25" in self.config.indexes:
            self._open_bm25()

    def _open_dense(self) -> None:
        from rankstack.index.faiss_flat import DenseFlatIndex

        path = self.root / "dense"
        try:
            index = DenseFlatIndex.load(path)
            if index.meta.get("model") != self.encoder.model_name:
                raise IndexCorrupt(f"dense index built with {index.meta.get('model')!r}, config says "
                                   f"{self.encoder.model_name!r}")
        except (IndexNotFound, IndexCorrupt) as exc:
            if path.exists():
                logger.warning("collection %s: rebuilding the dense index (%s)", self.name, exc)
            index = DenseFlatIndex(self.encoder.dim, meta={"model": self.encoder.model_name, "applied_seq": 0})
        if index.meta.get("applied_seq", 0) != self.seq or len(index) != len(self.docs):
            # bring the index to the log's state: drop what is gone or changed since, encode what is missing
            applied = index.meta.get("applied_seq", 0)
            self._sync_dense(index, [d for d, s in self._touched.items() if s > applied])
            index.save(path)
        self._dense_index = index
        self._make_dense_retriever()

    def _sync_dense(self, index, changed: Iterable[str] = ()) -> None:
        changed = set(changed)
        stale = [d for d in index.docids if d not in self.docs or d in changed]
        if stale:
            index.remove(stale)
        todo = [self.docs[d] for d in self.docs if d not in index]
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            index.add([d.docid for d in chunk], self.encoder.encode_documents(chunk))
        index.meta["applied_seq"] = self.seq

    def _make_dense_retriever(self) -> None:
        from rankstack.retrieval.dense import DenseRetriever

        self._dense = DenseRetriever(self.encoder, self._dense_index, documents=self.docs) if len(self._dense_index) else None

    def _open_bm25(self) -> None:
        from rankstack.index.lucene import LuceneIndex

        path = self.root / "bm25"
        try:
            index = LuceneIndex(path)
            if index.params.get("applied_seq") != self.seq:
                raise IndexCorrupt("behind the log")
        except (IndexNotFound, IndexCorrupt):
            index = self._build_bm25()
        self._set_bm25(index)

    def _build_bm25(self):
        from rankstack.index.lucene import LuceneIndex

        if not self.docs:
            return None
        return LuceneIndex.build(self.docs.values(), self.root / "bm25", meta={"applied_seq": self.seq},
                                 show_progress=False)

    def _set_bm25(self, index) -> None:
        from rankstack.retrieval.bm25 import BM25Retriever

        p = self.config.pipeline
        self._bm25 = BM25Retriever(index, k1=p.k1, b=p.b, with_documents=True) if index is not None else None

    # ---- writes --------------------------------------------------------------------------------------------

    def upsert(self, documents: Sequence[Document]) -> int:
        """Add or replace documents; returns the log sequence number once durable and searchable."""
        if not documents:
            raise BadInput("no documents given")
        ids = [d.docid for d in documents]
        if len(set(ids)) != len(ids):
            raise BadInput("duplicate docids in one request")
        with self._lock:
            changed = [d.docid for d in documents if self.docs.get(d.docid) != d]  # re-ingest is cheap
            rec = {"seq": self.seq + 1, "op": "upsert",
                   "docs": [{"docid": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)}
                            for d in documents]}
            self._append(rec)
            self._apply(rec)
            self._refresh(changed=changed)
            return self.seq

    def delete(self, docid: str) -> int:
        with self._lock:
            if docid not in self.docs:
                raise UnknownDocid(f"unknown docid {docid!r} in collection {self.name!r}")
            rec = {"seq": self.seq + 1, "op": "delete", "docids": [docid]}
            self._append(rec)
            self._apply(rec)
            self._refresh(changed=[docid])
            return self.seq

    def _refresh(self, changed: Sequence[str]) -> None:
        if not changed:  # identical re-ingest: indexes already agree (reopening catches up their applied_seq)
            return
        if self._dense_index is not None:
            self._sync_dense(self._dense_index, changed)
            self._dense_index.save(self.root / "dense")
            self._make_dense_retriever()
        if "bm25" in self.config.indexes:
            self._set_bm25(self._build_bm25())

    def get(self, docid: str) -> Document:
        doc = self.docs.get(docid)
        if doc is None:
            raise UnknownDocid(f"unknown docid {docid!r} in collection {self.name!r}")
        return doc

    # ---- search --------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[Query], k: int, *, pipeline: PipelineConfig | None = None,
               filters: Mapping[str, object] | None = None) -> tuple[list[Ranking], dict[str, float]]:
        """Run the collection's pipeline (or ``pipeline``); returns rankings and seconds per stage."""
        from rankstack.retrieval.base import validate_queries
        from rankstack.retrieval.fusion import fuse_rankings, interpolate, rrf

        p = pipeline or self.config.pipeline
        validate_queries(queries, k)
        stages: dict[str, float] = {}
        depth = max(p.depth, k) * (10 if filters else 1)
        with self._lock:
            retrievers = {"bm25": self._bm25, "dense": self._dense}
        per: list[list[Ranking]] = []
        for name in p.retrievers:
            if name not in self.config.indexes:
                raise BadInput(f"collection {self.name!r} has no {name!r} index; it has {self.config.indexes}")
            r = retrievers[name]
            t0 = time.perf_counter()
            per.append(r.retrieve(queries, depth) if r is not None else [Ranking(query=q) for q in queries])
            stages[f"retrieve_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if len(per) == 1:
            rankings = per[0]
        else:
            runs = [Run.from_rankings(x) for x in per]
            fused = (rrf(runs, k=p.rrf_k, depth=depth) if p.fusion == "rrf"
                     else interpolate(runs[0], runs[1], alpha=p.alpha, depth=depth))
            rankings = fuse_rankings(queries, fused, per, depth)
            stages["fuse"] = time.perf_counter() - t0
        rankings = [self._attach(r) for r in rankings]
        if filters:
            rankings = [Ranking(query=r.query, candidates=tuple(c for c in r.candidates
                                                                if _matches(c.document, filters)))
                        for r in rankings]
        if p.reranker != "none":
            if self._rerankers is None:
                raise BadInput(f"collection {self.name!r} was opened without rerankers; use reranker 'none'")
            reranker = self._rerankers(p.reranker)
            t0 = time.perf_counter()
            todo = [i for i, r in enumerate(rankings) if r.candidates]  # nothing to rerank for an empty list
            done = reranker.rerank_batch([rankings[i].top(p.rerank_depth) for i in todo]) if todo else []
            rankings = list(rankings)
            for i, r in zip(todo, done):
                rankings[i] = r
            stages["rerank"] = time.perf_counter() - t0
        return [r.top(k) for r in rankings], stages

    def _attach(self, r: Ranking) -> Ranking:
        return Ranking(query=r.query, candidates=tuple(
            c if c.document is not None else Candidate(docid=c.docid, score=c.score, document=self.docs.get(c.docid))
            for c in r.candidates if c.docid in self.docs))


def _matches(doc: Document | None, filters: Mapping[str, object]) -> bool:
    if doc is None:
        return False
    for key, want in filters.items():
        have = doc.metadata.get(key)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True
