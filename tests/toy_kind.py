"""A retrieval kind defined outside the library: TF-IDF over scipy, in about a hundred lines.

It is the proof that a kind is written once: ``kinds.register(TFIDF)`` (or ``RANKSTACK_KINDS=tests.toy_kind:TFIDF``
in another process) and it runs through ``rankstack eval``, ``rankstack index`` + ``search --index``, a service
collection (ingest, upsert, delete, kill -9 and recovery) and a sharded collection, with no library file changed.
``docs/adding-a-kind.md`` walks through it.

Scores: ``sum over query terms t of (1 + ln tf(t, d)) * idf(t)``, ``idf(t) = ln((1 + N) / (1 + df(t))) + 1``, over
terms hashed into 2**18 columns (no vocabulary to grow as documents arrive).
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rankstack._atomic import atomic_dir, write_json
from rankstack.errors import IndexCorrupt, IndexNotFound
from rankstack.records import TopK
from rankstack.retrieval.base import Retriever, rankings_from_topk, validate_queries
from rankstack.retrieval.kinds import RetrievalKind, Settings
from rankstack.spec import Option

DIM = 1 << 18
_WORD = re.compile(r"[a-z0-9]+")


def terms(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Hashed term ids and their counts in ``text``."""
    ids = [zlib.crc32(w.encode()) % DIM for w in _WORD.findall(text.lower())]
    uniq, counts = np.unique(np.asarray(ids, np.int64), return_counts=True)
    return uniq, counts.astype(np.float32)


class TfIdfIndex:
    """Term counts per document (rows in insertion order, removals compacted), and the document frequencies."""

    KIND = "toy-tfidf"

    def __init__(self, meta: dict | None = None):
        self.meta = dict(meta or {})
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.collection: tuple[np.ndarray, int] | None = None  # a shard's collection-wide (df, N)
        self._matrix = None

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, docid: str) -> bool:
        return docid in self.rows

    @property
    def docids(self) -> list[str]:
        return list(self.rows)

    def add(self, docids, payloads) -> None:
        for d, p in zip(docids, payloads):
            self.rows.pop(d, None)
            self.rows[d] = p
        self._matrix = None

    def remove(self, docids) -> None:
        for d in docids:
            self.rows.pop(d, None)
        self._matrix = None

    def matrix(self) -> sp.csr_matrix:
        if self._matrix is None:
            parts = list(self.rows.values())
            indptr = np.concatenate([[0], np.cumsum([len(i) for i, _ in parts])]).astype(np.int64)
            ind = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int64)
            val = np.concatenate([c for _, c in parts]) if parts else np.zeros(0, np.float32)
            self._matrix = sp.csr_matrix((1 + np.log(val), ind, indptr), shape=(len(parts), DIM))
        return self._matrix

    def document_frequencies(self) -> np.ndarray:
        m = self.matrix()
        return np.bincount(m.indices, minlength=DIM).astype(np.int64)

    def search(self, queries: sp.csr_matrix, k: int) -> TopK:
        df, n = self.collection or (self.document_frequencies(), len(self))
        idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
        scores = (queries.multiply(idf[None, :]).tocsr() @ self.matrix().T).toarray().astype(np.float32)
        kk = min(k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]  # ties to the earlier row
        top = np.take_along_axis(scores, order, 1)
        return TopK(scores=np.where(top > 0, top, -np.inf), ids=np.where(top > 0, order, -1))

    def save(self, path) -> None:
        with atomic_dir(path) as tmp:
            docids = list(self.rows)
            np.savez(tmp / "terms.npz", lengths=np.array([len(i) for i, _ in self.rows.values()], np.int64),
                     ids=np.concatenate([i for i, _ in self.rows.values()]) if docids else np.zeros(0, np.int64),
                     counts=np.concatenate([c for _, c in self.rows.values()]) if docids else np.zeros(0, np.float32))
            (tmp / "docids.json").write_text(json.dumps(docids))
            write_json(tmp / "params.json", {"kind": self.KIND, "format_version": 1, "meta": self.meta})

    @classmethod
    def load(cls, path) -> TfIdfIndex:
        path = Path(path)
        if not (path / "params.json").exists():
            raise IndexNotFound(f"no TF-IDF index at {path}")
        try:
            out = cls(json.loads((path / "params.json").read_text())["meta"])
            docids = json.loads((path / "docids.json").read_text())
            with np.load(path / "terms.npz") as z:
                cuts = np.cumsum(z["lengths"])[:-1]
                out.add(docids, zip(np.split(z["ids"], cuts), np.split(z["counts"], cuts)))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorrupt(f"{path}: unreadable TF-IDF index ({exc})") from None
        return out


class TfIdfRetriever(Retriever):
    kind = "tfidf"

    def __init__(self, index, documents=None):
        self.index, self.documents, self.name = index, documents, "tfidf"

    def retrieve(self, queries, k=1000):
        validate_queries(queries, k)
        rows = [terms(q.text) for q in queries]
        indptr = np.concatenate([[0], np.cumsum([len(i) for i, _ in rows])])
        q = sp.csr_matrix((np.concatenate([c for _, c in rows]), np.concatenate([i for i, _ in rows]), indptr),
                          shape=(len(queries), DIM))
        return rankings_from_topk(queries, self.index.search(q, k), self.index.docids)


class TfIdfKind(RetrievalKind):
    name = "tfidf"
    summary = "TF-IDF over hashed terms (a toy kind defined in tests/toy_kind.py)"
    saved_kinds = (TfIdfIndex.KIND,)
    options = {"threads": Option(type=int, low=1, doc="unused: shows an option the parser checks")}

    def settings(self, item, defaults):
        return Settings(kind="tfidf", options=item.options)

    def encode(self, settings, encoder, documents):
        return [terms(d.contents) for d in documents]

    def empty(self, settings, meta, *, encoder=None, batch=None):
        return TfIdfIndex(meta)

    def apply(self, index, removed, docids, batch, state):
        index.remove(removed)
        index.add(docids, batch or [])

    def load(self, settings, path, models):
        return TfIdfIndex.load(path)

    def open_folder(self, path):
        return TfIdfIndex.load(path)

    def pack(self, payloads):
        return {"lengths": np.array([len(i) for i, _ in payloads], np.int64),
                "ids": np.concatenate([i for i, _ in payloads]), "counts": np.concatenate([c for _, c in payloads])}

    def unpack(self, arrays):
        cuts = np.cumsum(arrays["lengths"])[:-1]
        return list(zip(np.split(arrays["ids"], cuts), np.split(arrays["counts"], cuts)))

    def retriever(self, settings, index, *, models, documents=None, derived=None, path=None):
        return TfIdfRetriever(index, documents)

    def stats(self, index):
        return {"df": index.document_frequencies(), "n": len(index)}

    def use_stats(self, index, stats):
        index.collection = (np.asarray(stats["df"]), int(stats["n"]))


TFIDF = TfIdfKind()
